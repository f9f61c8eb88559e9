"""The progress display: throttled tqdm-formatted lines off a terminal, a live tqdm bar on one, messages kept apart
from the bar, and the argument checks."""

from __future__ import annotations

import io
import re

import pytest

from fastgrpo.train.metrics.progress import ProgressBar


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _steps(text: str) -> list[int]:
    return [int(re.search(r" (\d+)/\d+ \[", line).group(1)) for line in text.splitlines()]


def test_progress_bar_non_tty_throttles_and_prints_last_step():
    clock, out = _Clock(), io.StringIO()
    bar = ProgressBar(10, stream=out, min_interval_s=10.0, clock=clock)
    for step in range(1, 11):
        clock.now += 4.0
        bar.update(step, reward=0.5, phases={"rollout": 1.0, "update": 3.0})
    bar.close()
    text = out.getvalue()
    assert _steps(text) == [1, 4, 7, 10]  # first, then every >= 10 s (3 iterations of 4 s), and the last
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "step:  10% 1/10 [00:04<00:36,  4.00s/it, reward=0.500 | rollout 1.0s update 3.0s]"
    assert lines[-1] == "step: 100% 10/10 [00:40<00:00,  4.00s/it, reward=0.500 | rollout 1.0s update 3.0s]"


def test_progress_bar_last_step_printed_even_inside_the_interval():
    clock, out = _Clock(), io.StringIO()
    bar = ProgressBar(3, start=1, stream=out, min_interval_s=3600.0, clock=clock)
    for step in (2, 3):
        clock.now += 1.0
        bar.update(step)
    assert _steps(out.getvalue()) == [2, 3]  # printed by update itself, before close
    bar.close()
    assert _steps(out.getvalue()) == [2, 3]


def test_progress_bar_close_flushes_a_held_back_line():
    clock, out = _Clock(), io.StringIO()
    bar = ProgressBar(100, stream=out, min_interval_s=60.0, clock=clock)
    for step in (1, 2, 3):
        clock.now += 1.0
        bar.update(step, eval_reward=float("nan"))
    assert _steps(out.getvalue()) == [1]
    bar.close()
    bar.close()
    bar.update(4)  # after close: ignored
    assert _steps(out.getvalue()) == [1, 3]
    assert out.getvalue().splitlines()[-1].endswith("[00:03<01:37,  1.00it/s, eval=nan]")


def test_progress_bar_rate_leaves_out_the_warmup_iteration():
    clock, out = _Clock(), io.StringIO()
    bar = ProgressBar(200, start=10, stream=out, min_interval_s=0.0, clock=clock)
    clock.now += 60.0  # first iteration: compilation
    bar.update(11)
    clock.now += 4.0
    bar.update(12)
    lines = out.getvalue().splitlines()
    assert lines[0] == "step:   6% 11/200 [01:00<3:09:00, 60.00s/it]"  # 189 left x 60 s
    assert lines[1] == "step:   6% 12/200 [01:04<12:32,  4.00s/it]"  # warm-up left out: 188 x 4 s


def test_progress_bar_tty_draws_a_bar_and_write_keeps_it():
    out = _TTY()
    bar = ProgressBar(5, start=1, stream=out, clock=_Clock())
    bar.update(2, reward=float("nan"), eval_reward=0.7012, phases={"rollout": 0.4})
    bar.update(3, reward=0.25)
    bar.write("checkpoint saved")
    bar.close()
    bar.close()
    text = out.getvalue()
    frames = text.split("\r")
    assert "1/5" in frames[1]  # drawn at once, from start
    assert any("2/5" in f and "reward=nan, eval=0.701 | rollout 0.4s" in f for f in frames)
    assert re.search(r"40%\|[^|]+\| 2/5 \[", text)  # a bar, not a plain line
    before, after = text.split("checkpoint saved\n")
    *_, blanks, rest = before.rsplit("\r", 2)
    assert rest == "" and blanks.strip() == ""  # the bar line was blanked out for the message
    assert "3/5" in after and "reward=0.250" in after  # and redrawn below it
    assert text.endswith("\n") and text.count("\n") == 2  # the message, then the bar left in place on close


def test_progress_bar_tty_redraws_a_repeated_step():
    out = _TTY()
    bar = ProgressBar(4, stream=out)
    bar.update(1, reward=0.1)
    bar.update(1, reward=0.9)
    assert out.getvalue().rsplit("\r", 1)[-1].startswith("step:  25%|")  # redrawn at once, still step 1
    assert out.getvalue().rstrip().endswith("reward=0.900]")
    bar.close()


def test_progress_bar_disabled_prints_only_messages():
    for out in (io.StringIO(), _TTY()):
        bar = ProgressBar(3, enabled=False, stream=out, clock=_Clock())
        bar.update(1, reward=1.0)
        bar.write("hello")
        bar.update(3)
        bar.close()
        bar.write("after close")
        assert out.getvalue() == "hello\nafter close\n"


def test_progress_bar_write_off_a_terminal_is_a_plain_line():
    clock, out = _Clock(), io.StringIO()
    bar = ProgressBar(10, stream=out, clock=clock)
    bar.update(1)
    bar.write("saved")
    assert out.getvalue().splitlines()[1] == "saved"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total": -1}, r"total must be an int >= 0 \(the run's iterations\): got -1"),
        ({"total": 2.5}, "total must be an int >= 0"),
        ({"total": True}, "total must be an int >= 0"),
        ({"total": 10, "start": -3}, r"start must be an int >= 0 \(iterations already done\): got -3"),
        ({"total": 10, "start": None}, "start must be an int >= 0"),
        ({"total": 10, "min_interval_s": -1.0}, r"min_interval_s must be >= 0"),
        ({"total": 10, "min_interval_s": float("nan")}, r"min_interval_s must be >= 0"),
    ],
)
def test_progress_bar_rejects_bad_arguments(kwargs, match):
    out = _TTY()
    with pytest.raises(ValueError, match=match):
        ProgressBar(stream=out, **kwargs)
    assert out.getvalue() == ""  # no bar was started
