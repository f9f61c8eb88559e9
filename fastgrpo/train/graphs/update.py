"""The training micro-step of :func:`~fastgrpo.train.update.grpo_backward` replayed from CUDA graphs
(:mod:`fastgrpo.train.graphs`).

One graph per micro-batch shape holds: the policy forward, the reference forward under ``model.reference()`` when
``beta > 0`` (nothing of it when ``beta = 0``), the fused log-prob/KL, the clipped loss and its backward. Static
inputs: the step's transition ``(x, x_next)``, ``old_logp``, advantages, the two step times, the loss weight and
the condition rows. Static output: the step's statistics vector. The backward accumulates into the LoRA
parameters' ``.grad`` in place: those tensors are allocated once, before the first capture, shared by every graph
of the runner, and re-bound to the parameters before each replay (a ``zero_grad(set_to_none=True)`` in between
is honoured by zeroing them). Clipping, the all-reduce and the optimiser step stay outside the graphs; statistics
are accumulated on the device exactly as :func:`~fastgrpo.train.update.grpo_backward` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastgrpo.core.containers import Rollout
from fastgrpo.core.objective import GRPOConfig, step_loss
from fastgrpo.kernels import GRPOStats
from fastgrpo.kernels.grpo.naive import STAT_NAMES
from fastgrpo.models.base import Condition, EditModel
from fastgrpo.train.graphs.capture import (
    DEFAULT_MAX_GRAPHS,
    Annotate,
    CapturedGraph,
    GraphRunner,
    cond_signature,
    copy_cond,
    static_cond,
)
from fastgrpo.train.update import grpo_backward

__all__ = ["UpdateGraphRunner"]

_MIN, _MAX = STAT_NAMES.index("ratio_min"), STAT_NAMES.index("ratio_max")


@dataclass(frozen=True)
class _StepSettings:
    """The Python scalars a micro-step bakes in (part of its shape key)."""

    grpo: GRPOConfig
    noise_level: float
    t_cap: float
    reduction: str
    backend: str


def _micro_step(
    model: EditModel,
    pair: Tensor,
    t: Tensor,
    t_next: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    cond: Condition,
    weight: float | Tensor,
    s: _StepSettings,
) -> Tensor:
    """Loss and backward of one (trained step, micro-batch), as in :func:`~fastgrpo.train.update.grpo_backward`.

    ``pair [b, 2, N, C]`` holds ``(x, x_next)``; ``t, t_next`` are 0-d float32; ``old_logp, adv [b]`` float32;
    ``weight`` multiplies the loss (a float, or a 0-d float32 tensor in a graph). Returns the unweighted
    statistics ``[len(STAT_NAMES)]`` float32; the gradient accumulates into the parameters' ``.grad``.
    """
    x, x_next = pair[:, 0], pair[:, 1]
    t_rows = t.expand(x.shape[0])
    with torch.enable_grad():
        v = model.velocity(x, t_rows, cond)
        v_ref = None
        if s.grpo.needs_reference:
            with torch.no_grad(), model.reference():
                v_ref = model.velocity(x, t_rows, cond)
        loss, stats, _ = step_loss(
            x_next, x, v, v_ref, t, t_next, old_logp, adv, grpo=s.grpo, noise_level=s.noise_level, t_cap=s.t_cap,
            reduction=s.reduction, weight=1.0, backend=s.backend,
        )  # fmt: skip
        (loss * weight).backward()
    return stats.values


@dataclass
class _StepGraph(CapturedGraph):
    """A captured micro-step: its static inputs and its static statistics output."""

    graph: Any  # torch.cuda.CUDAGraph (None until captured)
    pair: Tensor  # [b, 2, N, C], the rollout's latent dtype
    t: Tensor  # 0-d float32
    t_next: Tensor  # 0-d float32
    old_logp: Tensor  # [b] float32
    adv: Tensor  # [b] float32
    weight: Tensor  # 0-d float32
    cond: Condition
    stats: Tensor | None  # [len(STAT_NAMES)] float32, overwritten by each replay


class UpdateGraphRunner(GraphRunner):
    """:func:`~fastgrpo.train.update.grpo_backward` with each micro-step replayed from a CUDA graph (eager off CUDA).

    Args:
        model: the model every call uses (a different one raises ``ValueError``).
        params: the trainable (LoRA) parameters whose ``.grad`` the graphs accumulate into; non-empty, all with
            ``requires_grad``, all on one device.
        max_graphs: graphs kept (least recently used released first), >= 1; an update needs one per distinct
            micro-batch size (usually one, two when the batch does not divide evenly).
        warmup: eager micro-steps on a side stream before a capture, >= 1 (their gradients are undone).
        capture_error_mode: ``torch.cuda.graph``'s mode: ``"thread_local"`` (default), ``"global"``, ``"relaxed"``.

    Calling it takes :func:`~fastgrpo.train.update.grpo_backward`'s arguments and returns the same on-device
    ``GRPOStats``; gradients accumulate into ``p.grad`` (which is ``None``-safe: it is bound to the runner's
    buffer, zeroed, before the first replay of a call).
    """

    what = "update micro-step"

    def __init__(
        self,
        model: EditModel,
        params: Sequence[torch.nn.Parameter],
        *,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
        warmup: int = 2,
        capture_error_mode: str = "thread_local",
    ) -> None:
        super().__init__(model, max_graphs=max_graphs, warmup=warmup, capture_error_mode=capture_error_mode)
        self.params = list(params)
        if not self.params:
            raise ValueError("params is empty: pass the trainable LoRA parameters (what model.add_lora returns)")
        if not all(isinstance(p, torch.Tensor) and p.requires_grad for p in self.params):
            raise ValueError("every parameter in params must be a tensor with requires_grad=True (the LoRA weights)")
        if len({p.device for p in self.params}) != 1:
            raise ValueError("params lie on several devices; CUDA graphs need them on the model's one device")
        self._grads: list[Tensor] | None = None

    def __call__(
        self,
        model: EditModel,
        rollout: Rollout,
        cond: Condition,
        advantages: Tensor,
        steps: Sequence[int],
        *,
        grpo: GRPOConfig,
        noise_level: float,
        t_cap: float,
        reduction: str = "mean",
        micro_batch: int | None = None,
        backend: str = "auto",
        annotate: Annotate | None = None,
    ) -> GRPOStats:
        self._check_model(model)
        reason = self.unavailable(rollout.device)
        if reason is not None:
            self.fall_back(reason)
            return grpo_backward(
                model, rollout, cond, advantages, steps, grpo=grpo, noise_level=noise_level, t_cap=t_cap,
                reduction=reduction, micro_batch=micro_batch, backend=backend, annotate=annotate,
            )  # fmt: skip
        spans = _check_update_args(rollout, cond, advantages, steps, micro_batch)
        settings = _StepSettings(grpo, float(noise_level), float(t_cap), reduction, backend)
        mark = annotate if annotate is not None else (lambda _name: contextlib.nullcontext())
        device, batch = rollout.device, rollout.batch_size
        totals = torch.zeros(len(STAT_NAMES), dtype=torch.float32, device=device)
        low = torch.full((), float("inf"), device=device)
        high = torch.full((), float("-inf"), device=device)
        graphed = True
        for k in steps:
            for start, stop in spans:
                weight = (stop - start) / batch / len(steps)
                with mark(f"train step {k}"):
                    values, replayed = self._step(rollout, cond, advantages, k, slice(start, stop), weight, settings)
                graphed = graphed and replayed
                totals += values * weight
                low = torch.minimum(low, values[_MIN])
                high = torch.maximum(high, values[_MAX])
        totals[_MIN], totals[_MAX] = low, high
        self.used = graphed
        return GRPOStats(totals)

    def _step(
        self, ro: Rollout, cond: Condition, adv: Tensor, k: int, rows: slice, weight: float, s: _StepSettings
    ) -> tuple[Tensor, bool]:
        """One micro-step: replayed when its graph exists or can be captured, else eager. Returns (stats, replayed)."""
        pair, t, t_next = ro.latents[rows, k : k + 2], ro.times[k], ro.times[k + 1]
        old_logp, adv_rows = ro.log_probs[rows, k], adv[rows]
        sub = Condition(
            {n: v[rows] for n, v in cond.tensors.items()}, cond.height, cond.width, (), dict(cond.seq_masks)
        )
        entry = None
        if self.disabled_reason is None:
            key = ("update", tuple(pair.shape), pair.dtype, cond_signature(sub), s, *self._key_common(ro.device))
            entry = self._get(key, lambda: self._build(pair, t, t_next, old_logp, adv_rows, sub, s))
        if entry is None:  # capture failed (now or before): the eager micro-step
            return _micro_step(self.model, pair, t, t_next, old_logp, adv_rows, sub, weight, s), False
        entry.pair.copy_(pair)
        entry.t.copy_(t)
        entry.t_next.copy_(t_next)
        entry.old_logp.copy_(old_logp)
        entry.adv.copy_(adv_rows)
        entry.weight.fill_(weight)  # a fill kernel with the value as argument: no host-to-device copy
        copy_cond(entry.cond, sub)
        self._bind_grads()
        self._replay_graph(entry.graph, ro.device)
        return entry.stats, True

    def _bind_grads(self) -> list[Tensor]:
        """Make each parameter's ``.grad`` the runner's buffer (allocated once), keeping the gradient's value."""
        if self._grads is None:
            self._grads = [torch.zeros_like(p) for p in self.params]
        for p, g in zip(self.params, self._grads, strict=True):
            if p.grad is g:
                continue
            if p.grad is None:
                g.zero_()
            else:
                g.copy_(p.grad)
            p.grad = g
        return self._grads

    def _build(
        self, pair: Tensor, t: Tensor, t_next: Tensor, old_logp: Tensor, adv: Tensor, cond: Condition,
        s: _StepSettings,
    ) -> _StepGraph:  # fmt: skip
        f32 = {"dtype": torch.float32, "device": pair.device}
        entry = _StepGraph(
            graph=None, pair=pair.clone(memory_format=torch.contiguous_format), t=t.to(**f32).clone(),
            t_next=t_next.to(**f32).clone(), old_logp=old_logp.clone(), adv=adv.to(**f32).clone(),
            weight=torch.ones((), **f32), cond=static_cond(cond), stats=None,
        )  # fmt: skip
        grads = self._bind_grads()
        before = [g.clone() for g in grads]  # the warm-up runs accumulate too: undone below

        def body() -> Tensor:
            e = entry
            return _micro_step(self.model, e.pair, e.t, e.t_next, e.old_logp, e.adv, e.cond, e.weight, s)

        try:
            entry.graph, entry.stats = self._capture(body, pair.device)
            replaced = [i for i, (p, g) in enumerate(zip(self.params, grads, strict=True)) if p.grad is not g]
        finally:
            for p, g, value in zip(self.params, grads, before, strict=True):
                g.copy_(value)
                p.grad = g
        if replaced:  # the graph would write gradients where the optimiser never looks
            entry.release()
            raise RuntimeError(f"the captured backward replaced .grad of parameters {replaced[:5]} instead of adding")
        return entry


def _check_update_args(
    ro: Rollout, cond: Condition, advantages: Tensor, steps: Sequence[int], micro_batch: int | None
) -> list[tuple[int, int]]:
    """The checks of :func:`~fastgrpo.train.update.grpo_backward` (same messages); returns the micro-batch spans."""
    batch = ro.batch_size
    if not steps:
        raise ValueError("steps is empty: pass at least one trained step index")
    if cond.batch_size != batch or advantages.shape != (batch,):
        raise ValueError(f"cond has {cond.batch_size} rows and advantages {tuple(advantages.shape)} for B={batch}")
    trained = ro.trained.tolist()  # [K] bools: read once, outside the loop (as the eager update does)
    if not all(0 <= k < len(trained) and trained[k] for k in steps):
        raise ValueError(f"steps {list(steps)} must be SDE (trained) steps of the rollout: {trained}")
    size = batch if micro_batch is None else micro_batch
    if size < 1:
        raise ValueError(f"micro_batch must be >= 1 (or None for the whole batch), got {size}")
    return [(start, min(start + size, batch)) for start in range(0, batch, size)]
