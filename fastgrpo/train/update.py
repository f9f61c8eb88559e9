"""The GRPO update of one rollout: per trained step and micro-batch, policy (and reference) forward, the fused
log-prob/KL + clipped loss, backward. Gradients accumulate into the LoRA parameters; the caller clips and steps
the optimiser (:class:`~fastgrpo.train.policy.Policy`).

Each (micro-batch, step) loss is weighted by ``(micro-batch size / B) / (trained steps)`` so that the accumulated
gradient is exactly that of SPEC's ``J = mean_t L_policy(t) + beta mean_t KL(t)`` over the whole batch, whatever
the micro-batch size. Statistics stay on the device (no host synchronisation): weighted means, and min/max for the
ratio extremes.

The loop over steps and micro-batches exists once, in :func:`grpo_backward`; what one (step, micro-batch) does is
:func:`micro_step`, which a CUDA-graph runner (:class:`~fastgrpo.train.graphs.UpdateGraphRunner`) replaces by a
replay of its capture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from fastgrpo.core.containers import Rollout
from fastgrpo.core.objective import GRPOConfig, step_loss
from fastgrpo.core.sde import StepSpec
from fastgrpo.kernels import GRPOStats
from fastgrpo.models.base import Condition, EditModel

__all__ = ["MicroBatch", "MicroStep", "grpo_backward", "micro_step"]

Annotate = Callable[[str], AbstractContextManager[None]]
_MIN, _MAX = GRPOStats.NAMES.index("ratio_min"), GRPOStats.NAMES.index("ratio_max")


@dataclass(frozen=True, eq=False)
class MicroBatch:
    """One (trained step, micro-batch) of the update.

    Attributes:
        step: the rollout step ``k`` (for NVTX range names).
        x, x_next: ``[b, N, C]`` the stored transition of step ``k`` (data, no gradient).
        t, t_next: 0-d float32 times of the step.
        old_logp: ``[b]`` float32 log-probs at sampling time; adv: ``[b]`` float32 advantages.
        cond: the ``b`` conditions.
        weight: the loss weight ``(b / B) / (trained steps)`` (a 0-d float32 tensor in a CUDA graph's static
            inputs, so that replays can change it).
        blocks: the number of trained steps batched in these rows (``optim.step_batching``): the rows are
            ``blocks`` consecutive equal blocks, one per step (``step`` is the first), ``t``/``t_next`` one time per
            row, and ``weight`` is ``b / B``. 1: one step, the default.
    """

    step: int
    x: Tensor
    x_next: Tensor
    t: Tensor
    t_next: Tensor
    old_logp: Tensor
    adv: Tensor
    cond: Condition
    weight: float | Tensor
    blocks: int = 1


#: what runs one micro-step: ``(model, batch, grpo, spec, annotate) -> stats [len(GRPOStats.NAMES)]`` with the
#: gradient accumulated into the parameters' ``.grad``
MicroStep = Callable[[EditModel, MicroBatch, GRPOConfig, StepSpec, "Annotate | None"], Tensor]


def micro_step(
    model: EditModel, batch: MicroBatch, grpo: GRPOConfig, spec: StepSpec, annotate: Annotate | None = None
) -> Tensor:
    """Loss and backward of one micro-step; returns its unweighted statistics ``[len(GRPOStats.NAMES)]`` float32
    on the device. The weighted loss's gradient accumulates into the LoRA parameters' ``.grad``."""
    mark = annotate if annotate is not None else (lambda _name: contextlib.nullcontext())
    t = batch.t.expand(batch.x.shape[0])
    name = f"step {batch.step}" if batch.blocks == 1 else f"steps {batch.step}+{batch.blocks - 1}"
    with torch.enable_grad():
        with mark(f"train forward {name}"):
            v = model.velocity(batch.x, t, batch.cond)
            v_ref = None
            if grpo.needs_reference:
                with torch.no_grad(), model.reference():
                    v_ref = model.velocity(batch.x, t, batch.cond)
            loss, stats, _ = step_loss(
                batch.x_next, batch.x, v, v_ref, batch.t, batch.t_next, batch.old_logp, batch.adv, grpo=grpo,
                spec=spec, weight=batch.weight, blocks=batch.blocks,
            )  # fmt: skip
        with mark(f"train backward {name}"):
            loss.backward()
    return stats.values


def _micro_batch_rows(rollout: Rollout, cond: Condition, micro_batch: int | None) -> list[Tensor]:
    """Checks the update's inputs; returns the row indices of each micro-batch, made on the rollout's device."""
    batch = rollout.batch_size
    if rollout.advantages is None:
        raise ValueError("the rollout has no advantages: compute them first (fastgrpo.core.advantages)")
    if not rollout.trained:
        raise ValueError("the rollout trains no step (rollout.trained is empty): train at least one SDE step")
    if cond.batch_size != batch:
        raise ValueError(f"cond has {cond.batch_size} rows for a rollout of B={batch}; pass one per sample")
    rollout.validate()  # trained steps must be SDE steps (host tuples: no device read)
    size = batch if micro_batch is None else micro_batch
    if size < 1:
        raise ValueError(f"micro_batch must be >= 1 (or None for the whole batch), got {size}")
    return [torch.arange(start, min(start + size, batch), device=rollout.device) for start in range(0, batch, size)]


def grpo_backward(
    model: EditModel,
    rollout: Rollout,
    cond: Condition,
    *,
    grpo: GRPOConfig,
    spec: StepSpec,
    micro_batch: int | None = None,
    annotate: Annotate | None = None,
    step_fn: MicroStep = micro_step,
    batch_steps: bool = False,
) -> GRPOStats:
    """Accumulate the gradient of ``J`` over the trained steps of ``rollout``; returns on-device statistics.

    Args:
        rollout: the rollout with its advantages; ``rollout.trained`` lists the steps to train, in order.
        cond: the ``B`` conditions of the rollout (one per sample, groups repeated).
        spec: the step math of the rollout's resolution.
        micro_batch: samples per forward (``None``: the whole batch at once).
        annotate: ``annotate(name)`` gives a context around each micro-step and its forward and backward (NVTX).
        step_fn: runs one micro-step (default :func:`micro_step`; a CUDA-graph runner replays it instead).
        batch_steps: run all trained steps of a micro-batch as one forward of ``steps x samples`` rows
            (``optim.step_batching``; the same gradient, fewer and larger kernels, activations of every step at
            once); False: one step at a time.

    Raises ``ValueError`` for a rollout without advantages or trained steps, a trained step that is not an SDE
    step, a ``cond`` of another batch size, or ``micro_batch < 1``.
    """
    chunks = _micro_batch_rows(rollout, cond, micro_batch)
    steps = rollout.trained
    assert rollout.advantages is not None and steps is not None
    conds = [cond.index_select(rows) for rows in chunks]
    mark = annotate if annotate is not None else (lambda _name: contextlib.nullcontext())
    totals = torch.zeros(len(GRPOStats.NAMES), dtype=torch.float32, device=rollout.device)
    low = torch.full((), float("inf"), device=rollout.device)
    high = torch.full((), float("-inf"), device=rollout.device)
    for micro in _micro_batches(rollout, chunks, conds, steps, batch_steps):
        with mark(f"train step {micro.step}" if micro.blocks == 1 else f"train steps {micro.step}+{micro.blocks - 1}"):
            values = step_fn(model, micro, grpo, spec, annotate)
        totals += values * micro.weight
        low = torch.minimum(low, values[_MIN])
        high = torch.maximum(high, values[_MAX])
    totals[_MIN], totals[_MAX] = low, high
    return GRPOStats(totals)


def _micro_batches(
    rollout: Rollout, chunks: list[Tensor], conds: list[Condition], steps: tuple[int, ...], batch_steps: bool
) -> Iterator[MicroBatch]:
    """The micro-steps of the update: per trained step and micro-batch, or (``batch_steps``) per micro-batch with
    every trained step's rows stacked, step after step."""
    batch, times = rollout.batch_size, rollout.times
    assert rollout.advantages is not None
    if not batch_steps or len(steps) == 1:
        for k in steps:
            x, x_next = rollout.step(k)
            for rows, sub in zip(chunks, conds, strict=True):
                yield MicroBatch(k, x[rows], x_next[rows], times[k], times[k + 1], rollout.log_probs[rows, k],
                                 rollout.advantages[rows], sub, rows.numel() / batch / len(steps))  # fmt: skip
        return
    index = torch.tensor(steps, device=rollout.device)
    for rows, sub in zip(chunks, conds, strict=True):
        b, n = rows.numel(), len(steps)
        picked = rollout.latents[rows]  # [b, K + 1, ...]
        x = picked[:, index].transpose(0, 1).reshape(n * b, *picked.shape[2:])
        x_next = picked[:, index + 1].transpose(0, 1).reshape(n * b, *picked.shape[2:])
        t = times[index].repeat_interleave(b)
        t_next = times[index + 1].repeat_interleave(b)
        old_logp = rollout.log_probs[rows][:, index].transpose(0, 1).reshape(-1)
        tiled = sub.index_select(torch.arange(b, device=rollout.device).repeat(n))
        yield MicroBatch(steps[0], x, x_next, t, t_next, old_logp, rollout.advantages[rows].repeat(n), tiled,
                         b / batch, blocks=n)  # fmt: skip
