"""The MLLM judge reward (SPEC S2): OpenAI-compatible chat-completions servers score each edit 0-100 on three criteria.

Any server that speaks ``POST /v1/chat/completions`` with image content parts works: GPT-4o-class APIs, vLLM or
SGLang serving Qwen2.5-VL (README, "MLLM judge"). Source and edited images go as base64 data URLs; the prompt and
the reading of the answer are in :mod:`fastgrpo.rewards.judge_prompt`, retries and the circuit breaker in
:mod:`fastgrpo.rewards.http_client`. Several endpoints are averaged per sample.

The reward of a sample is the weighted mean of its three criteria, in ``[0, 1]``. A sample that could not be scored
(server down, timeout, unreadable answer, non-finite image) is NaN, counted in :meth:`MLLMJudge.stats` and logged
with its reason; no score is ever guessed. :meth:`MLLMJudge.submit` returns at once with a future, so the trainer
overlaps judging with its next rollout.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import torch

from fastgrpo.rewards.base import RewardBatch, RewardFunction, RewardResult
from fastgrpo.rewards.config import dataclass_from_mapping
from fastgrpo.rewards.http_client import ChatClient, HttpPolicy
from fastgrpo.rewards.images import is_finite_image, to_pil
from fastgrpo.rewards.judge_prompt import CRITERIA, Verdict, build_messages, json_schema_format, read_answer

__all__ = ["JudgeConfig", "JudgeEndpoint", "JudgeStats", "MLLMJudge"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeEndpoint:
    """One judge server.

    Attributes:
        base_url: prefix of ``/chat/completions``, e.g. ``http://127.0.0.1:8000/v1`` or ``https://api.openai.com/v1``.
        model: the model name the server serves (vLLM: the path or ``--served-model-name``).
        api_key_env: name of the environment variable that holds the API key; None for a server without one.
        name: label in logs and detail names (default ``model@host``).
        max_concurrency: requests in flight to this server at most (threads and connections).
        trust_env: let httpx take proxy settings from the environment.
    """

    base_url: str
    model: str
    api_key_env: str | None = None
    name: str = ""
    max_concurrency: int = 8
    trust_env: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"judge endpoint {self.base_url!r}: model must be the served model's name")
        if not isinstance(self.max_concurrency, int) or self.max_concurrency < 1:
            raise ValueError(f"judge endpoint max_concurrency must be an integer >= 1, got {self.max_concurrency!r}")
        if not self.name:
            object.__setattr__(self, "name", f"{self.model}@{urlparse(self.base_url).netloc or self.base_url}")


@dataclass(frozen=True)
class JudgeConfig:
    """Configuration of :class:`MLLMJudge`.

    Attributes:
        endpoints: one or more judge servers; their rewards are averaged per sample.
        mode: ``"json"`` (three integers 0-100 as JSON) or ``"logprobs"`` (three digits 0-9, scored by their
            expected value under the returned ``top_logprobs``; see :mod:`~fastgrpo.rewards.judge_prompt`).
        json_schema: send a JSON-schema ``response_format`` in ``json`` mode (off for servers without structured
            output; the answer is then read tolerantly).
        weights: weights of instruction following, edit quality and preservation (normalised to sum 1).
        combine: ``"all"``: a sample is NaN unless every endpoint scored it (each sample is then the same function
            of the images, which group-relative advantages need); ``"available"``: mean of the endpoints that did.
        temperature: sampling temperature (0: deterministic judging where the server allows it).
        max_tokens: answer length limit (room for a reasoning preamble if the model writes one).
        top_logprobs: alternatives per position in ``logprobs`` mode (OpenAI and vLLM allow up to 20).
        min_logprob_mass: least probability on digit tokens at an answer position in ``logprobs`` mode.
        image_format: ``"png"`` (lossless) or ``"jpeg"`` (smaller requests for large images).
        jpeg_quality: JPEG quality 1-95.
        max_image_side: images larger than this (pixels) are downscaled, keeping the aspect ratio.
        seed: sent as ``seed`` when set (servers that honour it answer reproducibly).
        extra_body: extra request fields for a server, e.g. ``{"chat_template_kwargs": {"enable_thinking": false}}``.
        http: timeouts, retries and circuit breaker of every endpoint.
    """

    endpoints: tuple[JudgeEndpoint, ...]
    mode: str = "json"
    json_schema: bool = True
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    combine: str = "all"
    temperature: float = 0.0
    max_tokens: int = 256
    top_logprobs: int = 20
    min_logprob_mass: float = 0.5
    image_format: str = "png"
    jpeg_quality: int = 90
    max_image_side: int = 1024
    seed: int | None = None
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    http: HttpPolicy = field(default_factory=HttpPolicy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        checks = [
            (len(self.endpoints) > 0, "endpoints is empty; add at least one {base_url, model}"),
            (all(isinstance(e, JudgeEndpoint) for e in self.endpoints), "endpoints must be JudgeEndpoint values"),
            (self.mode in ("json", "logprobs"), f"mode={self.mode!r}; use 'json' or 'logprobs'"),
            (self.combine in ("all", "available"), f"combine={self.combine!r}; use 'all' or 'available'"),
            (
                len(self.weights) == 3 and all(w >= 0 and math.isfinite(w) for w in self.weights) and sum(self.weights),
                f"weights={self.weights}: three finite weights >= 0, not all zero",
            ),
            (self.image_format in ("png", "jpeg"), f"image_format={self.image_format!r}; use 'png' or 'jpeg'"),
            (1 <= self.jpeg_quality <= 95, f"jpeg_quality={self.jpeg_quality}; use 1-95"),
            (self.max_image_side >= 16, f"max_image_side={self.max_image_side}; use >= 16 pixels"),
            (1 <= self.top_logprobs <= 20, f"top_logprobs={self.top_logprobs}; use 1-20"),
            (0 < self.min_logprob_mass <= 1, f"min_logprob_mass={self.min_logprob_mass}; use a value in (0, 1]"),
            (self.max_tokens >= 8, f"max_tokens={self.max_tokens}; use >= 8"),
            (self.temperature >= 0, f"temperature={self.temperature}; use >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"JudgeConfig.{message}")
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"JudgeConfig.endpoints have duplicate names {names}; give each a distinct name")

    @classmethod
    def from_mapping(cls, mapping: Any, where: str = "judge") -> JudgeConfig:
        """From a plain mapping (a YAML section); nested ``endpoints`` (list of mappings) and ``http``."""

        def endpoints(value: Any, at: str) -> tuple[JudgeEndpoint, ...]:
            if isinstance(value, Mapping) or not isinstance(value, Sequence):
                raise ValueError(f"{at} must be a list of {{base_url, model, ...}} mappings")
            return tuple(dataclass_from_mapping(JudgeEndpoint, v, f"{at}[{i}]") for i, v in enumerate(value))

        converters: dict[str, Callable[[Any, str], Any]] = {
            "endpoints": endpoints,
            "http": lambda value, at: dataclass_from_mapping(HttpPolicy, value, at),
            "weights": lambda value, at: tuple(value),
        }
        return dataclass_from_mapping(cls, mapping, where, converters)


@dataclass
class JudgeStats:
    """Counts since the judge was built: samples asked, scored, failed; HTTP attempts; failures by reason kind."""

    samples: int = 0
    scored: int = 0
    failed: int = 0
    attempts: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def _reason_kind(reason: str) -> str:
    """The stable part of a reason (no timings or body excerpts), to count failures by kind."""
    return reason.split(":")[0].split(" (")[0].split(";")[0][:60]


def encode_data_url(item: Any, image_format: str, jpeg_quality: int, max_side: int) -> str:
    """``data:image/...;base64,...`` of one image (downscaled to ``max_side`` pixels on its longer side)."""
    image = to_pil(item)
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=1)  # fast; these images live for one request
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    return f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


class _LazyUrls:
    """Data URLs of a batch's images, each encoded once, by whichever worker thread first needs it."""

    def __init__(self, items: Sequence[Any], keys: Sequence[object], encode: Callable[[Any], str]) -> None:
        self._items, self._keys, self._encode = items, keys, encode
        self._done: dict[object, str] = {}
        self._locks: dict[object, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, index: int) -> str:
        key = self._keys[index]
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._done:
                self._done[key] = self._encode(self._items[index])
            return self._done[key]


