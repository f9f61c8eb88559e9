"""The evaluation record: the best evaluation by the gold reward, and the noise-aware over-optimisation alarm."""

from __future__ import annotations

from fastgrpo.train.config.sections import EvalConfig
from fastgrpo.train.selection import EvaluationRecord


def ev(gold: float, train: float, se: float = 0.01) -> dict:
    return {"gold_reward_mean": gold, "gold_reward_se": se, "eval_reward_mean": train, "eval_reward_se": se,
            "gold/rules": gold}  # fmt: skip


def test_the_best_is_the_highest_gold_reward_and_keeps_its_figures():
    record = EvaluationRecord(EvalConfig())
    assert record.observe(0, ev(0.5, 0.5)).best
    assert not record.observe(10, ev(0.45, 0.6)).best
    assert record.observe(20, ev(0.55, 0.4)).best
    assert record.best == {"step": 20, **ev(0.55, 0.4)}


def test_the_alarm_fires_once_after_patience_strikes_of_gold_down_and_training_up():
    record = EvaluationRecord(EvalConfig(patience=3, alarm_sigmas=2.0))
    record.observe(0, ev(0.6, 0.5))
    verdicts = [record.observe(step, ev(0.5, 0.7)) for step in (10, 20, 30, 40)]  # 0.1 down, 0.2 up: >> 2 SE
    assert [v.alarm for v in verdicts] == [False, False, True, False] and record.fired_at == 30
    assert "iteration 30" in record.alarm_message(30, ev(0.5, 0.7)) and "iteration 0" in record.alarm_message(
        30, ev(0.5, 0.7)
    )


def test_noise_does_not_strike_and_a_break_resets_the_count():
    noisy = EvaluationRecord(EvalConfig(patience=2, alarm_sigmas=2.0))
    noisy.observe(0, ev(0.6, 0.5, se=0.05))
    for step in (10, 20, 30):  # 0.05 down and 0.05 up: within 2 standard errors of the difference (0.14)
        assert not noisy.observe(step, ev(0.55, 0.55, se=0.05)).alarm
    assert noisy.strikes == 0
    record = EvaluationRecord(EvalConfig(patience=2))
    record.observe(0, ev(0.6, 0.5))
    record.observe(10, ev(0.5, 0.7))
    record.observe(20, ev(0.5, 0.5))  # the training reward did not rise: no strike, the count restarts
    assert record.strikes == 0 and not record.observe(30, ev(0.5, 0.7)).alarm
    assert record.observe(40, ev(0.5, 0.7)).alarm


def test_without_a_gold_reward_the_alarm_cannot_fire_and_the_record_round_trips():
    record = EvaluationRecord(EvalConfig(patience=1))
    for step, value in enumerate((0.5, 0.4, 0.3, 0.2)):  # gold == training: never one down and the other up
        assert not record.observe(step, ev(value, value)).alarm
    fresh = EvaluationRecord(EvalConfig(patience=1))
    fresh.load_state_dict(record.state_dict())
    assert fresh.best == record.best and fresh.strikes == record.strikes and fresh.fired_at is None
    assert not record.observe(9, ev(float("nan"), 0.9)).best  # a failed gold evaluation changes nothing
