"""Fixtures of the reward tests: a scripted chat-completions server, judges aimed at it, small images."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from chat_server import ScriptedChatServer

from fastgrpo.rewards import HttpPolicy, JudgeConfig, JudgeEndpoint, MLLMJudge

# Short limits so that every failure path finishes in well under a second.
FAST_HTTP = {
    "timeout_s": 0.5,
    "connect_timeout_s": 0.5,
    "max_retries": 2,
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.02,
    "max_retry_after_s": 2.0,
    "breaker_failures": 50,
    "breaker_cooldown_s": 0.3,
    "deadline_s": 10.0,
}


@pytest.fixture
def chat_server() -> Iterator[ScriptedChatServer]:
    with ScriptedChatServer() as server:
        yield server


@pytest.fixture
def make_judge() -> Iterator[Callable[..., MLLMJudge]]:
    """``make_judge(url_or_urls, http={...}, endpoint={...}, **config)``: a judge closed after the test."""
    judges: list[MLLMJudge] = []

    def build(
        urls: str | list[str],
        *,
        http: dict[str, Any] | None = None,
        endpoint: dict[str, Any] | None = None,
        **config: Any,
    ) -> MLLMJudge:
        urls = [urls] if isinstance(urls, str) else urls
        endpoints = tuple(
            JudgeEndpoint(base_url=url, model="judge-vl", name=f"judge{i}", trust_env=False, **(endpoint or {}))
            for i, url in enumerate(urls)
        )
        judge = MLLMJudge(JudgeConfig(endpoints=endpoints, http=HttpPolicy(**{**FAST_HTTP, **(http or {})}), **config))
        judges.append(judge)
        return judge

    yield build
    for judge in judges:
        judge.close()
