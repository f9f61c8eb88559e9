"""Weighted composition of named reward components into the scalar reward (SPEC S2), every component reported.

``R = Σ_k w_k · R_k`` over the named components, NaN for a sample where any component with a non-zero weight is
NaN (:meth:`fastgrpo.core.containers.RewardBreakdown.total`), so a failed judge call leaves the sample out of the
advantages instead of rewarding it on the other terms alone. Every component's sub-terms are logged next to it as
``{name}.{term}`` with weight 0 (reduced with the rest by :class:`~fastgrpo.rewards.tally.RewardTally`, never
summed). Callers build the batch once, ``reward.evaluate(RewardBatch.build(sources, edited, instructions, ...))``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from fastgrpo.core.containers import RewardBreakdown
from fastgrpo.rewards.base import RewardBatch, RewardFunction, RewardResult

__all__ = ["CompositeResult", "CompositeReward"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class CompositeResult:
    """The scored batch: the :class:`RewardBreakdown` (components and sub-terms) and each component's failures.

    Means, finite counts and failure counts over one or many scored batches come from
    :class:`~fastgrpo.rewards.tally.RewardTally` (``tally.add(result, B)``).

    Attributes:
        breakdown: components ``{name}`` with their weights and sub-terms ``{name}.{term}`` with weight 0.
        failures: component name → ``B`` reasons (None where the sample was scored).
    """

    breakdown: RewardBreakdown
    failures: dict[str, tuple[str | None, ...]] = field(default_factory=dict)

    def total(self) -> torch.Tensor:
        """``[B]`` float32 weighted reward; NaN where a weighted component is NaN."""
        return self.breakdown.total()


class CompositeReward:
    """Named components combined by weights.

    Args:
        components: name → :class:`RewardFunction` (names must not contain ``.`` or be ``total``).
        weights: name → finite weight, one per component (0 logs a component without rewarding it).
        device: where the returned tensors live (components compute where they were configured to).

    Components that work asynchronously (the judge) are started first, so their I/O overlaps with the others'
    computation.
    """

    def __init__(
        self,
        components: Mapping[str, RewardFunction],
        weights: Mapping[str, float],
        device: torch.device | str = "cpu",
    ) -> None:
        if not components:
            raise ValueError("CompositeReward needs at least one component; configure rewards.components")
        for name, component in components.items():
            if not isinstance(component, RewardFunction):
                raise ValueError(f"reward component {name!r} is a {type(component).__name__}, not a RewardFunction")
            if "." in name or name == "total":
                raise ValueError(f"reward component name {name!r} may not contain '.' or be 'total'; rename it")
        if set(weights) != set(components):
            raise ValueError(
                f"reward weights name {sorted(weights)} but the components are {sorted(components)}; give one each"
            )
        for name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"reward weight of {name!r} must be a finite number, got {weight!r}")
        if not any(weights.values()):
            raise ValueError("every reward weight is 0; give at least one component a non-zero weight")
        self.components = dict(components)
        self.weights = {name: float(w) for name, w in weights.items()}
        self.device = torch.device(device)

    def evaluate(self, batch: RewardBatch) -> CompositeResult:
        """Score ``batch`` (a :class:`RewardBatch` of ``B`` edits, see :meth:`RewardBatch.build`) with every
        component (blocking); the breakdown's tensors are ``[B]`` float32 on ``device``.

        Raises:
            ValueError: ``batch`` is not a :class:`RewardBatch`; a component's own error (bad input for it, e.g.
                the rule reward without specs) propagates unchanged.
        """
        if not isinstance(batch, RewardBatch):
            raise ValueError(
                f"CompositeReward.evaluate takes a RewardBatch, got {type(batch).__name__}; build one with "
                "RewardBatch.build(sources, edited, instructions, masks, captions, specs=...)"
            )
        futures = {name: component.submit(batch) for name, component in self.components.items()}
        results = {name: future.result() for name, future in futures.items()}
        return self._combine(results)

    def _combine(self, results: Mapping[str, RewardResult]) -> CompositeResult:
        values: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        for name, result in results.items():
            values[name] = result.score.to(self.device, torch.float32)
            weights[name] = self.weights[name]
            for term, value in result.details.items():
                values[f"{name}.{term}"] = value.to(self.device, torch.float32)
                weights[f"{name}.{term}"] = 0.0
            if result.failed:
                kinds = Counter(reason for reason in result.failures if reason is not None)
                logger.info("reward %s: %d of %d samples NaN (%s)", name, result.failed, len(result.failures), kinds)
        breakdown = RewardBreakdown(components=values, weights=weights).validate()
        return CompositeResult(breakdown, {name: result.failures for name, result in results.items()})

    def close(self) -> None:
        """Close every component."""
        for component in self.components.values():
            component.close()

    def __enter__(self) -> CompositeReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
