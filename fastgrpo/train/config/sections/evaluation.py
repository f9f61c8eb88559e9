"""The ``eval`` section: the gold reward of the held-out evaluation, the best checkpoint, the over-optimisation
alarm, and the report a run writes at its end (the cadence is ``logging.eval_every``, the conditions
``data.held_out``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastgrpo.train.config.checks import check_bool, check_int, check_number

__all__ = ["EvalConfig"]


@dataclass(frozen=True)
class EvalConfig:
    """How held-out evaluations are scored and acted on.

    Attributes:
        rewards: the gold reward, scored on the held-out conditions at every evaluation beside the training reward:
            a mapping of the ``rewards`` section's schema (``{components: {name: {type, weight, ...}}, device}``);
            null scores the training reward only (then the gold reward is the training reward). Choose one the
            training cannot game: another judge, another CLIP, a rule. Logged as ``gold_reward_mean`` and
            ``gold/<component>``; it selects ``lora/best/`` and drives the alarm.
        patience: evaluations in a row in which the gold reward stays below its best while the training reward on
            the same conditions stays above its value at that best, before the over-optimisation alarm fires
            (>= 1).
        alarm_sigmas: what "below" and "above" mean: by more than this many standard errors of the difference of
            the two held-out means (each mean's error from its spread over the held-out conditions), so that
            evaluation noise alone does not fire the alarm (> 0).
        stop_on_overoptimisation: end the run cleanly (checkpoint, final LoRA, report) when the alarm fires;
            false only warns.
        report_conditions: held-out conditions shown in ``report.png`` at the end of a run (source | base |
            trained, with their scores; ``report.md`` has the means of all of them); 0 writes no report.
    """

    rewards: Mapping[str, Any] | None = None
    patience: int = 3
    alarm_sigmas: float = 2.0
    stop_on_overoptimisation: bool = False
    report_conditions: int = 8

    def __post_init__(self) -> None:
        if self.rewards is not None:
            from fastgrpo.train.config.sections.method import RewardsConfig

            if not isinstance(self.rewards, Mapping):
                raise ValueError(
                    "eval.rewards must be null (the training reward) or a mapping like the rewards section, e.g. "
                    f"{{components: {{rules: {{type: rules, weight: 1.0}}}}}}: got {self.rewards!r}"
                )
            unknown = sorted(set(self.rewards) - {"components", "device"})
            if unknown or "components" not in self.rewards:
                raise ValueError(
                    f"eval.rewards takes the keys components (required) and device, like the rewards section: "
                    f"got {sorted(self.rewards)}"
                )
            try:
                RewardsConfig(**dict(self.rewards))
            except ValueError as error:
                raise ValueError(f"eval.{error}") from None
            object.__setattr__(self, "rewards", copy.deepcopy(dict(self.rewards)))
        check_int("eval.patience", self.patience, 1, "evaluations in a row before the alarm")
        check_number("eval.alarm_sigmas", self.alarm_sigmas, low=0.0, low_open=True, hint="e.g. 2")
        check_bool("eval.stop_on_overoptimisation", self.stop_on_overoptimisation)
        check_int("eval.report_conditions", self.report_conditions, 0, "0 writes no report")

    @property
    def gold(self) -> Any:
        """The gold reward as a :class:`~fastgrpo.train.config.sections.method.RewardsConfig`, or None."""
        if self.rewards is None:
            return None
        from fastgrpo.train.config.sections.method import RewardsConfig

        return RewardsConfig(**dict(self.rewards))
