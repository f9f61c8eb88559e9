"""What the held-out evaluations decide: the best checkpoint by the gold reward, and the over-optimisation alarm.

After every evaluation (:meth:`EvaluationRecord.observe`):

- **best**: the evaluation with the highest gold reward so far (``gold_reward_mean``; the training reward when no
  gold reward is configured). The trainer writes its LoRA to ``lora/best/`` with ``best.json`` beside it.
- **alarm** (reward hacking): after the best evaluation, an evaluation *strikes* when the gold reward is below the
  best by more than ``eval.alarm_sigmas`` standard errors of the difference of the two means **and** the training
  reward on the same held-out conditions is above its value at the best by more than as many standard errors
  (each mean's error is its spread over the held-out conditions, ``*_reward_se``). ``eval.patience`` strikes in a
  row fire the alarm, once: a warning naming the best step, and with ``eval.stop_on_overoptimisation`` the end of
  the run. A new best, or an evaluation that does not strike, resets the count. Without a gold reward the two
  rewards are the same and the alarm cannot fire.

The record is a checkpointed component (``state_dict`` / ``load_state_dict``), so a resumed run keeps its best and
its count of strikes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastgrpo.train.config.sections import EvalConfig

__all__ = ["EvaluationRecord", "Verdict"]

_KEPT = ("gold_reward_mean", "gold_reward_se", "eval_reward_mean", "eval_reward_se")


@dataclass(frozen=True)
class Verdict:
    """What one evaluation decided: ``best`` (a new best: write ``lora/best``), ``alarm`` (the alarm fired now)."""

    best: bool
    alarm: bool


def _noise(a: float, b: float) -> float:
    """The standard error of the difference of two independent means with errors ``a`` and ``b`` (0 when unknown)."""
    known = [x for x in (a, b) if isinstance(x, int | float) and math.isfinite(x)]
    return math.sqrt(sum(x * x for x in known))


class EvaluationRecord:
    """The best evaluation so far and the over-optimisation alarm (see the module docstring).

    Args:
        cfg: the ``eval`` section (``patience``, ``alarm_sigmas``).
    """

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        #: the best evaluation: ``step`` and the figures of ``_KEPT`` and every ``gold/<component>``; None before any
        self.best: dict[str, Any] | None = None
        self.strikes = 0
        self.fired_at: int | None = None

    def observe(self, step: int, ev: Mapping[str, Any]) -> Verdict:
        """Take the evaluation ``ev`` (the keys of :func:`~fastgrpo.train.evaluate.evaluate_conditions`) of
        iteration ``step``; returns what it decided."""
        gold = ev.get("gold_reward_mean", math.nan)
        if not math.isfinite(gold):  # every gold score failed: nothing to compare
            return Verdict(best=False, alarm=False)
        if self.best is None or gold > self.best["gold_reward_mean"]:
            self.best = {"step": step, **{k: ev.get(k) for k in _KEPT}}
            self.best.update({k: v for k, v in ev.items() if k.startswith("gold/")})
            self.strikes = 0
            return Verdict(best=True, alarm=False)
        sigmas, best = self.cfg.alarm_sigmas, self.best
        fell = best["gold_reward_mean"] - gold > sigmas * _noise(best["gold_reward_se"], ev.get("gold_reward_se"))
        train, best_train = ev.get("eval_reward_mean", math.nan), best["eval_reward_mean"]
        rose = train - best_train > sigmas * _noise(best["eval_reward_se"], ev.get("eval_reward_se"))
        self.strikes = self.strikes + 1 if fell and rose else 0
        if self.strikes >= self.cfg.patience and self.fired_at is None:
            self.fired_at = step
            return Verdict(best=False, alarm=True)
        return Verdict(best=False, alarm=False)

    def alarm_message(self, step: int, ev: Mapping[str, Any]) -> str:
        """The warning of an alarm fired at ``step``."""
        best = self.best or {}
        return (
            f"over-optimisation: at iteration {step} the gold reward ({ev['gold_reward_mean']:.4f}) has stayed below "
            f"its best ({best.get('gold_reward_mean', math.nan):.4f}, iteration {best.get('step')}) for "
            f"{self.strikes} evaluations while the training reward rose ({best.get('eval_reward_mean', math.nan):.4f}"
            f" -> {ev['eval_reward_mean']:.4f}): the policy is learning to please the training reward, not the gold "
            f"one. lora/best holds iteration {best.get('step')}; eval.stop_on_overoptimisation=true ends runs here"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "strikes": self.strikes, "fired_at": self.fired_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = dict(state["best"]) if state.get("best") is not None else None
        self.strikes = int(state["strikes"])
        self.fired_at = state.get("fired_at")
