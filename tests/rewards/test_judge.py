"""The MLLM judge against a real HTTP server on 127.0.0.1 that speaks chat completions with scripted answers."""

from __future__ import annotations

import base64
import io
import logging
import math
import time

import numpy as np
import pytest
import torch
from chat_server import Reply, ScriptedChatServer, closed_port, completion, logprob_reply, scores
from PIL import Image

from fastgrpo.rewards import JudgeConfig, JudgeEndpoint, MLLMJudge, RewardBatch

SECRET = "sk-test-0123456789abcdef-SECRET"


def batch(*instructions: str, size: int = 16) -> RewardBatch:
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    edited = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in instructions]
    return RewardBatch.build([source] * len(instructions), edited, list(instructions))


def test_valid_answer_scores_weighted_mean_in_unit_range(chat_server, make_judge) -> None:
    chat_server.on("make it red", scores(80, 70, 90))
    chat_server.on("make it blue", scores(20, 40, 60))
    judge = make_judge(chat_server.url, weights=(2.0, 1.0, 1.0))
    result = judge.evaluate(batch("make it red", "make it blue"))
    expected = [(2 * 0.8 + 0.7 + 0.9) / 4, (2 * 0.2 + 0.4 + 0.6) / 4]
    assert result.score.dtype == torch.float32 and result.score.shape == (2,)
    assert result.score.tolist() == pytest.approx(expected)
    assert result.details["instruction_following"].tolist() == pytest.approx([0.8, 0.2])
    assert result.details["preservation"].tolist() == pytest.approx([0.9, 0.6])
    assert result.failures == (None, None)
    stats = judge.stats()
    assert (stats.samples, stats.scored, stats.failed, stats.attempts) == (2, 2, 0, 2)


def test_request_carries_model_schema_and_both_images(chat_server, make_judge) -> None:
    make_judge(chat_server.url).evaluate(batch("make it red", size=20))
    (request,) = chat_server.requests
    assert request["path"] == "/v1/chat/completions"
    body = request["body"]
    assert body["model"] == "judge-vl" and body["temperature"] == 0.0
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["instruction_following", "edit_quality", "preservation"]
    urls = [p["image_url"]["url"] for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    assert len(urls) == 2
    for url in urls:
        assert url.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert image.size == (20, 20) and image.mode == "RGB"
    assert "authorization" not in {k.lower() for k in request["headers"]}


def test_large_images_are_downscaled_and_jpeg_is_offered(chat_server, make_judge) -> None:
    judge = make_judge(chat_server.url, max_image_side=32, image_format="jpeg")
    judge.evaluate(batch("make it red", size=100))
    parts = chat_server.requests[0]["body"]["messages"][1]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (32, 32)


def test_without_json_schema_the_answer_is_read_tolerantly(chat_server, make_judge) -> None:
    fenced = 'Here you go:\n```json\n{"instruction_following": "85", "edit_quality": 72.5, "preservation": 90}\n```'
    chat_server.on("fenced", Reply(body=completion(fenced)))
    parts = [
        {"type": "text", "text": '{"instruction_following": 10, '},
        {"type": "text", "text": '"edit_quality": 20,'},
    ]
    parts.append({"type": "text", "text": ' "preservation": 30}'})
    chat_server.on("parts", Reply(body=completion(parts)))
    result = make_judge(chat_server.url, json_schema=False).evaluate(batch("fenced", "parts"))
    assert result.score.tolist() == pytest.approx([(0.85 + 0.725 + 0.9) / 3, 0.2])
    assert all("response_format" not in r["body"] for r in chat_server.requests)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(body=completion("The edit looks good to me.")), "no JSON object with scores"),
        (Reply(body=completion('{"instruction_following": 80, "edit_quality": 70}')), "lacks preservation"),
        (Reply(body=completion('{"instruction_following": 150, "edit_quality": 70, "preservation": 1}')), "0-100"),
        (Reply(body=completion('{"instruction_following": "high", "edit_quality": 7, "preservation": 1}')), "number"),
        (Reply(body={"object": "chat.completion", "choices": []}), "no choices"),
        (Reply(body={"error": {"message": "model overloaded"}}), "model overloaded"),
        (Reply(body=completion('{"instruction_following": 80, "edit_qu', finish="length")), "cut off"),
        (Reply(body=completion(None, refusal="I cannot judge this image")), "refused"),
        (Reply(body=completion("", finish="content_filter")), "content filter"),
        (Reply(body=b"<html><body><h1>Welcome to nginx</h1></body></html>"), "not JSON"),
        (Reply(body=b'{"choices": [{"message": {"content": "{\\"instr'), "not JSON"),
        (Reply(body=[1, 2, 3]), "not an object"),
    ],
    ids=[
        "prose",
        "partial",
        "out-of-range",
        "not-a-number",
        "empty-choices",
        "error-object",
        "finish-length",
        "refusal",
        "content-filter",
        "html-200",
        "truncated-json-200",
        "json-array",
    ],
)
def test_unreadable_answers_are_nan_with_reason_never_a_guess(chat_server, make_judge, caplog, reply, reason) -> None:
    chat_server.on("bad", reply)
    judge = make_judge(chat_server.url)
    with caplog.at_level(logging.WARNING, logger="fastgrpo.rewards.judge"):
        result = judge.evaluate(batch("bad", "fine"))
    assert math.isnan(result.score[0]) and math.isnan(result.details["edit_quality"][0])
    assert result.score[1] == pytest.approx(0.8)
    assert reason in result.failures[0] and result.failures[1] is None
    assert chat_server.attempts("bad") == 1  # an unreadable answer is not retried at temperature 0
    assert judge.stats().failed == 1 and sum(judge.stats().reasons.values()) == 1
    assert "1 of 2 samples not scored" in caplog.text


