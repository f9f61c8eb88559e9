"""SIGTERM / SIGINT during a run: the loop finishes the current iteration, saves a checkpoint and exits cleanly."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["StopSignals"]


class StopSignals:
    """A context in which SIGTERM and SIGINT set :attr:`received` (the signal's name) instead of killing the process;
    a second signal stops at once (``KeyboardInterrupt``). Outside the main thread (where Python cannot install
    handlers) it does nothing. The previous handlers are restored on exit."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:  # a second signal: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt(f"{name} received twice")
        self.received = name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
