"""The metrics row of an iteration and where it goes.

:class:`MetricsProcessor` builds the row from what the iteration produced — rewards, advantages, the update's
statistics, phase times — adds throughput (``images_per_s``), model FLOPs (``tflops_per_s``, ``mfu``) and peak
memory, and hands it to the sinks (:mod:`fastgrpo.train.metrics.sinks`) on rank 0. FLOPs of one sample's forward
and forward + backward are counted once per resolution (:func:`~fastgrpo.train.metrics.flops.count_flops`, with
compilation off so that compiled kernels do not hide their operators).

Keys of an iteration row: ``step`` (1-based), ``reward_mean``, ``reward_std``, ``reward_failed`` (over all ranks),
``constant_groups``, ``reward/<component>``, the update's statistics (``loss``, ``policy_loss``, ``kl``,
``clip_frac``..., ``grad_norm``, ``lr``, ``trained_steps``, ``cuda_graphs``), ``skipped_updates``, ``time/step``
and ``time/<phase>`` (seconds), ``images_per_s``, ``tflops_per_s``, ``mfu`` and ``peak_mem_gib`` (None where
unknown), and ``time/compile`` under ``runtime.compile``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fastgrpo.core.advantages import AdvantageResult
from fastgrpo.core.containers import Rollout
from fastgrpo.models.base import Condition, EditModel
from fastgrpo.train.metrics.flops import count_flops, mfu, peak_flops, peak_memory_gib
from fastgrpo.train.metrics.sinks import MetricsSink
from fastgrpo.train.parallel.distributed import DistContext

__all__ = ["MetricsProcessor"]


class MetricsProcessor:
    """Builds and writes the metrics rows of a run.

    Args:
        model: the trained model (for FLOP counting).
        dist: ranks; only rank 0 writes.
        sinks: where rows go (rank 0; other ranks may pass none).
        rollout_steps: ``K``, transformer forwards per rollout sample.
        inner_epochs: passes of the update over each rollout.
        reference_pass: whether the update runs the reference forward (``grpo.beta > 0``).
        clear_grads: drops the gradients the FLOP count's backward leaves behind.
        compiled: the compile report under ``runtime.compile`` (its seconds go to ``time/compile``), else None.
        log: receives a line when an iteration spent noticeable time compiling.
    """

    def __init__(
        self,
        model: EditModel,
        dist: DistContext,
        sinks: Sequence[MetricsSink],
        *,
        rollout_steps: int,
        inner_epochs: int,
        reference_pass: bool,
        clear_grads: Callable[[], None],
        compiled: Any = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.model, self.dist, self.sinks = model, dist, list(sinks)
        self.rollout_steps, self.inner_epochs, self.reference_pass = rollout_steps, inner_epochs, reference_pass
        self._clear_grads, self.compiled, self._log = clear_grads, compiled, log
        self._flops: dict[tuple[int, int], tuple[float, float]] = {}

    def flops(self, cond: Condition, rollout: Rollout) -> tuple[float, float]:
        """FLOPs of one sample's forward (no gradient) and forward + backward at ``cond``'s resolution, counted the
        first time a resolution is met."""
        key = (cond.height, cond.width)
        if key not in self._flops:
            one = cond.index_select(torch.zeros(1, dtype=torch.int64, device=rollout.device))
            x, t = rollout.latents[:1, 0], rollout.times[:1]

            def forward() -> None:
                with torch.no_grad():
                    self.model.velocity(x, t, one)

            def train_step() -> None:
                self.model.velocity(x, t, one).float().square().mean().backward()

            with torch.compiler.set_stance("force_eager"):  # compiled kernels would hide their ops from the counter
                fwd = float(count_flops(forward))
                fwd_bwd = float(count_flops(train_step))
            self._clear_grads()
            self._flops[key] = (fwd, fwd_bwd)
        return self._flops[key]

    def compile_seconds(self) -> float:
        """Seconds spent in ``torch.compile`` since the last call (0 without compilation)."""
        return self.compiled.read() if self.compiled is not None else 0.0

    def iteration_row(
        self,
        step: int,
        *,
        cond: Condition,
        rollout: Rollout,
        advantages: AdvantageResult,
        failed: int,
        components: Mapping[str, float],
        update: Mapping[str, Any],
        skipped_updates: int,
        phases: Mapping[str, float],
        seconds: float,
    ) -> dict[str, Any]:
        """The row of iteration ``step`` (0-based; the row's ``step`` is 1-based).

        Args:
            cond, rollout: the iteration's conditions and rollout (this rank's ``B`` samples).
            advantages: the group statistics over all ranks (``advantages.rewards``: every rank's rewards).
            failed: rewards that failed, over all ranks.
            components: ``reward/<name>`` means of this rank's scored samples.
            update: the update's statistics (:meth:`~fastgrpo.train.policy.Policy.step`, plus ``lr``,
                ``trained_steps``, ``cuda_graphs``).
            skipped_updates: non-finite updates skipped so far.
            phases: seconds per phase of this iteration; seconds: its wall-clock time.
        """
        rewards = advantages.rewards.cpu()
        finite = rewards[torch.isfinite(rewards)]
        fwd, train = self.flops(cond, rollout)
        n_train = len(rollout.trained or ()) * self.inner_epochs
        per_sample = self.rollout_steps * fwd + n_train * train + (n_train * fwd if self.reference_pass else 0)
        world = self.dist.world_size
        total_flops = per_sample * rollout.batch_size * world
        peak = peak_flops(self.dist.device)
        row: dict[str, Any] = {
            "step": step + 1,
            "reward_mean": float(finite.mean()) if finite.numel() else math.nan,
            "reward_std": float(finite.std(unbiased=False)) if finite.numel() else math.nan,
            "reward_failed": failed,
            "constant_groups": int(advantages.num_constant_groups),
            **components,
            **update,
            "skipped_updates": skipped_updates,
            "time/step": seconds,
            **{f"time/{name}": value for name, value in phases.items()},
            "images_per_s": rollout.batch_size * world / seconds,
            "tflops_per_s": total_flops / seconds / 1e12,
            "mfu": mfu(total_flops, seconds, peak * world if peak else None),
            "peak_mem_gib": peak_memory_gib(self.dist.device),
        }
        if self.compiled is not None:  # seconds of time/step spent compiling (first calls, recompilations)
            row["time/compile"] = self.compile_seconds()
            if row["time/compile"] > 0.1:
                self._log(f"iteration {step + 1}: {row['time/compile']:.1f} s of {seconds:.1f} s in torch.compile")
        return row

    def log(self, row: Mapping[str, Any]) -> None:
        """Send ``row`` to every sink (rank 0 only)."""
        if not self.dist.is_main:
            return
        for sink in self.sinks:
            sink.log(row)

    def close(self) -> None:
        """Close every sink (idempotent per sink)."""
        for sink in self.sinks:
            sink.close()
