"""Rollouts and their rewards, overlapped (DESIGN "One GRPO iteration", steps 3-4).

A rank's ``P · G`` samples are rolled out in chunks of ``sampler.rollout_batch`` samples (all at once by default).
Each chunk is decoded as soon as it is done and its rewards are computed on a worker thread while the next chunk
rolls out. The SDE noise of a chunk is keyed by ``(seed, iteration, global chunk)``, so the same global batch gives
the same rollouts on any number of ranks. A chunk whose reward evaluation raises is masked (its rewards NaN,
counted as failed) and the run goes on.

:class:`RolloutPlans` builds the :class:`~fastgrpo.train.rollout.RolloutPlan` of each resolution once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

import numpy as np
import torch

from fastgrpo.core.containers import Rollout
from fastgrpo.core.sde import SDEConfig
from fastgrpo.kernels import noise_state
from fastgrpo.models.base import Condition, EditModel
from fastgrpo.rewards.async_eval import AsyncRewardEvaluator
from fastgrpo.rewards.composite import CompositeReward
from fastgrpo.rewards.tally import RewardTally
from fastgrpo.train.conditions import RankBatch, reward_batch
from fastgrpo.train.config.sections import SamplerConfig
from fastgrpo.train.rollout import RolloutPlan, StepsFn, rollout, rollout_steps
from fastgrpo.train.state import mix_seed

__all__ = ["Generated", "RolloutGenerator", "RolloutPlans"]

logger = logging.getLogger(__name__)

Phase = Callable[[str], AbstractContextManager[None]]


class RolloutPlans:
    """The :class:`~fastgrpo.train.rollout.RolloutPlan` of each resolution, built on first use: the model's
    schedule of ``sampler.train_steps`` over the ``sampler.eval_steps`` interval, the step math of ``sde`` with
    kernel ``backend``, and the SDE window."""

    def __init__(self, model: EditModel, sampler: SamplerConfig, sde: SDEConfig, backend: str) -> None:
        self.model, self.sampler, self.sde, self.backend = model, sampler, sde, backend
        self._plans: dict[tuple[int, int], RolloutPlan] = {}

    def __call__(self, height: int, width: int) -> RolloutPlan:
        """The plan of ``height x width`` images."""
        key = (height, width)
        if key not in self._plans:
            s = self.sampler
            schedule = self.model.schedule(s.train_steps, height, width, interval_steps=s.eval_steps)
            self._plans[key] = RolloutPlan.build(schedule, self.sde.spec(schedule, self.backend), s.window)
        return self._plans[key]


@dataclass(eq=False)
class Generated:
    """One iteration's rollouts of this rank and what was made of them.

    Attributes:
        rollout: the ``B`` trajectories, ``rewards`` and ``reward_components`` filled in (NaN where scoring
            failed).
        rewards: the tally of the scored chunks (per-component means, failures).
        images: the ``B`` decoded edits, ``uint8 [H, W, 3]`` each (for the sample grids).
    """

    rollout: Rollout
    rewards: RewardTally
    images: list[np.ndarray]


class RolloutGenerator:
    """Rolls out and scores a rank's samples (see the module docstring).

    Args:
        model: the policy's model.
        reward: the composite reward (not closed by :meth:`close`).
        plans: the rollout plan of each resolution.
        seed: the rollout seed (``sampler.seed`` or ``runtime.seed``).
        chunk: samples per rollout forward; must divide every batch.
        rank, batch_size: this rank and its samples per iteration (chunk keys are global).
        trained_per_iteration: SDE steps the update trains per iteration (``sampler.trained_steps``): a fresh
            random subset of the iteration's SDE steps, keyed by ``(seed, iteration)``.
        sampler: the ``sampler`` section, for the moving SDE window (``sde_steps``, ``window_schedule``,
            ``window_stride``) and ``shared_noise`` (with ``group_size``); None: a fixed window, independent noise.
        phase: ``phase(name)`` times and annotates a stretch of work (``rollout``, ``decode``, ``reward_submit``,
            ``reward``).
        annotate: NVTX ranges around each rollout step, or None.
        log: receives a line when a chunk's reward evaluation fails.
        steps_fn: runs the rollout's step loop (a CUDA-graph runner under ``runtime.cuda_graphs``).
    """

    def __init__(
        self,
        model: EditModel,
        reward: CompositeReward,
        plans: RolloutPlans,
        *,
        seed: int,
        chunk: int,
        rank: int,
        batch_size: int,
        trained_per_iteration: int,
        phase: Phase,
        annotate: Callable[[str], AbstractContextManager[None]] | None = None,
        log: Callable[[str], None] = print,
        steps_fn: StepsFn = rollout_steps,
        sampler: SamplerConfig | None = None,
    ) -> None:
        if chunk < 1 or batch_size % chunk:
            raise ValueError(f"chunk={chunk} must be >= 1 and divide the rank's {batch_size} samples")
        self.model, self.plans, self.seed, self.chunk, self.rank = model, plans, seed, chunk, rank
        self.n_chunks, self.batch_size = batch_size // chunk, batch_size
        self.trained_per_iteration = trained_per_iteration
        self.sampler = sampler
        self.shared = sampler is not None and sampler.shared_noise
        self._phase, self._annotate, self._log, self._steps_fn = phase, annotate, log, steps_fn
        self.scorer = AsyncRewardEvaluator(reward, max_pending=self.n_chunks + 1, close_reward=False)
        self.weights = dict(reward.weights)  # the components whose rewards the rollout carries

    def iteration_plan(self, step: int, plan: RolloutPlan) -> RolloutPlan:
        """The plan of iteration ``step``: ``plan`` with this iteration's SDE steps (``sampler.sde_steps``
        consecutive ones of the window, placed by ``sampler.window_schedule``; all of them when unset)."""
        s = self.sampler
        candidates = plan.sde_steps
        if s is None or s.sde_steps is None or s.sde_steps >= len(candidates):
            return plan
        positions = len(candidates) - s.sde_steps + 1
        if s.window_schedule == "sliding":
            start = (step // s.window_stride) % positions
        else:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, step, 0xB1))
            start = int(torch.randint(positions, (1,), generator=gen))
        return plan.with_steps(candidates[start : start + s.sde_steps])

    def trained_steps(self, step: int, plan: RolloutPlan) -> tuple[int, ...]:
        """The SDE steps iteration ``step`` trains, in the order the update trains them (``plan``: the
        iteration's plan, :meth:`iteration_plan`)."""
        gen = torch.Generator().manual_seed(mix_seed(self.seed, step, 0xA11))
        order = torch.randperm(len(plan.sde_steps), generator=gen)[: self.trained_per_iteration]
        return tuple(plan.sde_steps[int(i)] for i in order)

    def _initial_noise(self, step: int, key: int, groups: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The initial noise of the chunk ``key`` whose rows belong to the global groups ``groups``: independent
        per sample, or with ``shared_noise`` one draw per group keyed by its global id (the same on any chunking,
        rank count or placement)."""
        if not self.shared:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, step, key, 1))
            return self.model.initial_noise(self.chunk, cond.height, cond.width, generator=gen)
        ids = groups.tolist()
        draws: dict[int, torch.Tensor] = {}
        for group in sorted(set(ids)):
            gen = torch.Generator().manual_seed(mix_seed(self.seed, step, group, 3))
            draws[group] = self.model.initial_noise(1, cond.height, cond.width, generator=gen)
        return torch.cat([draws[group] for group in ids])

    def _chunks(
        self, step: int, cond: Condition, group_ids: torch.Tensor
    ) -> Iterator[tuple[slice, Condition, torch.Tensor, torch.Tensor]]:
        """Per chunk: its rows, conditions, initial noise and noise state, keyed by the global chunk index."""
        device = self.model.device
        for c in range(self.n_chunks):
            rows = slice(c * self.chunk, (c + 1) * self.chunk)
            key = self.rank * self.n_chunks + c  # the global chunk index: the same samples get the same noise
            initial = self._initial_noise(step, key, group_ids[rows], cond)
            state = noise_state(mix_seed(self.seed, step, key, 2), 0, device=device)
            sub = cond if self.n_chunks == 1 else cond.index_select(torch.arange(rows.start, rows.stop, device=device))
            yield rows, sub, initial, state

    def _shared_prefix_groups(self, group_ids: torch.Tensor) -> int | None:
        """The group size ``G`` when every chunk is made of whole groups, each ``G`` consecutive rows (so that
        with shared noise a group's ODE prefix is one computation, :func:`rollout`), else None."""
        if not self.shared:
            return None
        assert self.sampler is not None
        size = self.sampler.group_size
        if self.chunk % size:
            return None
        blocks = group_ids.reshape(-1, size)
        return size if bool((blocks == blocks[:, :1]).all()) else None

    def generate(self, step: int, batch: RankBatch, cond: Condition) -> Generated:
        """Roll out and score iteration ``step``'s samples of this rank (``cond``: one row per sample); the rollout
        comes back with its rewards and the steps this iteration trains."""
        plan = self.iteration_plan(step, self.plans(cond.height, cond.width))
        group_ids = batch.group_ids.to(self.model.device)
        parts, futures, images = [], [], []
        shared = self._shared_prefix_groups(batch.group_ids)
        for rows, sub, initial, state in self._chunks(step, cond, batch.group_ids):
            with self._phase("rollout"):
                part = rollout(self.model, sub, plan, initial, noise_state=state, group_ids=group_ids[rows],
                               annotate=self._annotate, steps_fn=self._steps_fn, shared_prefix=shared)  # fmt: skip
            with self._phase("decode"):
                decoded = list(self.model.decode_uint8(part.latents[:, -1], cond.height, cond.width).numpy())
            with self._phase("reward_submit"):
                futures.append(self.scorer.submit(reward_batch(batch.samples(rows), decoded)))
            parts.append(part)
            images.extend(decoded)
        tally = RewardTally()
        with self._phase("reward"):
            for future in futures:
                try:
                    result = future.result()
                except Exception as error:  # a broken component: mask the chunk, count it, go on
                    logger.exception("reward evaluation failed")
                    self._log(f"reward evaluation failed ({type(error).__name__}: {error}); masking the chunk")
                    result = None
                tally.add(result, self.chunk)
        full = parts[0] if len(parts) == 1 else Rollout.cat(parts)
        components = {name: tally.values(name).to(full.device) for name, weight in self.weights.items()
                      if weight != 0 and name in tally.names}  # fmt: skip
        full = replace(full, rewards=tally.totals().to(full.device), trained=self.trained_steps(step, plan),
                       reward_components=components or None)  # fmt: skip
        return Generated(full, tally, images)

    def close(self) -> None:
        """Stop the reward worker without waiting for pending batches."""
        self.scorer.close(wait=False)
