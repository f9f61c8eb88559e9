"""The training micro-step :func:`~fastgrpo.train.update.micro_step` replayed from CUDA graphs
(:mod:`fastgrpo.train.graphs`).

One graph per micro-batch shape holds: the policy forward, the reference forward under ``model.reference()`` when
``beta > 0`` (nothing of it when ``beta = 0``), the fused log-prob/KL, the clipped loss and its backward. Static
inputs: the step's transition ``(x, x_next)``, ``old_logp``, advantages, the two step times, the loss weight and
the condition rows. Static output: the step's statistics vector. The backward accumulates into the LoRA parameters'
``.grad`` in place: those tensors are allocated once, before the first capture, shared by every graph of the
runner, and re-bound to the parameters before each replay (a ``zero_grad(set_to_none=True)`` in between is
honoured by zeroing them). The loop over steps and micro-batches stays :func:`~fastgrpo.train.update.grpo_backward`'s
(the runner is its ``step_fn``); clipping, the all-reduce and the optimiser step stay outside the graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastgrpo.core.objective import GRPOConfig
from fastgrpo.core.sde import StepSpec
from fastgrpo.models.base import EditModel
from fastgrpo.train.graphs.capture import (
    DEFAULT_MAX_GRAPHS,
    Annotate,
    CapturedGraph,
    GraphRunner,
    cond_signature,
    copy_cond,
    static_cond,
)
from fastgrpo.train.update import MicroBatch, micro_step

__all__ = ["UpdateGraphRunner"]


@dataclass
class _StepGraph(CapturedGraph):
    """A captured micro-step: its static inputs (a :class:`MicroBatch` whose weight is a 0-d tensor) and its
    static statistics output."""

    graph: Any  # torch.cuda.CUDAGraph (None until captured)
    inputs: MicroBatch
    weight: Tensor  # 0-d float32, the static loss weight inside ``inputs``
    stats: Tensor | None  # [len(GRPOStats.NAMES)] float32, overwritten by each replay


class UpdateGraphRunner(GraphRunner):
    """:func:`~fastgrpo.train.update.micro_step` replayed from one CUDA graph per micro-batch shape (eager off
    CUDA); pass it to :func:`~fastgrpo.train.update.grpo_backward` as ``step_fn``.

    Args:
        model: the model every call uses (a different one raises ``ValueError``).
        params: the trainable (LoRA) parameters whose ``.grad`` the graphs accumulate into; non-empty, all with
            ``requires_grad``, all on one device.
        max_graphs: graphs kept (least recently used released first), >= 1; an update needs one per distinct
            micro-batch size (usually one, two when the batch does not divide evenly).
        warmup: eager micro-steps on a side stream before a capture, >= 1 (their gradients are undone).
        capture_error_mode: ``torch.cuda.graph``'s mode: ``"thread_local"`` (default), ``"global"``, ``"relaxed"``.

    A call takes :func:`~fastgrpo.train.update.micro_step`'s arguments and returns its statistics (a static
    buffer: read or accumulate it before the next call); gradients accumulate into ``p.grad`` (``None``-safe: it is
    bound to the runner's buffer, zeroed, first). :attr:`used` says whether the last call replayed a graph.
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
        batch: MicroBatch,
        grpo: GRPOConfig,
        spec: StepSpec,
        annotate: Annotate | None = None,
    ) -> Tensor:
        self._check_model(model)
        device = batch.x.device
        reason = self.unavailable(device)
        entry = None
        if reason is None:
            key = ("update", tuple(batch.x.shape), batch.blocks, batch.x.dtype, cond_signature(batch.cond), grpo,
                   spec, *self._key_common(device))  # fmt: skip
            entry = self._get(key, lambda: self._build(batch, grpo, spec))
        else:
            self.fall_back(reason)
        if entry is None:  # off CUDA, or capture failed (now or before): the eager micro-step
            self.used = False
            return micro_step(model, batch, grpo, spec, annotate)
        static = entry.inputs
        for name in ("x", "x_next", "t", "t_next", "old_logp", "adv"):
            getattr(static, name).copy_(getattr(batch, name))
        entry.weight.fill_(batch.weight)  # a fill kernel with the value as argument: no host-to-device copy
        copy_cond(static.cond, batch.cond)
        self._bind_grads()
        self._replay_graph(entry.graph, device)
        self.used = True
        assert entry.stats is not None
        return entry.stats

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

    def _build(self, batch: MicroBatch, grpo: GRPOConfig, spec: StepSpec) -> _StepGraph:
        f32 = {"dtype": torch.float32, "device": batch.x.device}
        weight = torch.ones((), **f32)
        inputs = MicroBatch(
            batch.step, batch.x.clone(memory_format=torch.contiguous_format),
            batch.x_next.clone(memory_format=torch.contiguous_format), batch.t.to(**f32).clone(),
            batch.t_next.to(**f32).clone(), batch.old_logp.clone(), batch.adv.to(**f32).clone(),
            static_cond(batch.cond), weight, batch.blocks,
        )  # fmt: skip
        entry = _StepGraph(graph=None, inputs=inputs, weight=weight, stats=None)
        grads = self._bind_grads()
        before = [g.clone() for g in grads]  # the warm-up runs accumulate too: undone below

        def body() -> Tensor:
            return micro_step(self.model, entry.inputs, grpo, spec)

        try:
            entry.graph, entry.stats = self._capture(body, batch.x.device)
            replaced = [i for i, (p, g) in enumerate(zip(self.params, grads, strict=True)) if p.grad is not g]
        finally:
            for p, g, value in zip(self.params, grads, before, strict=True):
                g.copy_(value)
                p.grad = g
        if replaced:  # the graph would write gradients where the optimiser never looks
            entry.release()
            raise RuntimeError(f"the captured backward replaced .grad of parameters {replaced[:5]} instead of adding")
        return entry
