"""Profiling helpers on the CPU: NVTX ranges, the profiler window (faked CUDA calls), phase timers."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from fastgrpo.train import profiling
from fastgrpo.train.profiling import NVTX_DOMAIN, Annotator, PhaseTimer, ProfileWindow

CPU = torch.device("cpu")
FAKE_CUDA = torch.device("cuda")


# --- Annotator --------------------------------------------------------------------------------------------------------


class _RecordingDomain:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.depth = 0

    def get_event_attributes(self, message=None, **_):
        return message

    def push_range(self, attributes=None, **_):
        self.events.append(f"push:{attributes}")
        self.depth += 1

    def pop_range(self):
        self.events.append("pop")
        self.depth -= 1


def test_annotator_disabled_is_a_shared_noop():
    ann = Annotator(False)
    assert not ann.enabled
    ctx = ann.range("rollout")
    assert ctx is ann.range("update")
    with ann.range("rollout"), ann.range("inner"):
        pass


def test_annotator_enabled_with_real_nvtx_nests():
    pytest.importorskip("nvtx")
    ann = Annotator(True)
    assert ann.enabled
    with ann.range("iteration"):
        with ann.range("rollout"):
            pass
        with ann.range("rollout"):
            pass
    assert ann.range("rollout") is ann.range("rollout")  # cached per name


def test_annotator_pushes_in_domain_and_pops_on_exception(monkeypatch):
    nvtx = pytest.importorskip("nvtx")
    domain = _RecordingDomain()
    names: list[str] = []

    def fake_get_domain(name=None):
        names.append(name)
        return domain

    monkeypatch.setattr(nvtx, "get_domain", fake_get_domain)
    ann = Annotator(True)
    assert names == [NVTX_DOMAIN]
    with pytest.raises(RuntimeError, match="boom"), ann.range("outer"), ann.range("inner"):
        raise RuntimeError("boom")
    assert domain.events == ["push:outer", "push:inner", "pop", "pop"]
    assert domain.depth == 0


def test_annotator_without_nvtx_says_how_to_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvtx", None)
    with pytest.raises(ValueError, match=r"pip install nvtx.*profile\.nvtx=false"):
        Annotator(True)
    assert not Annotator(False).enabled  # disabled does not need the package


# --- ProfileWindow ----------------------------------------------------------------------------------------------------


@pytest.fixture
def cuda_calls(monkeypatch):
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(profiling, "_cuda_synchronize", lambda device: calls.append(("sync", None)))
    monkeypatch.setattr(profiling, "_cuda_profiler_start", lambda: calls.append(("start", None)))
    monkeypatch.setattr(profiling, "_cuda_profiler_stop", lambda: calls.append(("stop", None)))
    monkeypatch.setattr(profiling, "_cuda_memory_history_start", lambda: calls.append(("history_start", None)))
    monkeypatch.setattr(profiling, "_cuda_memory_history_stop", lambda: calls.append(("history_stop", None)))
    monkeypatch.setattr(profiling, "_cuda_dump_memory_snapshot", lambda path: calls.append(("dump", path)))
    return calls


def _drive(window: ProfileWindow, steps: range, calls: list) -> dict[str, list[tuple[str, int]]]:
    """Run begin/end over ``steps`` and note at which hook each start/stop happened."""
    seen: dict[str, list[tuple[str, int]]] = {"start": [], "stop": []}
    for step in steps:
        before = len(calls)
        window.begin(step)
        seen["start"] += [("begin", step) for name, _ in calls[before:] if name == "start"]
        assert window.active == (3 <= step < 5)
        before = len(calls)
        window.end(step)
        seen["stop"] += [("end", step) for name, _ in calls[before:] if name == "stop"]
    return seen


def test_profile_window_on_cpu_logs_once_and_does_nothing(cuda_calls):
    logs: list[str] = []
    window = ProfileWindow((3, 5), CPU, log=logs.append)
    for step in range(10):
        window.begin(step)
        window.end(step)
        assert not window.active
    assert cuda_calls == []
    assert len(logs) == 1
    assert "no CUDA device" in logs[0] and "3..4" in logs[0]


def test_profile_window_without_window_is_silent(cuda_calls):
    logs: list[str] = []
    window = ProfileWindow(None, FAKE_CUDA, log=logs.append)
    for step in range(5):
        window.begin(step)
        window.end(step)
    assert cuda_calls == [] and logs == []


def test_profile_window_starts_at_a_and_stops_after_b_minus_1(cuda_calls):
    window = ProfileWindow((3, 5), FAKE_CUDA, log=lambda _: None)
    seen = _drive(window, range(10), cuda_calls)
    assert seen == {"start": [("begin", 3)], "stop": [("end", 4)]}
    names = [name for name, _ in cuda_calls]
    assert names == ["sync", "start", "sync", "stop"]  # synchronised before each edge, nothing else
    assert not window.active


def test_profile_window_memory_snapshot(cuda_calls, tmp_path):
    path = tmp_path / "run" / "memory_snapshot.pickle"
    logs: list[str] = []
    window = ProfileWindow((3, 5), FAKE_CUDA, memory_snapshot=True, snapshot_path=path, log=logs.append)
    _drive(window, range(10), cuda_calls)
    names = [name for name, _ in cuda_calls]
    assert names == ["sync", "history_start", "start", "sync", "stop", "dump", "history_stop"]
    assert dict(cuda_calls)["dump"] == path
    assert path.parent.is_dir()
    assert any(str(path) in line for line in logs)


def test_profile_window_resumed_inside_window_starts_at_first_step(cuda_calls):
    window = ProfileWindow((3, 6), FAKE_CUDA, log=lambda _: None)
    for step in range(4, 10):
        window.begin(step)
        window.end(step)
    assert [name for name, _ in cuda_calls if name in ("start", "stop")] == ["start", "stop"]


def test_profile_window_checks_arguments():
    with pytest.raises(ValueError, match="0 <= A < B"):
        ProfileWindow((5, 5), CPU)
    with pytest.raises(ValueError, match="snapshot_path"):
        ProfileWindow((1, 2), FAKE_CUDA, memory_snapshot=True)


# --- PhaseTimer -------------------------------------------------------------------------------------------------------


def test_phase_timer_sums_repeats_and_resets(monkeypatch):
    ticks = iter([0.0, 1.0, 1.0, 1.5, 2.0, 4.0, 10.0, 10.25])
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(ticks))
    timer = PhaseTimer(CPU)
    with timer.phase("rollout"):
        pass
    with timer.phase("update"):
        pass
    with timer.phase("rollout"):
        pass
    assert timer.read() == {"rollout": 3.0, "update": 0.5}
    assert timer.read() == {}
    with timer.phase("reward"):
        pass
    assert timer.read() == {"reward": 0.25}


def test_phase_timer_real_clock_counts_exceptions():
    timer = PhaseTimer(CPU)
    with pytest.raises(KeyError), timer.phase("x"):
        raise KeyError("inside")
    out = timer.read()
    assert set(out) == {"x"} and out["x"] >= 0.0


class _FakeEvent:
    def __init__(self, clock: list[float]) -> None:
        self._clock = clock
        self.time_ms = math.nan

    def elapsed_time(self, other: _FakeEvent) -> float:
        return other.time_ms - self.time_ms


def test_phase_timer_cuda_events_read_once_and_reuse(monkeypatch):
    clock = [0.0]
    created: list[_FakeEvent] = []
    syncs: list[torch.device] = []

    def new_event():
        created.append(_FakeEvent(clock))
        return created[-1]

    def record(event, device):
        event.time_ms = clock[0]
        clock[0] += 500.0  # each record advances the fake stream by 0.5 s

    monkeypatch.setattr(profiling, "_cuda_new_event", new_event)
    monkeypatch.setattr(profiling, "_cuda_record_event", record)
    monkeypatch.setattr(profiling, "_cuda_synchronize", syncs.append)
    timer = PhaseTimer(FAKE_CUDA)
    for _ in range(2):
        with timer.phase("rollout"):
            pass
    with timer.phase("update"):
        pass
    assert syncs == []  # no synchronisation inside phases
    assert timer.read() == {"rollout": 1.0, "update": 0.5}
    assert len(syncs) == 1
    with timer.phase("rollout"):
        pass
    assert timer.read() == {"rollout": 0.5}
    assert len(created) == 6  # the second iteration reused the first one's events
    assert timer.read() == {} and len(syncs) == 2
