"""The progress line of a run (rank 0)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

__all__ = ["ProgressBar"]

_CLEAR_LINE = "\r\x1b[K"


def _format_duration(seconds: float) -> str:
    """``45s``, ``12m40s``, ``3h05m``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{(total % 3600) // 60:02d}m"


def _stream_is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (OSError, ValueError):
        return False


class ProgressBar:
    """One status line per iteration, e.g.
    ``step 12/200 | reward 0.642 | eval 0.701 | rollout 1.1s reward 0.0s update 2.3s | 4.1 s/it | ETA 12m40s``.

    On a TTY it rewrites one line (``\\r``, clearing the rest); otherwise it prints a full line at most every
    ``min_interval_s`` seconds, on the first update and on the last step.

    The time per iteration is the mean since ``start``, leaving out the first iteration once a later one has run
    (it includes compilation and warm-up); the ETA is that times the iterations left. The last step shows the total
    time instead (``done in 13m02s``). Segments whose value was not given are left out; NaN rewards print as ``nan``.

    Args:
        total: iterations of the run.
        start: iterations already done when the bar starts (a resumed run).
        enabled: print the bar; when False only :meth:`write` prints.
        stream: where to print (default ``sys.stderr``).
        min_interval_s: least seconds between two lines when the stream is not a TTY.
        clock: monotonic seconds (replaceable in tests).
    """

    def __init__(
        self,
        total: int,
        *,
        start: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"ProgressBar total must be an int >= 0 (the run's iterations): got {total!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"ProgressBar start must be an int >= 0 (iterations already done): got {start!r}")
        self.total = total
        self.start = start
        self.enabled = enabled
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._tty = _stream_is_tty(self.stream)
        self._t0 = clock()
        self._first: tuple[int, float] | None = None  # (step, time) of the first update
        self._last_print: float | None = None
        self._line = ""  # the latest status line
        self._line_printed = True  # whether the latest line reached the stream (non-TTY throttling)
        self._drawn = False  # TTY: a bar line is on screen without its newline
        self._closed = False

    def _seconds_per_iteration(self, step: int, now: float) -> float:
        if self._first is not None and step > self._first[0]:
            first_step, first_time = self._first
            return (now - first_time) / (step - first_step)
        done = step - self.start
        return (now - self._t0) / done if done > 0 else math.nan

    def _format(
        self,
        step: int,
        now: float,
        reward: float | None,
        eval_reward: float | None,
        phases: Mapping[str, float] | None,
    ) -> str:
        parts = [f"step {step}/{self.total}"]
        if reward is not None:
            parts.append(f"reward {float(reward):.3f}")
        if eval_reward is not None:
            parts.append(f"eval {float(eval_reward):.3f}")
        if phases:
            parts.append(" ".join(f"{name} {float(sec):.1f}s" for name, sec in phases.items()))
        spi = self._seconds_per_iteration(step, now)
        if math.isfinite(spi):
            parts.append(f"{spi:.2f} s/it" if spi < 1.0 else f"{spi:.1f} s/it")
        if step >= self.total:
            parts.append(f"done in {_format_duration(now - self._t0)}")
        elif math.isfinite(spi):
            parts.append(f"ETA {_format_duration(spi * (self.total - step))}")
        return " | ".join(parts)

    def _emit(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def update(
        self,
        step: int,
        *,
        reward: float | None = None,
        eval_reward: float | None = None,
        phases: Mapping[str, float] | None = None,
    ) -> None:
        """Show the state after ``step`` iterations (1-based count of completed iterations)."""
        now = self._clock()
        if self._first is None:
            self._first = (step, now)
        if not self.enabled or self._closed:
            return
        self._line = self._format(step, now, reward, eval_reward, phases)
        if self._tty:
            self._emit(_CLEAR_LINE + self._line)
            self._drawn = True
            return
        due = self._last_print is None or now - self._last_print >= self.min_interval_s or step >= self.total
        if due:
            self._emit(self._line + "\n")
            self._last_print = now
            self._line_printed = True
        else:
            self._line_printed = False

    def write(self, message: str) -> None:
        """Print ``message`` on its own line, keeping the bar intact (on a TTY it is redrawn below the message)."""
        if self._tty and self._drawn and not self._closed:
            self._emit(f"{_CLEAR_LINE}{message}\n{self._line}")
        else:
            self._emit(f"{message}\n")

    def close(self) -> None:
        """End the bar: finish the TTY line, or print the latest line if throttling held it back. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._tty:
            if self._drawn:
                self._emit("\n")
                self._drawn = False
        elif not self._line_printed and self._line:
            self._emit(self._line + "\n")
            self._line_printed = True