def test_429_with_retry_after_is_honoured(chat_server, make_judge) -> None:
    busy = Reply(status=429, body={"error": {"message": "rate limited"}}, headers={"Retry-After": "1"})
    chat_server.on("busy", busy, scores(50, 50, 50))
    start = time.monotonic()
    result = make_judge(chat_server.url).evaluate(batch("busy"))
    assert result.score.tolist() == pytest.approx([0.5])
    assert time.monotonic() - start >= 0.95  # waited as asked, not the 10 ms backoff
    assert chat_server.attempts("busy") == 2


def test_retry_after_beyond_the_limit_fails_at_once(chat_server, make_judge) -> None:
    chat_server.on("later", Reply(status=503, body=b"", headers={"Retry-After": "3600"}))
    start = time.monotonic()
    result = make_judge(chat_server.url).evaluate(batch("later"))
    assert math.isnan(result.score[0]) and "retry after 3600 s" in result.failures[0]
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    "failure",
    [
        Reply(status=500, body={"error": {"message": "internal"}}),
        Reply(status=502, body=b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"),
        Reply(drop=True),
        Reply(body=completion('{"instruction_following": 1, "edit_quality": 2, "preservation": 3}'), cut_body=True),
    ],
    ids=["500", "502-html", "connection-dropped", "body-cut-short"],
)
def test_transient_failures_are_retried(chat_server, make_judge, failure) -> None:
    chat_server.on("flaky", failure, failure, scores(60, 60, 60))
    result = make_judge(chat_server.url).evaluate(batch("flaky"))
    assert result.score.tolist() == pytest.approx([0.6])
    assert chat_server.attempts("flaky") == 3


def test_persistent_5xx_gives_nan_after_bounded_retries(chat_server, make_judge) -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
    chat_server.on("down", Reply(status=502, body=page))
    result = make_judge(chat_server.url).evaluate(batch("down"))
    assert math.isnan(result.score[0])
    assert result.failures[0].startswith("HTTP 502: 502 Bad Gateway nginx") and "after 3 attempts" in result.failures[0]
    assert chat_server.attempts("down") == 3


def test_slow_server_times_out_within_bounded_time(chat_server, make_judge) -> None:
    chat_server.on("slow", Reply(body=completion("{}"), delay_s=1.5))
    start = time.monotonic()
    result = make_judge(chat_server.url, http={"timeout_s": 0.2, "max_retries": 1}).evaluate(batch("slow"))
    assert math.isnan(result.score[0]) and result.failures[0].startswith("timeout")
    assert time.monotonic() - start < 1.2  # two attempts of 0.2 s, never the server's 1.5 s


def test_server_trickling_its_answer_is_cut_off_by_the_attempt_timeout(chat_server, make_judge) -> None:
    chat_server.on("trickle", Reply(body=scores(1, 2, 3).body, trickle_s=0.05))  # ~100 bytes: ~5 s in all
    start = time.monotonic()
    result = make_judge(chat_server.url, http={"timeout_s": 0.4, "max_retries": 0}).evaluate(batch("trickle"))
    assert math.isnan(result.score[0]) and "not complete within 0.4 s" in result.failures[0]
    assert time.monotonic() - start < 1.5


