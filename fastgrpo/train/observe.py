"""Observability for the training loop: NVTX ranges, the Nsight Systems capture window, phase timers, FLOPs and MFU,
peak memory, and a one-line progress bar.

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
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "NVTX_DOMAIN",
    "PEAK_TFLOPS",
    "Annotator",
    "PhaseTimer",
    "ProfileWindow",
    "ProgressBar",
    "count_flops",
    "mfu",
    "peak_flops",
    "peak_memory_gib",
    "reset_peak_memory",
]

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


def _cuda_device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


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


# --- FLOPs, MFU, memory -----------------------------------------------------------------------------------------------


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of fn, counted by torch.utils.flop_counter.FlopCounterMode (display=False).

    Only the operators FlopCounterMode knows (matmuls, convolutions, attention) are counted; a multiply-add is two
    FLOPs. ``fn`` runs once for real, so call it on a representative batch outside the timed loop.
    """
    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return int(mode.get_total_flops())


# Dense (no sparsity) BF16 tensor-core peaks in TFLOPS, matched as substrings of torch.cuda.get_device_name(); the
# longest matching key wins (so "H100 PCIe" beats "H100", "L40S" beats "L40" and "L4"). Datasheets state the
# sparsity figure; the dense figure is half of it.
PEAK_TFLOPS: dict[str, float] = {
    "B200": 2250.0,  # NVIDIA HGX B200 datasheet: 36 PFLOPS BF16 with sparsity per 8 GPUs
    "H200 NVL": 835.0,  # NVIDIA H200 Tensor Core GPU datasheet (H200 NVL): 1,671 TFLOPS with sparsity
    "H200": 989.0,  # NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): 1,979 TFLOPS with sparsity
    "H100 NVL": 835.0,  # NVIDIA H100 Tensor Core GPU datasheet (H100 NVL): 1,671 TFLOPS with sparsity
    "H100 PCIe": 756.0,  # NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe): 1,513 TFLOPS with sparsity
    "H100": 989.0,  # NVIDIA H100 Tensor Core GPU datasheet (H100 SXM): 1,979 TFLOPS with sparsity
    "A100": 312.0,  # NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS dense, 624 with sparsity
    "L40S": 362.0,  # NVIDIA L40S GPU datasheet: 362.05 TFLOPS dense, 733 with sparsity
    "L40": 181.0,  # NVIDIA L40 GPU datasheet: 181.05 TFLOPS dense, 362.1 with sparsity
    "L4": 121.0,  # NVIDIA L4 Tensor Core GPU datasheet: 242 TFLOPS with sparsity
    "4090": 165.0,  # NVIDIA Ada Lovelace GPU architecture whitepaper (RTX 4090): 165.2 TFLOPS, FP32 accumulate
}


def peak_flops(device: torch.device) -> float | None:
    """Dense BF16 peak FLOP/s of ``device`` from :data:`PEAK_TFLOPS`; None on CPU or for a GPU not in the table."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = _cuda_device_name(device).lower()
    matches = [key for key in PEAK_TFLOPS if key.lower() in name]
    if not matches:
        return None
    return PEAK_TFLOPS[max(matches, key=len)] * 1e12


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation ``flops / seconds / peak``; None when the peak is unknown or the inputs are unusable."""
    if peak is None or not (math.isfinite(peak) and peak > 0):
        return None
    if not (math.isfinite(seconds) and seconds > 0) or not math.isfinite(flops):
        return None
    return flops / seconds / peak


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory allocated by tensors on ``device`` since the last reset, in GiB; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on ``device`` (nothing off CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# --- progress bar -----------------------------------------------------------------------------------------------------

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
