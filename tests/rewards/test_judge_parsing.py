"""Reading judge answers, the retry-after header and the circuit breaker, without a server."""

from __future__ import annotations

import email.utils
import math
import random

import pytest

from fastgrpo.rewards.http_client import CircuitBreaker, HttpPolicy, parse_retry_after
from fastgrpo.rewards.judge_prompt import build_messages, read_answer, read_json_scores, read_logprob_scores


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"instruction_following": 80, "edit_quality": 70, "preservation": 90}', (0.8, 0.7, 0.9)),
        (
            '<think>maybe {"instruction_following": 1}</think>{"instruction_following": 80, "edit_quality": 70, '
            '"preservation": 90}',
            (0.8, 0.7, 0.9),
        ),
        (
            '{"note": "ok"} then {"Instruction Following": "80/100", "edit-quality": 70.5, "preservation": "90"}',
            (0.8, 0.705, 0.9),
        ),
        ("instruction_following: 80\nedit_quality = 70\n'preservation': 90", (0.8, 0.7, 0.9)),
        ("{'instruction_following': 0, 'edit_quality': 100, 'preservation': 55}", (0.0, 1.0, 0.55)),
    ],
    ids=["plain", "think-block", "second-object-aliases", "key-value", "python-dict"],
)
def test_tolerant_json_reading(text, expected) -> None:
    verdict = read_json_scores(text)
    assert verdict.reason is None and verdict.scores == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no JSON object"),
        ('{"instruction_following": 80, "edit_quality": 70}', "lacks preservation"),
        ('{"instruction_following": -1, "edit_quality": 70, "preservation": 1}', "outside 0-100"),
        ('{"instruction_following": true, "edit_quality": 70, "preservation": 1}', "not a number"),
        ('{"instruction_following": NaN, "edit_quality": 70, "preservation": 1}', "not a finite number"),
        ('{"instruction_following": null, "edit_quality": 70, "preservation": 1}', "not a number"),
    ],
)
def test_json_reading_rejects(text, reason) -> None:
    verdict = read_json_scores(text)
    assert verdict.scores is None and reason in verdict.reason
    assert math.isnan(verdict.combined((1, 1, 1)))


def test_logprob_positions_skip_separators_and_merge_spaced_tokens() -> None:
    def position(token: str, **alternatives: float) -> dict:
        top = [{"token": t.replace("_", " "), "logprob": math.log(p)} for t, p in alternatives.items()]
        return {"token": token, "logprob": max(e["logprob"] for e in top), "top_logprobs": top}

    content = [
        position("8", **{"8": 0.6, "_8": 0.2, "7": 0.2}),
        {"token": ",", "logprob": 0.0, "top_logprobs": []},
        position(" 5", **{"_5": 1.0}),
        {"token": " ", "logprob": 0.0, "top_logprobs": []},
        position("0", **{"0": 0.9, "1": 0.1}),
    ]
    verdict = read_logprob_scores({"content": content}, min_mass=0.5)
    assert verdict.scores == pytest.approx(((8 * 0.8 + 7 * 0.2) / 9, 5 / 9, 0.1 / 9))


def test_response_shapes() -> None:
    assert "no choices" in read_answer({}, "json", 0.5).reason
    assert "not an object" in read_answer("text", "json", 0.5).reason
    assert "no text content" in read_answer({"choices": [{"message": {"content": None}}]}, "json", 0.5).reason


def test_prompt_puts_instruction_and_both_images_in_order() -> None:
    system, user = build_messages('make the "red" square blue', "data:s", "data:e", "json")
    assert system["role"] == "system" and user["role"] == "user"
    kinds = [p["type"] for p in user["content"]]
    assert kinds == ["text", "text", "image_url", "text", "image_url", "text"]
    assert user["content"][0]["text"] == 'Editing instruction: "make the \\"red\\" square blue"'
    assert [user["content"][2]["image_url"]["url"], user["content"][4]["image_url"]["url"]] == ["data:s", "data:e"]
    assert "0 to 100" in user["content"][5]["text"]
    assert "single digit from 0" in build_messages("x", "s", "e", "logprobs")[1]["content"][5]["text"]


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(10.0, usegmt=True), now=1_000_000.0) == 0.0


def test_circuit_breaker_states() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=3, cooldown_s=10.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half-open"
    assert breaker.allow() and not breaker.allow()  # a single probe
    breaker.record_failure()  # the probe failed: open for another cool-down
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 20.5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_backoff_is_bounded_full_jitter() -> None:
    policy = HttpPolicy(backoff_base_s=0.5, backoff_max_s=4.0)
    rng = random.Random(0)
    waits = [policy.backoff(retry, rng) for retry in range(10) for _ in range(50)]
    assert min(waits) >= 0.0 and max(waits) <= 4.0
    assert max(policy.backoff(0, rng) for _ in range(200)) <= 0.5


@pytest.mark.parametrize(
    ("field", "value"), [("timeout_s", 0), ("max_retries", -1), ("breaker_failures", 0), ("backoff_base_s", -1)]
)
def test_policy_rejects_bad_values(field, value) -> None:
    with pytest.raises(ValueError, match=f"HttpPolicy.{field}"):
        HttpPolicy(**{field: value})