def test_batch_deadline_bounds_everything(chat_server, make_judge) -> None:
    chat_server.on("slow", Reply(body=completion("{}"), delay_s=1.5))
    judge = make_judge(chat_server.url, http={"timeout_s": 5.0, "deadline_s": 0.3, "max_retries": 5})
    start = time.monotonic()
    result = judge.evaluate(batch("slow", "slow"))
    assert torch.isnan(result.score).all()
    assert time.monotonic() - start < 1.0


def test_connection_refused_is_nan_quickly(make_judge) -> None:
    judge = make_judge(f"http://127.0.0.1:{closed_port()}/v1")
    start = time.monotonic()
    result = judge.evaluate(batch("anything"))
    assert math.isnan(result.score[0]) and result.failures[0].startswith("connection error (ConnectError")
    assert time.monotonic() - start < 2.0


def test_circuit_opens_fails_fast_then_recovers_after_cooldown(chat_server, make_judge) -> None:
    error = Reply(status=500, body={"error": {"message": "down"}})
    chat_server.on("x", error, error, scores(70, 70, 70))
    judge = make_judge(chat_server.url, http={"max_retries": 0, "breaker_failures": 2}, endpoint={"max_concurrency": 1})
    first = judge.evaluate(batch("x", "x", "x", "x"))
    assert torch.isnan(first.score).all()
    assert [r.split(":")[0] for r in first.failures] == ["HTTP 500", "HTTP 500", "circuit open", "circuit open"]
    assert chat_server.attempts("x") == 2  # no request while the circuit is open
    time.sleep(0.35)  # cool-down 0.3 s: the next call is the half-open probe
    second = judge.evaluate(batch("x", "x"))
    assert second.score.tolist() == pytest.approx([0.7, 0.7])
    assert chat_server.attempts("x") == 4
    assert judge.stats().reasons["circuit open"] == 2


def test_concurrency_limit_is_respected_and_submit_does_not_block(chat_server, make_judge) -> None:
    chat_server.on("slow", Reply(body=scores(40, 40, 40).body, delay_s=0.15))
    judge = make_judge(chat_server.url, endpoint={"max_concurrency": 2})
    start = time.monotonic()
    future = judge.submit(batch(*["slow"] * 6))
    assert time.monotonic() - start < 0.3 and not future.done()
    busy_work = sum(i * i for i in range(10_000))  # the caller goes on with other work meanwhile
    result = future.result(timeout=5)
    assert busy_work > 0 and result.score.tolist() == pytest.approx([0.4] * 6)
    assert chat_server.max_in_flight == 2
    assert time.monotonic() - start >= 0.44  # three rounds of two requests


def test_closing_the_judge_resolves_pending_batches(chat_server, make_judge) -> None:
    chat_server.on("slow", Reply(body=scores(40, 40, 40).body, delay_s=0.3))
    judge = make_judge(chat_server.url, endpoint={"max_concurrency": 1})
    future = judge.submit(batch("slow", "slow", "slow"))
    time.sleep(0.05)  # the first request is in flight
    judge.close()
    result = future.result(timeout=5)
    assert torch.isnan(result.score[1:]).all() and result.failures[2].startswith("cancelled")
    assert result.failures[0] is None or "closed" in result.failures[0]


