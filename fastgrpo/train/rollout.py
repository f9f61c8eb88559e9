"""Rollouts: SDE sampling of a batch of conditions, recording what the GRPO update needs.

One call runs all ``K`` steps of the schedule for the whole batch (every sample of every group at once) in batched
forwards, with no host synchronisation: ``v = model.velocity(x_t, t, cond)``, then the fused
:func:`~fastgrpo.kernels.sde_step` writes ``x_next`` and ``logp_old``. Steps inside the SDE window explore
(``noise_level > 0``) and are trainable; the others are deterministic Euler (ODE) steps. Noise comes from a
device-side generator state (:func:`~fastgrpo.kernels.noise_state`), advanced by one per SDE step, so the loop can be
captured in a CUDA graph and still draw fresh noise on every replay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from fastgrpo.core.containers import Rollout
from fastgrpo.core.schedule import StepSchedule
from fastgrpo.kernels import sde_step
from fastgrpo.models.base import Condition, EditModel


def sde_mask(num_steps: int, window: tuple[int, int] | None) -> Tensor:
    """``[K]`` bool: the steps in ``[start, end)`` (all steps for ``None``); ValueError for a window outside."""
    if window is None:
        return torch.ones(num_steps, dtype=torch.bool)
    start, end = window
    if not 0 <= start <= end <= num_steps:
        raise ValueError(f"SDE window {window} must satisfy 0 <= start <= end <= {num_steps} (the rollout's steps)")
    mask = torch.zeros(num_steps, dtype=torch.bool)
    mask[start:end] = True
    return mask


def rollout_steps(
    model: EditModel,
    cond: Condition,
    latents: Tensor,
    log_probs: Tensor,
    times: Tensor,
    levels: Sequence[float],
    t_cap: float,
    state: Tensor,
    reduction: str,
    backend: str,
    annotate: Callable[[str], AbstractContextManager[None]] | None = None,
) -> None:
    """The step loop of :func:`rollout` on given buffers: ``latents [B, K+1, N, C]`` float32 (row 0 holds the
    initial noise), ``log_probs [B, K]`` float32, ``times [K+1]`` float32 on the latents' device, ``levels`` the
    ``K`` noise levels (host floats), ``state`` int64 [2] (advanced in place). No allocation beyond the step
    outputs and no host-to-device copy, so a CUDA graph can capture it (:mod:`fastgrpo.train.graphs.rollout`).
    """
    batch = latents.shape[0]
    t, t_next = times[:-1], times[1:]
    for k, level in enumerate(levels):
        with annotate(f"rollout step {k}") if annotate is not None else contextlib.nullcontext():
            x = latents[:, k]
            v = model.velocity(x, t[k].expand(batch), cond)
            x_next, logp = sde_step(
                x, v, t[k], t_next[k], noise_level=level, t_cap=t_cap, seed=state, reduction=reduction,
                backend=backend,
            )  # fmt: skip
            latents[:, k + 1] = x_next
            log_probs[:, k] = logp


@torch.no_grad()
def rollout(
    model: EditModel,
    cond: Condition,
    schedule: StepSchedule,
    initial_noise: Tensor,
    *,
    noise_level: float,
    noise_state: Tensor,
    t_cap: float | None = None,
    window: tuple[int, int] | None = None,
    group_ids: Tensor | None = None,
    reduction: str = "mean",
    backend: str = "auto",
    annotate: Callable[[str], AbstractContextManager[None]] | None = None,
) -> Rollout:
    """Sample ``B`` trajectories; returns a :class:`Rollout` with ``latents [B, K+1, N, C]`` (float32),
    ``log_probs [B, K]`` (0 on ODE steps), ``trained [K]`` (the SDE window) and NaN rewards (not scored yet).

    Args:
        cond: ``B`` conditions (repeat each ``G`` times for groups: ``cond.repeat_interleave(G)``).
        schedule: the rollout schedule (``train_steps`` over the evaluation interval).
        initial_noise: packed ``[B, N, C]`` noise at t = 1 (``model.initial_noise``).
        noise_level: ``a`` of SPEC S1 on the SDE steps.
        noise_state: int64 ``[2]`` generator state on the model's device (advanced in place).
        t_cap: defaults to the schedule's second time.
        window: ``[start, end)`` SDE steps; ``None`` = every step.
        group_ids: ``[B]`` int64 (default ``arange(B)``).
        annotate: ``annotate(name)`` gives a context around each step (NVTX ranges); None: nothing.
    """
    batch = cond.batch_size
    if initial_noise.shape[0] != batch:
        raise ValueError(f"initial_noise has {initial_noise.shape[0]} rows for {batch} conditions; pass one per sample")
    k_steps = schedule.num_steps
    device = initial_noise.device
    trained = sde_mask(k_steps, window).to(device)
    levels = [noise_level if bool(m) else 0.0 for m in sde_mask(k_steps, window)]  # host copy: no device read
    cap = schedule.t_cap if t_cap is None else float(t_cap)
    times = schedule.to(device)
    latents = torch.empty((batch, k_steps + 1, *initial_noise.shape[1:]), dtype=torch.float32, device=device)
    log_probs = torch.zeros((batch, k_steps), dtype=torch.float32, device=device)
    latents[:, 0] = initial_noise
    rollout_steps(model, cond, latents, log_probs, times.times, levels, cap, noise_state, reduction, backend, annotate)
    ids = group_ids if group_ids is not None else torch.arange(batch, device=device)
    rewards = torch.full((batch,), float("nan"), dtype=torch.float32, device=device)
    return Rollout(latents, log_probs, times.times, trained, ids, rewards).validate()