class MLLMJudge(RewardFunction):
    """Reward from one or more MLLM judges, in ``[0, 1]``; NaN where no judge answer could be read.

    Args:
        config: a :class:`JudgeConfig` (or a mapping, see :meth:`JudgeConfig.from_mapping`).

    Building the judge reads each endpoint's API key (``ValueError`` naming the variable if it is missing) but
    sends nothing. Call :meth:`close` (or use ``with``) to stop its threads.
    """

    score_range = (0.0, 1.0)

    def __init__(self, config: JudgeConfig | Mapping[str, Any]) -> None:
        self.config = config if isinstance(config, JudgeConfig) else JudgeConfig.from_mapping(config)
        self._clients: list[ChatClient] = []
        try:
            for e in self.config.endpoints:
                client = ChatClient(
                    e.base_url,
                    api_key_env=e.api_key_env,
                    max_connections=e.max_concurrency,
                    policy=self.config.http,
                    trust_env=e.trust_env,
                    name=e.name,
                )
                self._clients.append(client)
        except BaseException:
            for client in self._clients:
                client.close()
            raise
        self._pools = [
            ThreadPoolExecutor(e.max_concurrency, thread_name_prefix=f"judge-{i}")
            for i, e in enumerate(self.config.endpoints)
        ]
        self._stats = JudgeStats()
        self._stats_lock = threading.Lock()
        weight_sum = sum(self.config.weights)
        self._weights = tuple(w / weight_sum for w in self.config.weights)

    def stats(self) -> JudgeStats:
        """A copy of the counters."""
        with self._stats_lock:
            s = self._stats
            return JudgeStats(s.samples, s.scored, s.failed, s.attempts, Counter(s.reasons))

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients:
            client.close()

    def evaluate(self, batch: RewardBatch) -> RewardResult:
        return self.submit(batch).result()

    def submit(self, batch: RewardBatch) -> Future[RewardResult]:
        """Send every (sample, endpoint) request to the endpoint's pool; the future resolves when all are answered
        or failed, at the latest ``http.deadline_s`` (plus one attempt's timeout) after this call."""
        cfg = self.config
        deadline = time.monotonic() + cfg.http.deadline_s
        encode = lambda item: encode_data_url(item, cfg.image_format, cfg.jpeg_quality, cfg.max_image_side)  # noqa: E731
        # The same source object repeated over a GRPO group is encoded once.
        sources = _LazyUrls(batch.sources, [id(item) for item in batch.sources], encode)
        edited = _LazyUrls(batch.edited, list(range(batch.size)), encode)
        outer: Future[RewardResult] = Future()
        outer.set_running_or_notify_cancel()
        verdicts: list[list[Verdict | None]] = [[None] * len(self._clients) for _ in range(batch.size)]
        state = {"pending": len(self._clients) * batch.size, "settled": False}
        lock = threading.Lock()

        def settle(value: RewardResult | None, error: BaseException | None) -> None:
            with lock:
                if state["settled"]:
                    return
                state["settled"] = True
            if error is not None:
                outer.set_exception(error)
            else:
                outer.set_result(value)  # type: ignore[arg-type]

        def finished(sample: int, endpoint: int, future: Future[Verdict]) -> None:
            if not future.cancelled() and future.exception() is not None:
                settle(None, future.exception())  # a bug, not a server failure: surface it
                return
            verdict = Verdict(reason="cancelled (judge closed)") if future.cancelled() else future.result()
            with lock:
                verdicts[sample][endpoint] = verdict
                state["pending"] -= 1
                last = state["pending"] == 0
            if last:
                try:
                    settle(self._assemble(batch.size, verdicts), None)
                except Exception as error:  # never leave the caller waiting on a future nobody will resolve
                    settle(None, error)

        for sample in range(batch.size):
            for endpoint, pool in enumerate(self._pools):
                task = pool.submit(self._judge_one, endpoint, batch, sample, sources, edited, deadline)
                task.add_done_callback(lambda f, s=sample, e=endpoint: finished(s, e, f))
        return outer

    def _request_body(self, endpoint: int, instruction: str, source_url: str, edited_url: str) -> dict[str, Any]:
        cfg = self.config
        body: dict[str, Any] = {
            "model": cfg.endpoints[endpoint].model,
            "messages": build_messages(instruction, source_url, edited_url, cfg.mode),
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.mode == "json" and cfg.json_schema:
            body["response_format"] = json_schema_format()
        if cfg.mode == "logprobs":
            body.update(logprobs=True, top_logprobs=cfg.top_logprobs)
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        body.update(cfg.extra_body)
        return body

    def _judge_one(
        self, endpoint: int, batch: RewardBatch, sample: int, sources: _LazyUrls, edited: _LazyUrls, deadline: float
    ) -> Verdict:
        for name, item in (("edited", batch.edited[sample]), ("source", batch.sources[sample])):
            if not is_finite_image(item):
                return Verdict(reason=f"{name} image has non-finite pixels")
        if time.monotonic() >= deadline:
            return Verdict(reason="batch deadline reached before the request was sent")
        body = self._request_body(endpoint, batch.instructions[sample], sources.get(sample), edited.get(sample))
        outcome = self._clients[endpoint].post_chat(body, deadline)
        with self._stats_lock:
            self._stats.attempts += outcome.attempts
        if not outcome.ok:
            return Verdict(reason=outcome.reason)
        verdict = read_answer(outcome.body, self.config.mode, self.config.min_logprob_mass)
        if verdict.reason is not None:
            return Verdict(reason=self._clients[endpoint].redact(verdict.reason))
        return verdict

    def _assemble(self, size: int, verdicts: list[list[Verdict | None]]) -> RewardResult:
        names = [e.name for e in self.config.endpoints]
        score = torch.full((size,), math.nan, dtype=torch.float32)
        details = {key: torch.full((size,), math.nan, dtype=torch.float32) for key in CRITERIA}
        failures: list[str | None] = []
        raw_reasons: list[str] = []
        for sample, row in enumerate(verdicts):
            answered = [v for v in row if v is not None and v.scores is not None]
            failed = [(n, v.reason) for n, v in zip(names, row, strict=True) if v is not None and v.scores is None]
            usable = answered if (self.config.combine == "available" or not failed) else []
            if usable:
                score[sample] = sum(v.combined(self._weights) for v in usable) / len(usable)
                for k, key in enumerate(CRITERIA):
                    details[key][sample] = sum(v.scores[k] for v in usable) / len(usable)  # type: ignore[index]
                failures.append(None)
            else:
                failures.append("; ".join(f"{n}: {r}" if len(names) > 1 else str(r) for n, r in failed))
            for name, reason in failed:
                raw_reasons.append(str(reason))
                logger.debug("judge %s: sample %d not scored: %s", name, sample, reason)
        self._record(failures, raw_reasons)
        return RewardResult(score=score, details=details, failures=tuple(failures))

    def _record(self, failures: list[str | None], raw_reasons: list[str]) -> None:
        """Count and log a batch's failures (``raw_reasons``: every failed endpoint answer, counted by kind)."""
        reasons = [r for r in failures if r is not None]
        kinds = Counter(_reason_kind(r) for r in raw_reasons)
        with self._stats_lock:
            self._stats.samples += len(failures)
            self._stats.failed += len(reasons)
            self._stats.scored += len(failures) - len(reasons)
            self._stats.reasons.update(kinds)
        if raw_reasons:
            summary = ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common())
            logger.warning(
                "judge: %d of %d samples not scored (NaN); failed answers: %s; first reason: %s",
                len(reasons),
                len(failures),
                summary,
                raw_reasons[0],
            )