def test_api_key_is_sent_but_never_logged_or_shown(chat_server, make_judge, caplog, monkeypatch) -> None:
    monkeypatch.setenv("FASTGRPO_TEST_JUDGE_KEY", SECRET)
    echo = {"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "invalid_request_error"}}
    chat_server.on("denied", Reply(status=401, body=echo))
    judge = make_judge(chat_server.url, endpoint={"api_key_env": "FASTGRPO_TEST_JUDGE_KEY"})
    with caplog.at_level(logging.DEBUG):
        result = judge.evaluate(batch("denied", "fine"))
    assert chat_server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert math.isnan(result.score[0]) and result.score[1] == pytest.approx(0.8)
    assert "HTTP 401" in result.failures[0] and "api_key_env" in result.failures[0] and "***" in result.failures[0]
    assert chat_server.attempts("denied") == 1  # not retried
    shown = caplog.text + repr(judge._clients) + repr(judge.config) + str(result.failures) + repr(judge.stats())
    assert SECRET not in shown


def test_missing_api_key_variable_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("FASTGRPO_TEST_MISSING_KEY", raising=False)
    endpoint = JudgeEndpoint("http://127.0.0.1:9/v1", "m", api_key_env="FASTGRPO_TEST_MISSING_KEY")
    with pytest.raises(ValueError, match="FASTGRPO_TEST_MISSING_KEY"):
        MLLMJudge(JudgeConfig(endpoints=(endpoint,)))


def test_logprob_mode_scores_expected_digits(chat_server, make_judge) -> None:
    chat_server.on(
        "lp",
        logprob_reply({"7": 0.5, "8": 0.5}, {" 9": 0.7, "9": 0.3}, {"3": 0.6, "4": 0.2, "x": 0.2}),
    )
    result = make_judge(chat_server.url, mode="logprobs").evaluate(batch("lp"))
    expected = [7.5 / 9, 1.0, (3 * 0.6 + 4 * 0.2) / 0.8 / 9]
    assert result.details["instruction_following"].tolist() == pytest.approx([expected[0]], abs=1e-6)
    assert result.details["edit_quality"].tolist() == pytest.approx([expected[1]], abs=1e-6)
    assert result.details["preservation"].tolist() == pytest.approx([expected[2]], abs=1e-6)
    assert result.score.tolist() == pytest.approx([sum(expected) / 3], abs=1e-6)
    body = chat_server.requests[0]["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and "response_format" not in body


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (logprob_reply({"7": 0.2, "yes": 0.8}, {"9": 1.0}, {"9": 1.0}), "probability on digit tokens"),
        (logprob_reply({"7": 1.0}, {"9": 1.0}), "2 score positions, 3 needed"),
        (Reply(body=completion("7 8 9")), "no logprobs"),
    ],
    ids=["low-mass", "too-few-digits", "logprobs-missing"],
)
def test_logprob_mode_failures_are_nan(chat_server, make_judge, reply, reason) -> None:
    chat_server.on("lp", reply)
    result = make_judge(chat_server.url, mode="logprobs").evaluate(batch("lp"))
    assert math.isnan(result.score[0]) and reason in result.failures[0]


def test_several_judges_are_averaged_and_combine_policy_applies(make_judge) -> None:
    with ScriptedChatServer(default=scores(80, 80, 80)) as a, ScriptedChatServer(default=scores(40, 40, 40)) as b:
        b.on("b fails", Reply(status=400, body={"error": {"message": "bad request"}}))
        strict = make_judge([a.url, b.url]).evaluate(batch("ok", "b fails"))
        lenient = make_judge([a.url, b.url], combine="available").evaluate(batch("ok", "b fails"))
    assert strict.score[0] == pytest.approx(0.6) and math.isnan(strict.score[1])
    assert strict.failures[1].startswith("judge1: HTTP 400")
    assert lenient.score.tolist() == pytest.approx([0.6, 0.8])


def test_non_finite_images_are_nan_without_a_request(chat_server, make_judge) -> None:
    edited = torch.rand(2, 3, 8, 8)
    edited[1, 0, 0, 0] = math.nan
    result = make_judge(chat_server.url).evaluate(RewardBatch.build(torch.rand(2, 3, 8, 8), edited, ["a", "b"]))
    assert result.score[0] == pytest.approx(0.8) and math.isnan(result.score[1])
    assert "non-finite" in result.failures[1] and len(chat_server.requests) == 1


def test_shared_source_is_encoded_once(chat_server, make_judge, monkeypatch) -> None:
    import fastgrpo.rewards.judge as judge_module

    calls = []
    real = judge_module.encode_data_url
    monkeypatch.setattr(judge_module, "encode_data_url", lambda *a: calls.append(1) or real(*a))
    make_judge(chat_server.url).evaluate(batch("a", "b", "c", "d"))
    assert len(calls) == 1 + 4  # one source for the whole group, four edits


def test_config_from_mapping_and_bad_values() -> None:
    config = JudgeConfig.from_mapping(
        {"endpoints": [{"base_url": "http://127.0.0.1:8000/v1", "model": "Qwen"}], "http": {"timeout_s": 3}}
    )
    assert config.endpoints[0].name == "Qwen@127.0.0.1:8000" and config.http.timeout_s == 3
    with pytest.raises(ValueError, match="unknown keys \\['temprature'\\]"):
        JudgeConfig.from_mapping({"endpoints": [{"base_url": "http://x/v1", "model": "m"}], "temprature": 0})
    with pytest.raises(ValueError, match="mode"):
        JudgeConfig(endpoints=(JudgeEndpoint("http://x/v1", "m"),), mode="vibes")
    with pytest.raises(ValueError, match="not an http"):
        MLLMJudge(JudgeConfig(endpoints=(JudgeEndpoint("127.0.0.1:8000", "m"),)))
