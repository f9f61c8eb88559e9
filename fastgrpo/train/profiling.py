"""Profiling of the training loop: NVTX ranges, the Nsight Systems capture window and per-phase timers.

Profiling a run with Nsight Systems records only the iterations of ``profile.steps`` (``A:B``)::

    nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop -o run python -m fastgrpo train \\
        profile.steps=10:12 profile.nvtx=true

:class:`ProfileWindow` calls ``cudaProfilerStart`` at the start of iteration ``A`` and ``cudaProfilerStop`` at the
end of iteration ``B - 1``; :class:`Annotator` marks the phases of each iteration with NVTX ranges in the
``fastgrpo`` domain, so they show up as named rows in the timeline.

All CUDA calls go through the small module-level functions below (``_cuda_*``), which keeps the classes testable on
a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

__all__ = ["NVTX_DOMAIN", "Annotator", "PhaseTimer", "ProfileWindow"]

NVTX_DOMAIN = "fastgrpo"

_MEMORY_HISTORY_ENTRIES = 100_000


# --- CUDA entry points (module-level so that tests can replace them) -------------------------------------------------


def _cuda_synchronize(device: torch.device) -> None:
    torch.cuda.synchronize(device)


def _cuda_profiler_start() -> None:
    torch.cuda.profiler.start()


def _cuda_profiler_stop() -> None:
    torch.cuda.profiler.stop()


def _cuda_memory_history_start() -> None:
    torch.cuda.memory._record_memory_history(max_entries=_MEMORY_HISTORY_ENTRIES)


def _cuda_memory_history_stop() -> None:
    torch.cuda.memory._record_memory_history(enabled=None)


def _cuda_dump_memory_snapshot(path: Path) -> None:
    torch.cuda.memory._dump_snapshot(str(path))


def _cuda_new_event() -> Any:
    return torch.cuda.Event(enable_timing=True)


def _cuda_record_event(event: Any, device: torch.device) -> None:
    event.record(torch.cuda.current_stream(device))


# --- NVTX -------------------------------------------------------------------------------------------------------------


class _NvtxRange:
    """A reusable, stateless context manager that pushes one pre-registered range on enter and pops it on exit."""

    __slots__ = ("_attributes", "_domain")

    def __init__(self, domain: Any, attributes: Any) -> None:
        self._domain = domain
        self._attributes = attributes

    def __enter__(self) -> None:
        self._domain.push_range(self._attributes)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._domain.pop_range()


_NULL_CONTEXT: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


class Annotator:
    """NVTX ranges in one domain ("fastgrpo"), or nothing when disabled.

    Each range name is registered with the domain once and its context manager cached, so ``range(name)`` allocates
    nothing after the first call for that name. Without a profiler attached, the ``nvtx`` package hands out a dummy
    domain whose calls do nothing; the ranges then cost one Python call each.

    Args:
        enabled: emit ranges; needs the ``nvtx`` package.

    Raises:
        ValueError: ``enabled`` and ``nvtx`` cannot be imported.

    Example::

        ann = Annotator(cfg.profile.nvtx)
        with ann.range("rollout"):
            out = rollout(...)
    """

    def __init__(self, enabled: bool) -> None:
        self._enabled = bool(enabled)
        self._domain: Any = None
        self._ranges: dict[str, _NvtxRange] = {}
        if self._enabled:
            try:
                import nvtx
            except ImportError as err:
                raise ValueError(
                    "profile.nvtx needs the nvtx package: pip install nvtx, or set profile.nvtx=false"
                ) from err
            self._domain = nvtx.get_domain(NVTX_DOMAIN)

    @property
    def enabled(self) -> bool:
        """Whether ranges are emitted."""
        return self._enabled

    def range(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A context manager marking its body as the NVTX range ``name`` (a shared no-op when disabled).

        Ranges nest; the range is popped even when the body raises.
        """
        if not self._enabled:
            return _NULL_CONTEXT
        cached = self._ranges.get(name)
        if cached is None:
            cached = _NvtxRange(self._domain, self._domain.get_event_attributes(message=name))
            self._ranges[name] = cached
        return cached


# --- Nsight Systems capture window ------------------------------------------------------------------------------------


