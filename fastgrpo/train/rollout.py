"""Rollouts: SDE sampling of a batch of conditions, recording what the GRPO update needs.

One call runs all ``K`` steps of the schedule for the whole batch (every sample of every group at once) in batched
forwards, with no host synchronisation: ``v = model.velocity(x_t, t, cond)``, then the fused
:func:`~fastgrpo.kernels.sde_step` writes ``x_next`` and ``logp_old``. Steps inside the SDE window explore
(``noise_level > 0``) and are trainable; the others are deterministic Euler (ODE) steps. Noise comes from a
device-side generator state (:func:`~fastgrpo.kernels.noise_state`), advanced by one per SDE step, so the loop can be
captured in a CUDA graph and still draw fresh noise on every replay.

What a rollout of one resolution needs besides the model and the conditions is built once per resolution as a
:class:`RolloutPlan`: the schedule, the step math (:class:`~fastgrpo.core.sde.StepSpec`) and the SDE window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from fastgrpo.core.containers import Rollout
from fastgrpo.core.schedule import StepSchedule
from fastgrpo.core.sde import StepSpec
from fastgrpo.kernels import sde_step
from fastgrpo.models.base import Condition, EditModel

__all__ = ["RolloutPlan", "StepsFn", "rollout", "rollout_steps", "sde_steps"]

Annotate = Callable[[str], AbstractContextManager[None]]


def sde_steps(num_steps: int, window: tuple[int, int] | None) -> tuple[int, ...]:
    """The SDE steps ``[start, end)`` of a ``num_steps`` rollout (all of them for ``None``); ``ValueError`` for a
    window outside the rollout."""
    if window is None:
        return tuple(range(num_steps))
    start, end = window
    if not 0 <= start <= end <= num_steps:
        raise ValueError(f"SDE window {window} must satisfy 0 <= start <= end <= {num_steps} (the rollout's steps)")
    return tuple(range(start, end))


@dataclass(frozen=True)
class RolloutPlan:
    """Everything about a rollout that depends on the resolution and the config, not on the batch: built once per
    resolution (:meth:`build`) and shared by the rollout, the update and the metrics.

    Attributes:
        schedule: the rollout schedule (``train_steps`` over the evaluation interval).
        spec: the step math (noise level, resolved ``t_cap``, reduction, kernel backend).
        sde_steps: the steps sampled with noise, ascending; the others are ODE steps.
    """

    schedule: StepSchedule
    spec: StepSpec
    sde_steps: tuple[int, ...]

    @classmethod
    def build(cls, schedule: StepSchedule, spec: StepSpec, window: tuple[int, int] | None = None) -> RolloutPlan:
        """The plan of ``schedule`` with the SDE window ``[start, end)`` (``None``: every step; empty: the ODE).
        Steps of the window whose sampler draws no noise (a CPS step to ``t = 0``) are ODE steps."""
        times, window_steps = schedule.times.tolist(), sde_steps(schedule.num_steps, window)
        steps = tuple(k for k in window_steps if spec.has_noise(times[k + 1]))
        if window_steps and not steps:
            raise ValueError(
                f"the SDE window {window} holds no step that draws noise (sampler {spec.sampler!r}, noise level "
                f"{spec.noise_level}); a CPS step to t = 0 is deterministic: widen the window"
            )
        return cls(schedule, spec, steps)

    def with_steps(self, steps: tuple[int, ...]) -> RolloutPlan:
        """This plan with SDE steps ``steps`` (a subset of :attr:`sde_steps`: an iteration's moving window)."""
        if not steps or not set(steps) <= set(self.sde_steps):
            raise ValueError(f"steps {steps} must be a non-empty subset of the plan's SDE steps {self.sde_steps}")
        return RolloutPlan(self.schedule, self.spec, tuple(sorted(steps)))

    @property
    def num_steps(self) -> int:
        """``K``, the rollout's steps."""
        return self.schedule.num_steps

    @property
    def noise_levels(self) -> tuple[float, ...]:
        """``K`` noise levels (host floats): ``spec.noise_level`` on the SDE steps, 0 on the ODE steps."""
        sde = set(self.sde_steps)
        return tuple(self.spec.noise_level if k in sde else 0.0 for k in range(self.num_steps))


def rollout_steps(
    model: EditModel,
    cond: Condition,
    latents: Tensor,
    log_probs: Tensor,
    times: Tensor,
    levels: tuple[float, ...],
    spec: StepSpec,
    state: Tensor,
    annotate: Annotate | None = None,
) -> None:
    """The step loop of :func:`rollout` on given buffers: ``latents [B, K+1, N, C]`` float32 (row 0 holds the
    initial noise), ``log_probs [B, K]`` float32, ``times [K+1]`` float32 on the latents' device, ``levels`` the
    ``K`` noise levels (host floats; ``spec.noise_level`` is not read), ``state`` int64 [2] (advanced in place). No
    allocation beyond the step outputs and no host-to-device copy, so a CUDA graph can capture it
    (:class:`~fastgrpo.train.graphs.RolloutGraphRunner` takes the same arguments).
    """
    batch = latents.shape[0]
    t, t_next = times[:-1], times[1:]
    for k, level in enumerate(levels):
        with annotate(f"rollout step {k}") if annotate is not None else contextlib.nullcontext():
            x = latents[:, k]
            v = model.velocity(x, t[k].expand(batch), cond)
            x_next, logp = sde_step(
                x, v, t[k], t_next[k], noise_level=level, t_cap=spec.t_cap, seed=state, reduction=spec.reduction,
                backend=spec.backend, sampler=spec.sampler,
            )  # fmt: skip
            latents[:, k + 1] = x_next
            log_probs[:, k] = logp


#: what runs the step loop: :func:`rollout_steps`, or a CUDA-graph runner with its signature
StepsFn = Callable[..., None]


def check_noise_state(noise_state: Tensor, device: torch.device) -> None:
    """``ValueError`` unless ``noise_state`` is an int64 ``[2]`` tensor on ``device``."""
    if not isinstance(noise_state, Tensor) or noise_state.dtype != torch.int64 or noise_state.shape != (2,):
        raise ValueError(
            "noise_state must be an int64 tensor [2] = (seed, offset); build one with "
            f"fastgrpo.kernels.noise_state(seed, device=...), got {noise_state!r:.80}"
        )
    if noise_state.device != device:
        raise ValueError(f"noise_state is on {noise_state.device} but the latents are on {device}; move it there")


@torch.no_grad()
def rollout(
    model: EditModel,
    cond: Condition,
    plan: RolloutPlan,
    initial_noise: Tensor,
    *,
    noise_state: Tensor,
    group_ids: Tensor | None = None,
    annotate: Annotate | None = None,
    steps_fn: StepsFn = rollout_steps,
    shared_prefix: int | None = None,
) -> Rollout:
    """Sample ``B`` trajectories; returns a :class:`Rollout` with ``latents [B, K+1, N, C]`` (float32),
    ``log_probs [B, K]`` (0 on ODE steps), the plan's SDE steps (all of them trained) and NaN rewards.

    Args:
        cond: ``B`` conditions (repeat each ``G`` times for groups: ``cond.repeat_interleave(G)``).
        plan: schedule, step math and SDE window of this resolution (:meth:`RolloutPlan.build`).
        initial_noise: packed ``[B, N, C]`` noise at t = 1 (``model.initial_noise``).
        noise_state: int64 ``[2]`` generator state on the model's device (advanced in place, once per SDE step).
        group_ids: ``[B]`` int64 (default ``arange(B)``).
        annotate: ``annotate(name)`` gives a context around each step (NVTX ranges); None: nothing.
        steps_fn: runs the step loop on the buffers (default :func:`rollout_steps`; a CUDA-graph runner replays
            it instead).
        shared_prefix: ``G`` when every block of ``G`` consecutive rows is one group with the same condition and
            the same initial noise (``sampler.shared_noise``): the ODE steps before the first SDE step are then the
            same for the whole block and run once per block (on ``B / G`` rows), their result copied to the block.
            None: every row runs every step.

    Raises ``ValueError`` for an ``initial_noise`` without one row per condition or a malformed ``noise_state``.
    """
    batch = cond.batch_size
    if initial_noise.shape[0] != batch:
        raise ValueError(f"initial_noise has {initial_noise.shape[0]} rows for {batch} conditions; pass one per sample")
    device = initial_noise.device
    check_noise_state(noise_state, device)
    times = plan.schedule.to(device).times
    k_steps = plan.num_steps
    latents = torch.empty((batch, k_steps + 1, *initial_noise.shape[1:]), dtype=torch.float32, device=device)
    log_probs = torch.zeros((batch, k_steps), dtype=torch.float32, device=device)
    latents[:, 0] = initial_noise
    levels, first = plan.noise_levels, (plan.sde_steps or (0,))[0]
    if shared_prefix is not None and shared_prefix > 1 and first > 0:
        if batch % shared_prefix:
            raise ValueError(f"shared_prefix={shared_prefix} must divide the batch of {batch} rows")
        heads = torch.arange(0, batch, shared_prefix, device=device)
        head_latents = latents[heads, : first + 1].contiguous()
        head_log_probs = torch.zeros((heads.numel(), first), dtype=torch.float32, device=device)
        head_cond = cond.index_select(heads)
        steps_fn(model, head_cond, head_latents, head_log_probs, times[: first + 1], levels[:first], plan.spec,
                 noise_state, annotate)  # fmt: skip
        latents[:, 1 : first + 1] = head_latents[:, 1:].repeat_interleave(shared_prefix, dim=0)
        steps_fn(model, cond, latents[:, first:], log_probs[:, first:], times[first:], levels[first:], plan.spec,
                 noise_state, annotate)  # fmt: skip
    else:
        steps_fn(model, cond, latents, log_probs, times, levels, plan.spec, noise_state, annotate)
    ids = group_ids if group_ids is not None else torch.arange(batch, device=device)
    rewards = torch.full((batch,), float("nan"), dtype=torch.float32, device=device)
    return Rollout(latents, log_probs, times, ids, rewards, plan.sde_steps).validate()
