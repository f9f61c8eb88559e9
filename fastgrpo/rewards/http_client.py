"""A chat-completions HTTP client that cannot stall the trainer: bounded retries, backoff, a circuit breaker.

One :class:`ChatClient` talks to one OpenAI-compatible server (``POST {base_url}/chat/completions``). It is
blocking and thread-safe; the judge calls it from a thread pool whose size is the endpoint's concurrency limit.
Every call ends within the caller's deadline: each attempt has a timeout, retries are bounded and only happen on
errors that may pass (429, 408/409/425, 5xx, timeouts, connection errors), the wait before a retry honours
``Retry-After`` but never beyond ``max_retry_after_s`` or the deadline, and after ``breaker_failures`` consecutive
failed attempts the circuit opens: calls then fail at once ("circuit open") until ``breaker_cooldown_s`` has passed
and a single probe call succeeds. A failure is returned as a :class:`ChatOutcome` with a reason, never raised.

The API key is read from the environment variable the endpoint names (through :func:`fastgrpo._env.read_secret`)
when the client is built, sent only in the ``Authorization`` header, and removed from every reason string.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastgrpo import _env

__all__ = ["ChatClient", "ChatOutcome", "CircuitBreaker", "HttpPolicy", "parse_retry_after"]

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
MAX_RESPONSE_BYTES = 8 * 2**20  # a judge answer is a few kB; anything near this is not one
_HINTS = {
    400: "the server rejected the request; if it does not support JSON-schema output, set json_schema: false",
    401: "unauthorised: check the API key in the variable named by api_key_env",
    403: "forbidden: check the API key's permissions for this model",
    404: "not found: base_url must end where /chat/completions starts (usually .../v1), and model must exist",
    413: "request too large: lower max_image_side or use image_format: jpeg",
}


@dataclass(frozen=True)
class HttpPolicy:
    """Timeouts, retries and circuit breaker of a judge endpoint (seconds throughout).

    Attributes:
        timeout_s: limit of one attempt (connect, send, wait, read).
        connect_timeout_s: limit of the connection part of an attempt.
        max_retries: retries after the first attempt (so at most ``1 + max_retries`` attempts).
        backoff_base_s, backoff_max_s: the wait before retry ``k`` is uniform in ``[0, min(max, base * 2^k)]``
            ("full jitter", so that many clients do not retry in lockstep), unless the server sent Retry-After.
        max_retry_after_s: the longest Retry-After honoured; a server asking for more gets no retry.
        breaker_failures: consecutive failed attempts that open the circuit.
        breaker_cooldown_s: how long an open circuit fails calls at once before one probe is let through.
        deadline_s: per batch: no attempt starts, and no retry is waited for, after this much time.
    """

    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    max_retry_after_s: float = 30.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    deadline_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("timeout_s", "connect_timeout_s", "breaker_cooldown_s", "deadline_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"HttpPolicy.{name} must be a positive number of seconds, got {value!r}")
        for name in ("backoff_base_s", "backoff_max_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"HttpPolicy.{name} must be >= 0 seconds, got {value!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"HttpPolicy.max_retries must be an integer >= 0, got {self.max_retries!r}")
        if not isinstance(self.breaker_failures, int) or self.breaker_failures < 1:
            raise ValueError(f"HttpPolicy.breaker_failures must be an integer >= 1, got {self.breaker_failures!r}")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (0-based) without a Retry-After."""
        return rng.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2.0**retry))


class CircuitBreaker:
    """Closed → (``failures`` consecutive failures) → open → (``cooldown_s``) → half-open: one probe is allowed;
    its success closes the circuit, its failure opens it again for another cool-down. Thread-safe."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.cooldown_s, self._clock = failures, cooldown_s, clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._clock() - self._opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open state: only the first caller, the probe)."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._clock() - self._opened_at < self.cooldown_s or self._probing:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._consecutive, self._opened_at, self._probing = 0, None, False

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._probing or self._consecutive >= self.failures:
                self._opened_at, self._probing = self._clock(), False


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds (``"2"``, also ``"0.5"``) or an HTTP date; None if
    absent or unreadable. ``now`` is the Unix time to measure an HTTP date from (default: the current time)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _TooSlow(Exception):
    """The answer did not arrive completely within the attempt's time."""


class _TooLarge(Exception):
    """The answer is larger than :data:`MAX_RESPONSE_BYTES`."""


@dataclass(frozen=True)
class ChatOutcome:
    """The decoded JSON body of a successful call, or the reason the call failed; ``attempts`` made either way."""

    body: Any = None
    reason: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None


