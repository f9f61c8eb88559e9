"""A real chat-completions HTTP server on 127.0.0.1 with scripted answers, for the judge tests.

Each request is matched by its editing instruction (the judge puts it in the first text part of the user turn);
the script gives that instruction a list of :class:`Reply` values, used in order, the last one repeating. Every
request is recorded (path, headers, decoded body). Handlers never block longer than the reply's ``delay_s``.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

INSTRUCTION_PREFIX = "Editing instruction: "


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    Attributes:
        status: HTTP status.
        body: a JSON-able object, raw bytes, or None for an empty body.
        headers: extra response headers (e.g. Retry-After).
        delay_s: wait before answering (beyond the client's timeout: the client gives up first).
        drop: close the connection without any response.
        cut_body: declare the full Content-Length but send only the first half of the body, then close.
        trickle_s: send the body one byte at a time, waiting this long before each.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False
    cut_body: bool = False
    trickle_s: float = 0.0


def completion(content: Any, finish: str = "stop", logprobs: Any = None, **message: Any) -> dict[str, Any]:
    """A chat-completions response body with one choice."""
    choice = {"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {"id": "cmpl-1", "object": "chat.completion", "model": "judge", "choices": [choice]}


def scores(instruction: float, quality: float, preservation: float) -> Reply:
    """A valid JSON-mode answer."""
    text = json.dumps({"instruction_following": instruction, "edit_quality": quality, "preservation": preservation})
    return Reply(body=completion(text))


def digit_position(probs: dict[str, float]) -> dict[str, Any]:
    """One logprobs ``content`` entry: the most likely token and the given alternatives (token → probability)."""
    top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in probs.items()]
    best = max(top, key=lambda entry: entry["logprob"])
    return {"token": best["token"], "logprob": best["logprob"], "bytes": best["bytes"], "top_logprobs": top}


def logprob_reply(*positions: dict[str, float], separator: bool = True) -> Reply:
    """A logprobs-mode answer: one digit position per argument, separated by space tokens."""
    content = []
    for index, probs in enumerate(positions):
        if index and separator:
            content.append({"token": " ", "logprob": 0.0, "bytes": [32], "top_logprobs": []})
        content.append(digit_position(probs))
    text = "".join(entry["token"] for entry in content)
    return Reply(body=completion(text, logprobs={"content": content}))


class ScriptedChatServer:
    """``ThreadingHTTPServer`` on 127.0.0.1 (port chosen by the OS) answering ``POST /v1/chat/completions``."""

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or scores(80, 70, 90)
        self.script: dict[str, list[Reply]] = {}
        self.requests: list[dict[str, Any]] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def on(self, instruction: str, *replies: Reply) -> None:
        """Answer requests about ``instruction`` with ``replies`` in order (the last one repeats)."""
        self.script[instruction] = list(replies)

    def attempts(self, instruction: str) -> int:
        with self._lock:
            return self._counts.get(instruction, 0)

    def _next_reply(self, body: Any) -> Reply:
        instruction = _instruction_of(body)
        with self._lock:
            count = self._counts.get(instruction, 0)
            self._counts[instruction] = count + 1
        replies = self.script.get(instruction)
        return replies[min(count, len(replies) - 1)] if replies else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body leave at once, as with production servers

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # http.server's method name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                reply = server._next_reply(body)
                try:
                    _send(self, reply)
                except OSError:  # the client gave up (timeout) and closed the socket
                    self.close_connection = True
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler

    def __enter__(self) -> ScriptedChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _instruction_of(body: Any) -> str:
    try:
        for message in body["messages"]:
            if message["role"] == "user":
                for part in message["content"]:
                    if part.get("type") == "text" and part["text"].startswith(INSTRUCTION_PREFIX):
                        return json.loads(part["text"][len(INSTRUCTION_PREFIX) :])
    except (KeyError, TypeError, ValueError):
        pass
    return ""


def _send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
    if reply.delay_s:
        time.sleep(reply.delay_s)
    if reply.drop:
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
        return
    if isinstance(reply.body, bytes):
        payload, kind = reply.body, reply.headers.get("Content-Type", "text/html")
    elif reply.body is None:
        payload, kind = b"", "application/json"
    else:
        payload, kind = json.dumps(reply.body).encode(), "application/json"
    handler.send_response(reply.status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(payload)))
    for key, value in reply.headers.items():
        if key != "Content-Type":
            handler.send_header(key, value)
    handler.end_headers()
    if reply.cut_body:
        handler.wfile.write(payload[: len(payload) // 2])
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)
        return
    if reply.trickle_s:
        for index in range(len(payload)):
            time.sleep(reply.trickle_s)
            handler.wfile.write(payload[index : index + 1])
            handler.wfile.flush()
        return
    handler.wfile.write(payload)


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
