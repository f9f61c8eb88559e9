"""The progress display of a run (rank 0), on tqdm: a live bar on a terminal, throttled plain lines in a log file.

Example::

    bar = ProgressBar(total, start=already_done, enabled=is_rank0)
    bar.update(step, reward=0.642, eval_reward=0.701, phases={"rollout": 1.1, "update": 2.3})
    bar.write("checkpoint saved")  # its own line; a live bar is redrawn below it
    bar.close()
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from tqdm import tqdm

__all__ = ["ProgressBar"]


def _stream_is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (OSError, ValueError):
        return False


def _postfix(reward: float | None, eval_reward: float | None, phases: Mapping[str, float] | None) -> str:
    """``reward=0.642, eval=0.701 | rollout 1.1s update 2.3s``; segments not given are left out, NaN is ``nan``.

    The phase times stand apart from the rewards because a phase may itself be called ``reward``.
    """
    values = []
    if reward is not None:
        values.append(f"reward={float(reward):.3f}")
    if eval_reward is not None:
        values.append(f"eval={float(eval_reward):.3f}")
    segments = [", ".join(values)] if values else []
    if phases:
        segments.append(" ".join(f"{name} {float(seconds):.1f}s" for name, seconds in phases.items()))
    return " | ".join(segments)


class ProgressBar:
    """The run's progress after each iteration: steps done out of ``total``, elapsed time, rate, ETA, and the latest
    reward, evaluation reward and phase times.

    On a terminal (``stream.isatty()``) it is a live tqdm bar on ``stream``, e.g.
    ``step:  6%|▌         | 12/200 [00:49<12:51,  4.10s/it, reward=0.642, eval=0.701 | rollout 1.1s update 2.3s]``,
    redrawn on every update (one per iteration, so no throttling is needed); its rate is tqdm's smoothed one.

    Elsewhere (a log file, CI) it prints plain lines without carriage returns or escape codes, formatted by
    :meth:`tqdm.tqdm.format_meter` without the bar, e.g.
    ``step:   6% 12/200 [00:49<12:32,  4.00s/it, reward=0.642, eval=0.701 | rollout 1.1s update 2.3s]``: on the
    first update, then at most one every ``min_interval_s`` seconds, and always on the last step; :meth:`close`
    prints the latest line if throttling held it back. The rate there is the mean since the first update, which
    leaves out the first iteration (compilation and warm-up) once a later one has run; before that it is the mean
    since the bar was made.

    Segments whose value was not given are left out; NaN rewards print as ``nan``.

    Args:
        total: iterations of the run, an int ``>= 0``.
        start: iterations already done when the bar starts (a resumed run), an int ``>= 0``.
        enabled: show the progress; when False only :meth:`write` prints.
        stream: where to print (default ``sys.stderr``, looked up when the bar is made).
        min_interval_s: least seconds between two plain lines (not used on a terminal), ``>= 0``.
        clock: monotonic seconds for the plain lines' timing and throttling (replaceable in tests); the live bar
            keeps tqdm's own clock.

    Raises:
        ValueError: ``total`` or ``start`` is not an int ``>= 0``, or ``min_interval_s`` is negative or NaN.
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
        interval = float(min_interval_s)
        if not interval >= 0:  # also refuses NaN
            raise ValueError(
                f"ProgressBar min_interval_s must be >= 0 (least seconds between two log lines): got {min_interval_s!r}"
            )
        self.total = total
        self.start = start
        self.enabled = enabled
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.min_interval_s = interval
        self._clock = clock
        self._t0 = clock()
        self._first: tuple[int, float] | None = None  # (step, time) of the first update
        self._last_print: float | None = None
        self._line = ""  # the latest plain line
        self._line_printed = True  # whether the latest plain line reached the stream
        self._closed = False
        self._bar: tqdm | None = None
        if enabled and _stream_is_tty(self.stream):
            self._bar = tqdm(
                total=total,
                initial=start,
                file=self.stream,
                desc="step",
                unit="it",
                dynamic_ncols=True,
                # An update comes once per iteration (seconds apart): draw each one, rather than dropping those
                # that follow a message or another update within tqdm's default 0.1 s.
                mininterval=0,
                miniters=1,
                leave=True,
            )

    def _rate(self, step: int, now: float) -> float | None:
        """Iterations per second for the plain lines, or None when no iteration has been timed yet."""
        if self._first is not None and step > self._first[0]:
            first_step, first_time = self._first
            seconds, done = now - first_time, step - first_step
        else:
            seconds, done = now - self._t0, step - self.start
        if done <= 0 or not seconds > 0:
            return None
        return done / seconds

    def _plain_line(self, step: int, now: float, postfix: str) -> str:
        return tqdm.format_meter(
            step,
            self.total,
            max(0.0, now - self._t0),
            ncols=0,  # the text without the bar
            prefix="step",
            unit="it",
            rate=self._rate(step, now),
            postfix=postfix or None,
            initial=self.start,
        )

    def update(
        self,
        step: int,
        *,
        reward: float | None = None,
        eval_reward: float | None = None,
        phases: Mapping[str, float] | None = None,
    ) -> None:
        """Show the state after ``step`` iterations (the count of completed iterations, ``start`` included).

        Args:
            step: iterations done so far.
            reward: the latest training reward (printed with 3 decimals), or None to leave it out.
            eval_reward: the latest evaluation reward, or None to leave it out.
            phases: seconds per phase of the latest iteration, in the order to print them (``{"rollout": 1.1}``).
        """
        now = self._clock()
        if self._first is None:
            self._first = (step, now)
        if not self.enabled or self._closed:
            return
        postfix = _postfix(reward, eval_reward, phases)
        if self._bar is not None:
            self._bar.set_postfix_str(postfix, refresh=False)
            advance = step - self._bar.n
            if advance > 0:
                self._bar.update(advance)  # keeps tqdm's rate estimate; draws (miniters=1, mininterval=0)
            else:
                self._bar.n = step
                self._bar.refresh()
            return
        self._line = self._plain_line(step, now, postfix)
        due = self._last_print is None or now - self._last_print >= self.min_interval_s or step >= self.total
        if due:
            self._emit(self._line + "\n")
            self._last_print = now
            self._line_printed = True
        else:
            self._line_printed = False

    def _emit(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def write(self, message: str) -> None:
        """Print ``message`` on its own line; a live bar is cleared, and redrawn below the message. Prints even when
        the bar is disabled or closed."""
        if self._bar is not None and not self._closed:
            self._bar.write(message, file=self.stream)
            self.stream.flush()
        else:
            self._emit(f"{message}\n")

    def close(self) -> None:
        """End the progress: leave the live bar on screen in its final state with a newline, or print the latest
        plain line if throttling held it back. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and not self._line_printed and self._line:
            self._emit(self._line + "\n")
            self._line_printed = True
