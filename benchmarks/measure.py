"""Settings, timers and machine facts of the kernel benchmarks (no environment reads: ``conftest.py`` does those).

Timers: on CUDA, ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs) gives the median and the
20th/80th percentiles; on CPU the rounds that pytest-benchmark timed give them. All times are seconds, all sizes
bytes, bandwidths GB/s (1e9 bytes per second).
"""

from __future__ import annotations

import importlib.util
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
LATENT_DTYPES = ("bf16", "fp32")

# FASTGRPO_BENCH_SIZE presets. "full": FLUX.1 1024x1024 latents (128x128x16 packed into 4096 tokens of 64
# channels) at the GRPO group sizes trainers use. compiled_ref recompiles per shape, so it runs on one batch size.
SIZE_PRESETS = {
    "full": {
        "per_sample": (4096, 64),
        "batches": (8, 16, 24),
        "compiled_batches": (24,),
        "compiled_dtypes": LATENT_DTYPES,
    },
    "small": {"per_sample": (256, 64), "batches": (8,), "compiled_batches": (8,), "compiled_dtypes": ("fp32",)},
}


@dataclass(frozen=True)
class BenchSettings:
    """What the benchmark session runs, fixed at configuration time."""

    size: str  # "small" or "full" (FASTGRPO_BENCH_SIZE)
    device: str  # "cuda" or "cpu"
    per_sample: tuple[int, int]  # latent tokens and channels of one sample
    batches: tuple[int, ...]  # group sizes B
    dtypes: tuple[str, ...]  # latent dtypes, names of DTYPES in bench_kernels.py
    compiled_batches: tuple[int, ...]  # the batches compiled_ref runs at
    compiled_dtypes: tuple[str, ...]  # the dtypes compiled_ref runs at
    fused_skip_reason: str | None  # why the Triton provider cannot give a speed figure here, or None
    summary_path: str | None  # FASTGRPO_BENCH_SUMMARY: where to write the JSON summary
    commit: str | None  # FASTGRPO_BENCH_COMMIT: commit to report when the tree has no .git

    @classmethod
    def build(cls, size: str | None, summary_path: str | None, commit: str | None, interpret: bool) -> BenchSettings:
        """Settings for this machine; ``size=None`` means "full" on CUDA and "small" elsewhere."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        size = size or ("full" if device == "cuda" else "small")
        if size not in SIZE_PRESETS:
            choices = " or ".join(sorted(SIZE_PRESETS))
            raise pytest.UsageError(f"FASTGRPO_BENCH_SIZE={size!r} is not valid; set it to {choices}, or unset it")
        preset = SIZE_PRESETS[size]
        return cls(
            size=size,
            device=device,
            per_sample=preset["per_sample"],
            batches=preset["batches"],
            dtypes=LATENT_DTYPES,
            compiled_batches=preset["compiled_batches"],
            compiled_dtypes=preset["compiled_dtypes"],
            fused_skip_reason=_fused_skip_reason(device, interpret),
            summary_path=summary_path or None,
            commit=commit or None,
        )


def _fused_skip_reason(device: str, interpret: bool) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "fused: the triton package is not installed"
    if device != "cuda":
        return "fused: Triton kernels need a CUDA device (torch.cuda.is_available() is False)"
    if interpret:
        return "fused: TRITON_INTERPRET=1 runs Triton's CPU interpreter, which is no speed figure; unset it"
    return None


SETTINGS = pytest.StashKey[BenchSettings]()


def git_commit(override: str | None) -> str:
    """``override`` if given, else ``git rev-parse HEAD`` of the repository, else ``"unknown"``."""
    if override:
        return override
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(settings: BenchSettings) -> dict[str, object]:
    """Device name, library versions, commit and size preset: the fields every benchmark record carries."""
    if settings.device == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = f"cpu: {_cpu_name()} ({torch.get_num_threads()} threads)"
    return {
        "device": settings.device,
        "device_name": device_name,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "commit": git_commit(settings.commit),
        "size": settings.size,
    }


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Timing:
    """Median and 20th/80th percentiles of one call (seconds) and where they came from."""

    median_s: float
    p20_s: float
    p80_s: float
    timer: str


def time_cuda(fn: Callable[[], object]) -> Timing:
    """CUDA-event timing with L2 flushes (Triton's ``do_bench``): the Liger-Kernel way of reporting kernels."""
    from triton.testing import do_bench

    median, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    return Timing(median * 1e-3, p20 * 1e-3, p80 * 1e-3, "triton.testing.do_bench")


def _quantile(sorted_data: list[float], q: float) -> float:
    pos = q * (len(sorted_data) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_data) - 1)
    return sorted_data[lo] + (sorted_data[hi] - sorted_data[lo]) * (pos - lo)


def timing_of_benchmark(benchmark: object) -> Timing | None:
    """The timing pytest-benchmark measured (None when it did not time, e.g. ``--benchmark-disable``)."""
    stats = getattr(benchmark, "stats", None)
    if getattr(benchmark, "disabled", False) or stats is None or not stats.stats.data:
        return None
    data = sorted(stats.stats.data)
    return Timing(statistics.median(data), _quantile(data, 0.2), _quantile(data, 0.8), "pytest-benchmark")


def time_wall(fn: Callable[[], object], device: str, budget_s: float = 0.2, max_runs: int = 200) -> float:
    """Median wall time of ``fn`` (synchronised), over at least 5 runs and about ``budget_s`` seconds."""
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class CopyBandwidth:
    """Achievable bandwidth at a given traffic: a device copy ``dst.copy_(src)`` moving the same bytes (cached)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._gbps: dict[int, float] = {}

    def gbps(self, nbytes: int) -> float:
        """GB/s of a copy that reads ``nbytes / 2`` and writes ``nbytes / 2`` bytes."""
        if nbytes not in self._gbps:
            half = max(nbytes // 2, 1)
            src = torch.ones(half, dtype=torch.uint8, device=self.device)
            dst = torch.empty_like(src)
            copy = lambda: dst.copy_(src)  # noqa: E731
            copy()
            seconds = time_cuda(copy).median_s if self.device == "cuda" else time_wall(copy, self.device)
            self._gbps[nbytes] = 2 * half / seconds / 1e9
        return self._gbps[nbytes]


def first_call_seconds(fn: Callable[[], object], device: str) -> float:
    """Wall time of one synchronised call (the first call includes JIT or ``torch.compile`` compilation)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_memory(fn: Callable[[], object], device: str) -> dict[str, int]:
    """CUDA memory of one call: ``peak_mem_bytes`` (allocated at the peak) and the part above what was live before."""
    if device != "cuda":
        return {}
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_mem_bytes": peak, "peak_mem_above_inputs_bytes": peak - before}
