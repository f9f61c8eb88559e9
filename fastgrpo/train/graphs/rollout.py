"""The rollout loop :func:`~fastgrpo.train.rollout.rollout_steps` replayed from CUDA graphs
(:mod:`fastgrpo.train.graphs`).

One graph holds all ``K`` steps (transformer forward + fused ``sde_step``) for one shape key. Static inputs: the
initial noise (row 0 of the static latents), the step times, the generator state and the condition tensors; static
outputs: the latents and log-probs, copied into the caller's buffers after each replay.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastgrpo.core.sde import StepSpec
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
from fastgrpo.train.rollout import rollout_steps

__all__ = ["RolloutGraphRunner"]


@dataclass
class _RolloutGraph(CapturedGraph):
    """A captured rollout: static inputs (``latents[:, 0]``, ``times``, ``state``, ``cond``) and outputs."""

    graph: Any  # torch.cuda.CUDAGraph
    latents: Tensor  # [B, K+1, N, C] float32; row 0 is the copied-in initial noise
    log_probs: Tensor  # [B, K] float32
    times: Tensor  # [K+1] float32
    state: Tensor  # int64 [2]
    cond: Condition


class RolloutGraphRunner(GraphRunner):
    """:func:`~fastgrpo.train.rollout.rollout_steps` replayed from one CUDA graph per shape (eager off CUDA).

    Args:
        model: the model every call uses (a different one raises ``ValueError``).
        max_graphs: graphs kept (least recently used released first), >= 1.
        warmup: eager runs of the loop on a side stream before a capture, >= 1.
        capture_error_mode: ``torch.cuda.graph``'s mode: ``"thread_local"`` (default), ``"global"``, ``"relaxed"``.

    Calling it takes :func:`~fastgrpo.train.rollout.rollout_steps`'s arguments and fills the same buffers
    (``latents [B, K+1, N, C]`` from its row 0, ``log_probs [B, K]``); ``state`` is advanced in place as the eager
    loop advances it, so a reused state draws fresh noise on every replay. Pass it to
    :func:`~fastgrpo.train.rollout.rollout` as ``steps_fn``.
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

    @torch.no_grad()
    def __call__(
        self,
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
        self._check_model(model)
        device = latents.device
        reason = self.unavailable(device)
        entry = None
        if reason is None:
            key = ("rollout", tuple(latents.shape), latents.dtype, cond_signature(cond), tuple(levels), spec,
                   *self._key_common(device))  # fmt: skip
            entry = self._get(key, lambda: self._build(cond, latents, times, tuple(levels), spec))
        else:
            self.fall_back(reason)
        if entry is None:
            self.used = False
            rollout_steps(model, cond, latents, log_probs, times, levels, spec, state, annotate)
            return
        entry.latents[:, 0].copy_(latents[:, 0])
        entry.times.copy_(times)
        entry.state.copy_(state)
        copy_cond(entry.cond, cond)
        with annotate("rollout (CUDA graph)") if annotate is not None else contextlib.nullcontext():
            self._replay_graph(entry.graph, device)
        state.copy_(entry.state)
        latents.copy_(entry.latents)  # copies: the next replay overwrites the static buffers
        log_probs.copy_(entry.log_probs)
        self.used = True

    def _build(
        self, cond: Condition, latents: Tensor, times: Tensor, levels: tuple[float, ...], spec: StepSpec
    ) -> _RolloutGraph:
        device = latents.device
        static_latents = latents.clone()  # row 0: real noise for the warm-up runs
        static_log_probs = torch.zeros((latents.shape[0], len(levels)), dtype=torch.float32, device=device)
        static_times = times.clone()
        state = torch.zeros(2, dtype=torch.int64, device=device)  # any state serves the warm-up
        static = static_cond(cond)

        def body() -> None:
            with torch.no_grad():
                rollout_steps(self.model, static, static_latents, static_log_probs, static_times, levels, spec, state)

        graph, _ = self._capture(body, device)
        return _RolloutGraph(graph, static_latents, static_log_probs, static_times, state, static)