class ProfileWindow:
    """Calls cudaProfilerStart at the start of iteration A and cudaProfilerStop at the end of iteration B-1, so that
    `nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop` records exactly iterations [A, B).

    The device is synchronised before each edge, so work queued by earlier iterations does not leak into the capture
    and the last captured iteration's kernels are all inside it. A run resumed past ``A`` but before ``B`` starts the
    capture at its first iteration. With ``memory_snapshot`` the CUDA allocator history is recorded over the same
    window and written to ``snapshot_path`` at its end (open it at https://pytorch.org/memory_viz).

    On a device other than CUDA there is no profiler API: one message says so at construction and the window does
    nothing else (NVTX ranges, if enabled, still mark the iterations).

    Args:
        window: ``(A, B)`` with ``0 <= A < B``, or None for no window.
        device: the training device.
        memory_snapshot: also record and dump the CUDA memory history over the window.
        snapshot_path: where the snapshot pickle goes; required with ``memory_snapshot``.
        log: receives one line per event (window start/stop, snapshot written, no CUDA).

    Raises:
        ValueError: a malformed window, or ``memory_snapshot`` without ``snapshot_path``.
    """

    def __init__(
        self,
        window: tuple[int, int] | None,
        device: torch.device,
        *,
        memory_snapshot: bool = False,
        snapshot_path: Path | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        if window is not None:
            if len(window) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in window):
                raise ValueError(f"profile window must be a pair of ints (A, B), e.g. (10, 12): got {window!r}")
            if not 0 <= window[0] < window[1]:
                raise ValueError(f"profile window must satisfy 0 <= A < B (iterations [A, B)): got {window!r}")
        if memory_snapshot and snapshot_path is None:
            raise ValueError("memory_snapshot=True needs snapshot_path, e.g. run_dir / 'memory_snapshot.pickle'")
        self._window = window
        self._device = torch.device(device)
        self._memory_snapshot = memory_snapshot
        self._snapshot_path = Path(snapshot_path) if snapshot_path is not None else None
        self._log = log
        self._active = False
        self._done = False
        self._cuda = self._device.type == "cuda"
        if window is not None and not self._cuda:
            start, end = window
            self._log(
                f"profile.steps: no CUDA device, so no cudaProfilerStart/Stop; NVTX ranges still mark iterations "
                f"{start}..{end - 1}"
            )

    @property
    def active(self) -> bool:
        """Whether the profiler capture is running (between the window's start and stop)."""
        return self._active

    def begin(self, step: int) -> None:
        """Call at the start of iteration ``step`` (0-based); starts the capture at the window's first iteration."""
        if self._window is None or not self._cuda or self._active or self._done:
            return
        start, end = self._window
        if not start <= step < end:
            return
        _cuda_synchronize(self._device)
        if self._memory_snapshot:
            _cuda_memory_history_start()
        _cuda_profiler_start()
        self._active = True
        self._log(f"profile: cudaProfilerStart at iteration {step} (window {start}:{end})")

    def end(self, step: int) -> None:
        """Call at the end of iteration ``step``; stops the capture after the window's last iteration ``B - 1``."""
        if not self._active or self._window is None:
            return
        start, end = self._window
        if step < end - 1:
            return
        _cuda_synchronize(self._device)
        _cuda_profiler_stop()
        self._active = False
        self._done = True
        self._log(f"profile: cudaProfilerStop after iteration {step} (window {start}:{end})")
        if self._memory_snapshot:
            assert self._snapshot_path is not None
            self._snapshot_path.parent.mkdir(parents=True, exist_ok=True)
            _cuda_dump_memory_snapshot(self._snapshot_path)
            _cuda_memory_history_stop()
            self._log(f"profile: memory snapshot written to {self._snapshot_path} (view at pytorch.org/memory_viz)")


# --- phase timing -----------------------------------------------------------------------------------------------------


class PhaseTimer:
    """Wall-clock seconds per named phase of one iteration, without host synchronisation inside phases.
    On CUDA it records a pair of CUDA events per phase and reads them once in `read()`; on CPU perf_counter.

    On CUDA a phase's time is the span between its two events on the device's current stream, i.e. the time the
    stream took for the phase's work (including any idle gap while the host was still queueing it). Events are
    reused across iterations, so steady state allocates none.

    Args:
        device: the training device.

    Example::

        timer = PhaseTimer(device)
        with timer.phase("rollout"):
            ...
        seconds = timer.read()  # {"rollout": 1.12, ...}
    """

    def __init__(self, device: torch.device) -> None:
        self._device = torch.device(device)
        self._cuda = self._device.type == "cuda"
        self._cpu_totals: dict[str, float] = {}
        self._pending: list[tuple[str, Any, Any]] = []
        self._free_events: list[Any] = []

    @contextlib.contextmanager
    def _cpu_phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._cpu_totals[name] = self._cpu_totals.get(name, 0.0) + (time.perf_counter() - t0)

    @contextlib.contextmanager
    def _cuda_phase(self, name: str) -> Iterator[None]:
        start = self._free_events.pop() if self._free_events else _cuda_new_event()
        _cuda_record_event(start, self._device)
        try:
            yield
        finally:
            stop = self._free_events.pop() if self._free_events else _cuda_new_event()
            _cuda_record_event(stop, self._device)
            self._pending.append((name, start, stop))

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Time the body as phase ``name``; the same name twice before :meth:`read` adds up."""
        return self._cuda_phase(name) if self._cuda else self._cpu_phase(name)

    def read(self) -> dict[str, float]:
        """Seconds per phase since the last read, in first-seen order; resets. Synchronises once on CUDA."""
        if not self._cuda:
            out = self._cpu_totals
            self._cpu_totals = {}
            return out
        out: dict[str, float] = {}
        if self._pending:
            _cuda_synchronize(self._device)
            for name, start, stop in self._pending:
                out[name] = out.get(name, 0.0) + start.elapsed_time(stop) / 1000.0
                self._free_events.extend((start, stop))
            self._pending.clear()
        return out
