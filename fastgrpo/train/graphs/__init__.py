"""CUDA graphs for the two launch-bound loops of a GRPO iteration (``runtime.cuda_graphs``).

* :class:`RolloutGraphRunner` (:mod:`~fastgrpo.train.graphs.rollout`) captures the whole fixed rollout loop
  :func:`~fastgrpo.train.rollout.rollout_steps` (``train_steps`` transformer forwards, each followed by the fused
  ``sde_step``) as one graph per shape key.
* :class:`UpdateGraphRunner` (:mod:`~fastgrpo.train.graphs.update`) captures one training micro-step
  :func:`~fastgrpo.train.update.micro_step` (policy forward, the reference forward when ``beta > 0``, fused
  log-prob/KL, clipped loss, backward) per micro-batch shape; gradients accumulate in place into the LoRA
  parameters' ``.grad``; the all-reduce, clipping and the optimiser stay outside the graphs.
* :class:`TrainingGraphs` holds both for the trainer.

Both runners are drop-in replacements for the eager functions they capture (same arguments, same outputs): the loops
around them are the eager ones, :func:`~fastgrpo.train.rollout.rollout` (``steps_fn=``) and
:func:`~fastgrpo.train.update.grpo_backward` (``step_fn=``), so there is one rollout and one update loop. Each graph
follows torch's CUDA-graph notes: static input buffers, warm-up runs on a side stream, capture on that stream; then
per call: copy the inputs into the static buffers, replay, read the static outputs. Noise stays fresh on every
replay because the caller's generator state (int64 ``[2] = (seed, offset)``, :func:`~fastgrpo.kernels.noise_state`)
is a copied-in input: the captured ``sde_step`` kernels read it and advance its offset on the device, and after the
replay the advanced state is copied back, exactly as the eager loop leaves it. Graphs live in a least-recently-used
cache of at most ``max_graphs`` entries per runner (:class:`GraphCache`); an evicted graph is reset, which frees its
private memory pool. That pool holds the activations of the capture, so the limit is a memory limit too.

Eager fallback: off CUDA, with an FSDP-sharded transformer (its per-forward collectives are not captured), inside
another capture, or once a capture failed (an operation that cannot be captured, such as a host read; the runner
then stays eager), a runner runs the eager code and logs the reason once (logger ``fastgrpo.train.graphs``);
its ``used`` attribute says whether the last call replayed graphs, and the trainer writes
:attr:`TrainingGraphs.used` to every metrics row (``cuda_graphs``).

What a graph bakes in is part of its shape key, so a change captures a new graph: batch and latent shapes and
dtypes, the condition tensors' names, shapes and dtypes, the number of steps, the SDE window and noise level,
``t_cap``, reduction, kernel backend, GRPO settings, autocast, and the addresses of the transformer's weights
(updates must stay in place, as AdamW's are). Step times, the micro-batch loss weight, noise and conditions are
copied-in inputs. Python-side state is read once, at capture: the LoRA adapters must be enabled when a runner is
called (the reference pass is captured inside ``model.reference()``); position ids the model caches per shape
must stay cached (the tiny editor's and FLUX.1 Kontext's do); NVTX ranges wrap a whole replay, not each step.

Example::

    graphs = TrainingGraphs(model, params)
    ro = rollout(model, cond, plan, noise, noise_state=noise_state(1, device="cuda"), steps_fn=graphs.rollout_steps)
    ro = replace(ro, advantages=advantages)
    stats = grpo_backward(model, ro, cond, grpo=grpo, spec=plan.spec, step_fn=graphs.micro_step)
    assert graphs.used  # False (and the reason logged) when either fell back to eager
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastgrpo.models.base import EditModel
from fastgrpo.train.graphs.capture import DEFAULT_MAX_GRAPHS, GraphCache
from fastgrpo.train.graphs.rollout import RolloutGraphRunner
from fastgrpo.train.graphs.update import UpdateGraphRunner

__all__ = ["DEFAULT_MAX_GRAPHS", "GraphCache", "RolloutGraphRunner", "TrainingGraphs", "UpdateGraphRunner"]


class TrainingGraphs:
    """The rollout and update runners of one training run.

    Args:
        model: the trained model; params: its trainable LoRA parameters (see :class:`UpdateGraphRunner`).
        max_graphs: graphs each runner keeps (>= 1).

    Raises ``ValueError`` for bad arguments (empty ``params``, ``max_graphs < 1``).
    """

    def __init__(
        self, model: EditModel, params: Sequence[torch.nn.Parameter], *, max_graphs: int = DEFAULT_MAX_GRAPHS
    ) -> None:
        #: the ``steps_fn`` of :func:`~fastgrpo.train.rollout.rollout`
        self.rollout_steps = RolloutGraphRunner(model, max_graphs=max_graphs)
        #: the ``step_fn`` of :func:`~fastgrpo.train.update.grpo_backward`
        self.micro_step = UpdateGraphRunner(model, params, max_graphs=max_graphs)

    @property
    def used(self) -> bool:
        """Whether the last rollout and the last update micro-step both replayed graphs (False before either ran).
        A runner whose capture failed stays eager for the rest of the run, so the last micro-step of an update
        speaks for all of them."""
        return bool(self.rollout_steps.used) and bool(self.micro_step.used)
