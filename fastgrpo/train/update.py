"""The GRPO update of one rollout: per trained step and micro-batch, policy (and reference) forward, the fused
log-prob/KL + clipped loss, backward. Gradients accumulate into the LoRA parameters; the caller clips and steps
the optimiser.

Each (micro-batch, step) loss is weighted by ``(micro-batch size / B) / (trained steps)`` so that the accumulated
gradient is exactly that of SPEC's ``J = mean_t L_policy(t) + beta mean_t KL(t)`` over the whole batch, whatever
the micro-batch size. Statistics stay on the device (no host synchronisation): weighted means, and min/max for the
ratio extremes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from fastgrpo.core.containers import Rollout
from fastgrpo.core.objective import GRPOConfig, step_loss
from fastgrpo.kernels import GRPOStats
from fastgrpo.kernels.grpo.naive import STAT_NAMES
from fastgrpo.models.base import Condition, EditModel

_MIN, _MAX = STAT_NAMES.index("ratio_min"), STAT_NAMES.index("ratio_max")


def _micro_batches(batch: int, size: int | None, device: torch.device) -> list[Tensor]:
    """Row indices of each micro-batch, made on ``device`` (no host-to-device copy)."""
    size = batch if size is None else size
    if size < 1:
        raise ValueError(f"micro_batch must be >= 1 (or None for the whole batch), got {size}")
    return [torch.arange(start, min(start + size, batch), device=device) for start in range(0, batch, size)]


def grpo_backward(
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
    annotate: Callable[[str], AbstractContextManager[None]] | None = None,
) -> GRPOStats:
    """Accumulate the gradient of ``J`` over the trained ``steps`` of ``rollout``; returns on-device statistics.

    Args:
        cond: the ``B`` conditions of the rollout (one per sample, groups repeated).
        advantages: ``[B]`` float32 (:func:`fastgrpo.core.group_advantages`).
        steps: indices of trained steps (each must be an SDE step of the rollout).
        micro_batch: samples per forward (``None``: the whole batch at once).
        annotate: ``annotate(name)`` gives a context around each forward and backward (NVTX ranges).
    """
    batch = rollout.batch_size
    if not steps:
        raise ValueError("steps is empty: pass at least one trained step index")
    if cond.batch_size != batch or advantages.shape != (batch,):
        raise ValueError(f"cond has {cond.batch_size} rows and advantages {tuple(advantages.shape)} for B={batch}")
    trained = rollout.trained.tolist()  # [K] bools: read once, outside the inner loop
    if not all(0 <= k < len(trained) and trained[k] for k in steps):
        raise ValueError(f"steps {list(steps)} must be SDE (trained) steps of the rollout: {trained}")
    device = rollout.device
    totals = torch.zeros(len(STAT_NAMES), dtype=torch.float32, device=device)
    low = torch.full((), float("inf"), device=device)
    high = torch.full((), float("-inf"), device=device)
    chunks = _micro_batches(batch, micro_batch, device)
    conds = [cond.index_select(rows) for rows in chunks]
    times = rollout.times
    mark = annotate if annotate is not None else (lambda _name: contextlib.nullcontext())
    for k in steps:
        x, x_next = rollout.step(k)
        for rows, sub in zip(chunks, conds, strict=True):
            weight = rows.numel() / batch / len(steps)
            t = times[k].expand(rows.numel())
            with mark(f"train forward step {k}"):
                v = model.velocity(x[rows], t, sub)
                v_ref = None
                if grpo.needs_reference:
                    with torch.no_grad(), model.reference():
                        v_ref = model.velocity(x[rows], t, sub)
                loss, stats, _ = step_loss(
                    x_next[rows], x[rows], v, v_ref, times[k], times[k + 1], rollout.log_probs[rows, k],
                    advantages[rows], grpo=grpo, noise_level=noise_level, t_cap=t_cap, reduction=reduction,
                    weight=weight, backend=backend,
                )  # fmt: skip
            with mark(f"train backward step {k}"):
                loss.backward()
            totals += stats.values * weight
            low = torch.minimum(low, stats.values[_MIN])
            high = torch.maximum(high, stats.values[_MAX])
    totals[_MIN], totals[_MAX] = low, high
    return GRPOStats(totals)
