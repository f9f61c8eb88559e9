"""The progress line: throttled lines off a terminal, a live line on one, messages kept apart from the bar."""

from __future__ import annotations

import io
import math

from fastgrpo.train.metrics import progress as observe
from fastgrpo.train.metrics.progress import ProgressBar

# --- ProgressBar ------------------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_non_tty_throttles_and_prints_last_step():
    clock, out = _Clock(), io.StringIO()
    bar = ProgressBar(10, stream=out, min_interval_s=10.0, clock=clock)
    for step in range(1, 11):
        clock.now += 4.0
        bar.update(step, reward=0.5, phases={"rollout": 1.0, "update": 3.0})
    bar.close()
    lines = out.getvalue().splitlines()
    steps = [int(line.split()[1].split("/")[0]) for line in lines]
    assert steps == [1, 4, 7, 10]  # first, then every >= 10 s (3 iterations of 4 s), and the last
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("step 1/10 | reward 0.500 | rollout 1.0s update 3.0s | 4.0 s/it | ETA 36s")
    assert lines[-1].endswith("done in 40s")


def test_progress_bar_close_flushes_a_held_back_line():
    clock, out = _Clock(), io.StringIO()
    bar = ProgressBar(100, stream=out, min_interval_s=60.0, clock=clock)
    for step in (1, 2, 3):
        clock.now += 1.0
        bar.update(step)
    bar.close()
    bar.close()
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["1/100", "3/100"]


def test_progress_bar_tty_rewrites_and_write_keeps_bar():
    clock, out = _Clock(), _TTY()
    bar = ProgressBar(5, stream=out, clock=clock)
    clock.now += 2.0
    bar.update(1, reward=float("nan"), eval_reward=0.7012)
    clock.now += 2.0
    bar.update(2, reward=0.25)
    bar.write("checkpoint saved")
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and "\x1b[K" in text
    assert "reward nan | eval 0.701" in text
    assert "\x1b[Kcheckpoint saved\nstep 2/5 | reward 0.250" in text
    assert text.endswith("\n")


def test_progress_bar_eta_excludes_warmup_and_formats():
    clock, out = _Clock(), io.StringIO()
    bar = ProgressBar(200, start=10, stream=out, min_interval_s=0.0, clock=clock)
    clock.now += 60.0  # first iteration: compilation
    bar.update(11)
    clock.now += 4.0
    bar.update(12)
    lines = out.getvalue().splitlines()
    assert "60.0 s/it | ETA 3h09m" in lines[0]  # 189 left x 60 s
    assert lines[1].endswith("4.0 s/it | ETA 12m32s")  # warm-up left out: 188 x 4 s


def test_progress_bar_disabled_prints_only_messages():
    out = io.StringIO()
    bar = ProgressBar(3, enabled=False, stream=out, clock=_Clock())
    bar.update(1, reward=1.0)
    bar.write("hello")
    bar.update(3)
    bar.close()
    assert out.getvalue() == "hello\n"


def test_format_duration():
    fmt = observe._format_duration
    assert [fmt(5), fmt(59.4), fmt(760), fmt(3600 + 5 * 60), fmt(math.nan)] == ["5s", "59s", "12m40s", "1h05m", "?"]
