"""Weighted composition, NaN handling, building from config and asynchronous evaluation."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch
from chat_server import Reply, scores

from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.rewards import (
    AsyncRewardEvaluator,
    CompositeReward,
    RewardBatch,
    RewardFunction,
    RewardResult,
    RewardTally,
    RuleReward,
    build_reward,
)

EDITS = [SyntheticEditTask(size=24, seed=1).sample(i) for i in range(4)]


class Fixed(RewardFunction):
    """Scores from a list (NaN allowed), optionally slowly, counting its calls."""

    def __init__(self, values, delay_s: float = 0.0) -> None:
        self.values, self.delay_s, self.calls = values, delay_s, 0
        self.closed = False

    def evaluate(self, batch: RewardBatch) -> RewardResult:
        self.calls += 1
        time.sleep(self.delay_s)
        score = torch.tensor(self.values[: batch.size], dtype=torch.float32)
        failures = tuple("scripted failure" if math.isnan(v) else None for v in score.tolist())
        return RewardResult(score=score, details={"half": score / 2}, failures=failures)

    def close(self) -> None:
        self.closed = True


def batch(size: int = 3) -> RewardBatch:
    edits = EDITS[:size]
    return RewardBatch.build(
        [e.source for e in edits],
        [e.target for e in edits],
        [e.instruction for e in edits],
        specs=[e.spec for e in edits],
    )


def test_weighted_sum_reports_every_component_and_propagates_nan() -> None:
    reward = CompositeReward({"a": Fixed([1.0, 2.0, math.nan]), "b": Fixed([0.5, math.nan, 1.0])}, {"a": 1.0, "b": 2.0})
    result = reward.evaluate(batch())
    total = result.total()
    assert total[0] == pytest.approx(2.0) and math.isnan(total[1]) and math.isnan(total[2])
    assert set(result.breakdown.components) == {"a", "b", "a.half", "b.half"}
    assert result.breakdown.weights["a.half"] == 0.0
    tally = RewardTally()
    tally.add(result, 3)
    assert tally.means()["a"] == pytest.approx(1.5) and tally.failed()["a"] == 1
    assert tally.failed()["total"] == 2
    assert {name: tally.failed()[name] for name in ("a", "b")} == {"a": 1, "b": 1}
    assert {name: sum(r is not None for r in reasons) for name, reasons in result.failures.items()} == {"a": 1, "b": 1}
    assert result.failures["b"][1] == "scripted failure"


def test_zero_weight_component_is_logged_but_cannot_poison_the_total() -> None:
    reward = CompositeReward({"a": Fixed([1.0, 2.0]), "log_only": Fixed([math.nan, 5.0])}, {"a": 1.0, "log_only": 0})
    result = reward.evaluate(batch(2))
    assert result.total().tolist() == [1.0, 2.0]
    assert math.isnan(result.breakdown.components["log_only"][0])


@pytest.mark.parametrize(
    ("components", "weights", "match"),
    [
        ({}, {}, "at least one component"),
        ({"a": Fixed([1.0])}, {"b": 1.0}, "give one each"),
        ({"a": Fixed([1.0])}, {"a": 0.0}, "every reward weight is 0"),
        ({"a.b": Fixed([1.0])}, {"a.b": 1.0}, "may not contain"),
        ({"a": Fixed([1.0])}, {"a": math.inf}, "finite"),
        ({"a": object()}, {"a": 1.0}, "not a RewardFunction"),
    ],
)
def test_composite_rejects_bad_setups(components, weights, match) -> None:
    with pytest.raises(ValueError, match=match):
        CompositeReward(components, weights)


def test_build_reward_from_config_with_judge_and_rules(chat_server) -> None:
    chat_server.on(EDITS[1].instruction, Reply(status=400, body={"error": {"message": "no"}}))
    chat_server.default = scores(100, 50, 0)
    config = {
        "components": {
            "judge": {
                "type": "mllm_judge",
                "weight": 1.0,
                "endpoints": [{"base_url": chat_server.url, "model": "m", "trust_env": False}],
                "http": {"max_retries": 0},
            },
            "rules": {"type": "rules", "weight": 0.5, "keep_weight": 0.5, "edit_weight": 0.5},
        }
    }
    with build_reward(config) as reward:
        result = reward.evaluate(batch())
    assert isinstance(reward.components["rules"], RuleReward)
    total = result.total()
    assert total[0] == pytest.approx(0.5 + 0.5 * 1.0) and math.isnan(total[1])
    assert "judge.preservation" in result.breakdown.components
    tally = RewardTally()
    tally.add(result, 3)
    assert {name: tally.failed()[name] for name in ("judge", "rules")} == {"judge": 1, "rules": 0}
    assert result.failures["judge"][1] is not None and set(result.failures["rules"]) == {None}


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"components": {"x": {"type": "telepathy"}}}, "unknown; use one of"),
        ({"components": {"x": {"weight": 1}}}, "must be a mapping with a 'type'"),
        ({"components": {"x": {"type": "rules", "colour_tolerence": 3}}}, "unknown keys"),
        ({"components": {"x": {"type": "rules", "weight": "heavy"}}}, "finite number"),
        ({"components": {}, "devcie": "cpu"}, "unknown keys"),
        ({"rules": {"type": "rules"}}, "with 'components'"),
    ],
)
def test_bad_reward_configs_name_the_problem(config, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_reward(config)


def test_async_evaluation_overlaps_with_the_callers_work() -> None:
    started: list[float] = []

    class Slow(Fixed):
        def evaluate(self, batch):
            started.append(time.monotonic())
            return super().evaluate(batch)

    slow = Slow([0.25, 0.5, 0.75], delay_s=0.4)
    with AsyncRewardEvaluator(CompositeReward({"slow": slow}, {"slow": 1.0}), max_pending=2) as evaluator:
        edits = EDITS[:3]
        future = evaluator.submit(
            RewardBatch.build([e.source for e in edits], [e.target for e in edits], [e.instruction for e in edits])
        )
        assert not future.done()  # submit returned while the batch is being scored
        time.sleep(0.2)  # "the next rollout"
        work_done = time.monotonic()
        assert not future.done()
        result = future.result(timeout=10)
    assert started[0] < work_done  # scoring ran during the caller's work, not after it
    assert result.total().tolist() == [0.25, 0.5, 0.75]
    assert slow.closed


def test_async_backpressure_order_and_errors() -> None:
    gate = threading.Event()

    class Gated(Fixed):
        def evaluate(self, batch):
            gate.wait(5)
            return super().evaluate(batch)

    evaluator = AsyncRewardEvaluator(Gated([1.0, 2.0, 3.0]), max_pending=1, close_reward=False)
    first = evaluator.submit(batch())
    with pytest.raises(TimeoutError, match="still pending"):
        evaluator.submit(batch(), block_timeout_s=0.05)
    gate.set()
    assert first.result(timeout=5).score.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="instructions has 1 entries"):  # checked on the caller's thread
        evaluator.submit(RewardBatch.build([EDITS[0].source] * 2, [EDITS[0].target] * 2, ["x"]))
    with pytest.raises(ValueError, match="takes a RewardBatch"):
        evaluator.submit([EDITS[0].source])  # the inputs, not a batch
    evaluator.close()
    with pytest.raises(RuntimeError, match="closed"):
        evaluator.submit(batch())


def test_async_errors_arrive_through_the_future() -> None:
    with AsyncRewardEvaluator(RuleReward()) as evaluator:
        future = evaluator.submit(RewardBatch.build([EDITS[0].source], [EDITS[0].target], ["x"]))  # no specs
        with pytest.raises(ValueError, match="specs"):
            future.result(timeout=5)


def test_reward_batch_validation() -> None:
    source, target = EDITS[0].source, EDITS[0].target
    with pytest.raises(ValueError, match="edited is empty"):
        RewardBatch.build([], [], [])
    with pytest.raises(ValueError, match=r"edited\[0\] must be"):
        RewardBatch.build([source], [target[..., :2]], ["x"])
    with pytest.raises(ValueError, match="tensor \\[B, 3, H, W\\]"):
        RewardBatch.build([source], torch.zeros(1, 4, 8, 8), ["x"])
    with pytest.raises(ValueError, match="masks has 2 entries"):
        RewardBatch.build([source], [target], ["x"], masks=[None, None])
    with pytest.raises(ValueError, match=r"captions\[0\]"):
        RewardBatch.build([source], [target], ["x"], captions=["just one caption"])
    with pytest.raises(ValueError, match="instructions must be a list"):
        RewardBatch.build([source], [target], "x")
    with pytest.raises(TypeError):  # specs is keyword-only
        RewardBatch.build([source], [target], ["x"], None, None, [EDITS[0].spec])
    with pytest.raises(ValueError, match="takes a RewardBatch"):
        CompositeReward({"a": Fixed([1.0])}, {"a": 1.0}).evaluate([source])
