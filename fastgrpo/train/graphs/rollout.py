"""The rollout loop of :func:`~fastgrpo.train.rollout.rollout` replayed from CUDA graphs (:mod:`fastgrpo.train.graphs`).

One graph holds all ``K`` steps (transformer forward + fused ``sde_step``) for one shape key. Static inputs: the
initial noise (row 0 of the static latents), the step times, the generator state and the condition tensors; static
outputs: the latents and log-probs, cloned out after each replay.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastgrpo.core.containers import Rollout
from fastgrpo.core.schedule import StepSchedule
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
from fastgrpo.train.rollout import rollout, rollout_steps, sde_mask

__all__ = ["RolloutGraphRunner"]


def _check_state(noise_state: Tensor, device: torch.device) -> None:
    if not isinstance(noise_state, Tensor) or noise_state.dtype != torch.int64 or noise_state.shape != (2,):
        raise ValueError(
            "noise_state must be an int64 tensor [2] = (seed, offset); build one with "
            f"fastgrpo.kernels.noise_state(seed, device=...), got {noise_state!r:.80}"
        )
    if noise_state.device != device:
        raise ValueError(f"noise_state is on {noise_state.device} but the latents are on {device}; move it there")


@dataclass
class _RolloutGraph(CapturedGraph):
    """A captured rollout: static inputs (``latents[:, 0]``, ``times``, ``state``, ``cond``) and outputs."""

    graph: Any  # torch.cuda.CUDAGraph
    latents: Tensor  # [B, K+1, N, C] float32; row 0 is the copied-in initial noise
    log_probs: Tensor  # [B, K] float32
    times: Tensor  # [K+1] float32
    state: Tensor  # int64 [2]
    cond: Condition
    trained: Tensor  # [K] bool


class RolloutGraphRunner(GraphRunner):
    """:func:`~fastgrpo.train.rollout.rollout` replayed from one CUDA graph per shape (eager off CUDA).

    Args:
        model: the model every call uses (a different one raises ``ValueError``).
        max_graphs: graphs kept (least recently used released first), >= 1.
        warmup: eager runs of the loop on a side stream before a capture, >= 1.
        capture_error_mode: ``torch.cuda.graph``'s mode: ``"thread_local"`` (default), ``"global"``, ``"relaxed"``.

    Calling it takes :func:`~fastgrpo.train.rollout.rollout`'s arguments and returns the same :class:`Rollout`:
    ``latents`` and ``log_probs`` are copies (the next replay does not overwrite them), ``noise_state`` is
    advanced in place as the eager loop advances it, so a reused state draws fresh noise on every replay.
    """

    what = "rollout"

    def __init__(
        self,
        model: EditModel,
        *,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
        warmup: int = 2,
        capture_error_mode: str = "thread_local",
    ) -> None:
        super().__init__(model, max_graphs=max_graphs, warmup=warmup, capture_error_mode=capture_error_mode)

    def __call__(
        self,
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
        annotate: Annotate | None = None,
    ) -> Rollout:
        self._check_model(model)
        _check_state(noise_state, initial_noise.device)
        if initial_noise.shape[0] != cond.batch_size:
            raise ValueError(
                f"initial_noise has {initial_noise.shape[0]} rows for {cond.batch_size} conditions; pass one per sample"
            )
        kwargs: dict[str, Any] = {
            "noise_level": noise_level, "noise_state": noise_state, "t_cap": t_cap, "window": window,
            "group_ids": group_ids, "reduction": reduction, "backend": backend, "annotate": annotate,
        }  # fmt: skip
        reason = self.unavailable(initial_noise.device)
        if reason is None:
            out = self._replay(cond, schedule, initial_noise, **kwargs)
            if out is not None:
                self.used = True
                return out
        else:
            self.fall_back(reason)
        return rollout(model, cond, schedule, initial_noise, **kwargs)

    @torch.no_grad()
    def _replay(
        self, cond: Condition, schedule: StepSchedule, initial_noise: Tensor, *, noise_level: float,
        noise_state: Tensor, t_cap: float | None, window: tuple[int, int] | None, group_ids: Tensor | None,
        reduction: str, backend: str, annotate: Annotate | None,
    ) -> Rollout | None:  # fmt: skip
        device = initial_noise.device
        mask = sde_mask(schedule.num_steps, window)  # a CPU tensor: reading it costs no device sync
        levels = tuple(float(noise_level) if m else 0.0 for m in mask.tolist())
        cap = schedule.t_cap if t_cap is None else float(t_cap)
        key = ("rollout", tuple(initial_noise.shape), initial_noise.dtype, cond_signature(cond), tuple(mask.tolist()),
               levels, cap, reduction, backend, *self._key_common(device))  # fmt: skip
        times = schedule.to(device)
        entry = self._get(
            key, lambda: self._build(cond, initial_noise, times.times, mask, levels, cap, reduction, backend)
        )
        if entry is None:
            return None
        entry.latents[:, 0].copy_(initial_noise)
        entry.times.copy_(times.times)
        entry.state.copy_(noise_state)
        copy_cond(entry.cond, cond)
        with annotate("rollout (CUDA graph)") if annotate is not None else contextlib.nullcontext():
            self._replay_graph(entry.graph, device)
        noise_state.copy_(entry.state)
        batch = cond.batch_size
        ids = group_ids if group_ids is not None else torch.arange(batch, device=device)
        rewards = torch.full((batch,), float("nan"), dtype=torch.float32, device=device)
        latents, log_probs = entry.latents.clone(), entry.log_probs.clone()
        return Rollout(latents, log_probs, times.times, entry.trained.clone(), ids, rewards).validate()

    def _build(
        self, cond: Condition, initial_noise: Tensor, times: Tensor, mask: Tensor, levels: tuple[float, ...],
        cap: float, reduction: str, backend: str,
    ) -> _RolloutGraph:  # fmt: skip
        device = initial_noise.device
        batch, k_steps = cond.batch_size, len(levels)
        latents = torch.empty((batch, k_steps + 1, *initial_noise.shape[1:]), dtype=torch.float32, device=device)
        latents[:, 0] = initial_noise  # real values for the warm-up runs
        log_probs = torch.zeros((batch, k_steps), dtype=torch.float32, device=device)
        static_times = times.clone()
        state = torch.zeros(2, dtype=torch.int64, device=device)  # any state serves the warm-up
        static = static_cond(cond)

        def body() -> None:
            with torch.no_grad():
                rollout_steps(
                    self.model, static, latents, log_probs, static_times, levels, cap, state, reduction, backend
                )

        graph, _ = self._capture(body, device)
        return _RolloutGraph(graph, latents, log_probs, static_times, state, static, mask.to(device))