class ChatClient:
    """Blocking, thread-safe client of one chat-completions endpoint.

    Args:
        base_url: ``http(s)://host[:port]/v1``-style prefix; requests go to ``{base_url}/chat/completions``.
        api_key_env: name of the environment variable holding the API key, or None for a server without one.
        max_connections: connection pool size (the endpoint's concurrency limit).
        policy: timeouts, retries and breaker.
        trust_env: let httpx read proxy settings from the environment.
        name: label used in reasons and logs.

    Raises ``ValueError`` for a malformed ``base_url`` or an ``api_key_env`` that is not set (naming the variable,
    never showing a value).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None,
        max_connections: int,
        policy: HttpPolicy,
        trust_env: bool = True,
        name: str = "judge",
    ) -> None:
        import httpx

        if not re.match(r"^https?://[^/\s]+", base_url or ""):
            raise ValueError(f"judge base_url {base_url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8000/v1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.policy, self.name = policy, name
        headers = {"Content-Type": "application/json"}
        self._key: str | None = None
        if api_key_env:
            self._key = _env.read_secret(api_key_env)
            if not self._key:
                raise ValueError(
                    f"judge {name!r}: environment variable {api_key_env} (api_key_env) is not set or empty; "
                    "export it, or set api_key_env: null for a server without a key"
                )
            headers["Authorization"] = f"Bearer {self._key}"
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._httpx = httpx
        self._http = httpx.Client(headers=headers, limits=limits, trust_env=trust_env)
        self.breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_cooldown_s)
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ChatClient(name={self.name!r}, url={self.url!r}, breaker={self.breaker.state!r})"

    def redact(self, text: str) -> str:
        """``text`` with the API key replaced by ``***`` (servers sometimes echo part of a bad key)."""
        if self._key:
            text = text.replace(self._key, "***")
        return text

    def close(self) -> None:
        self._http.close()

    def post_chat(self, body: dict[str, Any], deadline: float) -> ChatOutcome:
        """POST ``body`` with retries until success, a final failure, or ``deadline`` (``time.monotonic()``)."""
        attempts, reason = 0, "batch deadline reached before the request was sent"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ChatOutcome(reason=self._final(reason, attempts, "batch deadline reached"), attempts=attempts)
            if not self.breaker.allow():
                why = f"circuit open after repeated failures (last: {reason})" if attempts else "circuit open"
                return ChatOutcome(reason=why, attempts=attempts)
            attempts += 1
            body_json, reason, retryable, retry_after = self._attempt(body, min(self.policy.timeout_s, remaining))
            if reason is None:
                return ChatOutcome(body=body_json, attempts=attempts)
            if not retryable:
                return ChatOutcome(reason=self._final(reason, attempts), attempts=attempts)
            if attempts > self.policy.max_retries:
                return ChatOutcome(reason=self._final(reason, attempts), attempts=attempts)
            if retry_after is not None and retry_after > self.policy.max_retry_after_s:
                why = f"server asked to retry after {retry_after:.0f} s (> max_retry_after_s)"
                return ChatOutcome(reason=self._final(f"{reason}; {why}", attempts), attempts=attempts)
            with self._rng_lock:
                wait = retry_after if retry_after is not None else self.policy.backoff(attempts - 1, self._rng)
            if time.monotonic() + wait >= deadline:
                return ChatOutcome(reason=self._final(reason, attempts, "no time left to retry"), attempts=attempts)
            time.sleep(wait)

    @staticmethod
    def _final(reason: str, attempts: int, extra: str | None = None) -> str:
        tail = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        return f"{reason}{tail}" + (f"; {extra}" if extra else "")

    def _attempt(self, body: dict[str, Any], timeout: float) -> tuple[Any, str | None, bool, float | None]:
        """One request: ``(decoded body, failure reason, retryable, Retry-After seconds)``.

        ``timeout`` bounds the whole attempt: httpx's own timeouts apply per network operation, so a server that
        trickles its answer byte by byte is cut off here while the body streams in.
        """
        httpx = self._httpx
        limits = httpx.Timeout(timeout, connect=min(self.policy.connect_timeout_s, timeout))
        give_up = time.monotonic() + timeout
        try:
            with self._http.stream("POST", self.url, json=body, timeout=limits) as response:
                content = self._read_body(response, give_up)
        except _TooSlow:
            self.breaker.record_failure()
            return None, f"timeout (answer not complete within {timeout:.1f} s)", True, None
        except _TooLarge:
            self.breaker.record_success()
            return None, f"response larger than {MAX_RESPONSE_BYTES} bytes", False, None
        except httpx.TimeoutException as error:
            self.breaker.record_failure()
            return None, f"timeout ({type(error).__name__}, limit {timeout:.1f} s)", True, None
        except httpx.TransportError as error:
            if self._http.is_closed:  # close() ran while this request was in flight
                return None, "client closed", False, None
            self.breaker.record_failure()
            return None, self.redact(f"connection error ({type(error).__name__}: {error})")[:200], True, None
        except RuntimeError:
            if not self._http.is_closed:
                raise
            return None, "client closed", False, None
        return self._judge_response(response, content)

    @staticmethod
    def _read_body(response: Any, give_up: float) -> bytes:
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise _TooLarge
            if time.monotonic() > give_up:
                raise _TooSlow
        return b"".join(chunks)

    def _judge_response(self, response: Any, content: bytes) -> tuple[Any, str | None, bool, float | None]:
        status = response.status_code
        text = content.decode("utf-8", errors="replace")
        if status == 200:
            self.breaker.record_success()
            try:
                return json.loads(text), None, False, None
            except ValueError:
                kind = response.headers.get("content-type", "no content-type")
                return None, f"HTTP 200 but the body is not JSON ({kind}: {self._snippet(text)})", False, None
        reason = f"HTTP {status}: {self._snippet(text)}"
        if status in RETRYABLE_STATUS or status >= 500:
            if status == 429:
                self.breaker.record_success()  # the server is up, only busy: no reason to open the circuit
            else:
                self.breaker.record_failure()
            return None, reason, True, parse_retry_after(response.headers.get("retry-after"))
        self.breaker.record_success()
        hint = _HINTS.get(status)
        return None, f"{reason} ({hint})" if hint else reason, False, None

    def _snippet(self, text: str) -> str:
        """The start of an error body as one short line (HTML tags dropped, key redacted)."""
        plain = " ".join(re.sub(r"<[^>]*>", " ", text).split())
        return self.redact(plain)[:160] or "empty body"
