"""Checkpoint benchmarks: what the checksums cost.

- ``checkpoint/save/{checksums,no_checksums}``: :meth:`~fastgrpo.train.storage.checkpoints.CheckpointManager.save`
  of a shared state of ``FASTGRPO_BENCH_CHECKPOINT_MIB`` MiB of float32 tensors (default 256) into a temporary
  directory on the disk of the run (``FASTGRPO_BENCH_CHECKPOINT_DIR``, default the system's temporary folder);
  ``no_checksums`` replaces the SHA-256 by a constant, so the pair measured side by side shows what hashing adds.
- ``checkpoint/verify``: :meth:`~fastgrpo.train.storage.checkpoint_dir.CheckpointDirectory.verify` of that
  checkpoint (every file read and hashed, as before a resume).

Recorded in ``extra_info``: ``gib``, ``s_per_gib`` (median seconds per GiB). Nothing is asserted about speed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from measure import timing_of_benchmark

from fastgrpo.train.storage import checkpoints as checkpoints_module
from fastgrpo.train.storage.checkpoints import CheckpointManager

MIB = int(os.environ.get("FASTGRPO_BENCH_CHECKPOINT_MIB", "256"))


@pytest.fixture(scope="module")
def state() -> dict[str, list[torch.Tensor]]:
    chunk = 64 * 2**20 // 4  # 64 MiB of float32 per tensor
    count = max(1, MIB // 64)
    return {"weights": [torch.randn(chunk, generator=torch.Generator().manual_seed(i)) for i in range(count)]}


@pytest.fixture
def directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fastgrpo-bench-", dir=os.environ.get("FASTGRPO_BENCH_CHECKPOINT_DIR")))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _gib(state: dict[str, list[torch.Tensor]]) -> float:
    return sum(t.numel() * t.element_size() for t in state["weights"]) / 2**30


def _record(benchmark, state) -> None:
    gib = _gib(state)
    timing = timing_of_benchmark(benchmark)
    benchmark.extra_info.update(gib=gib, s_per_gib=timing.median_s / gib if timing is not None else None)


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "no_checksums"])
def test_save(benchmark, state, directory, monkeypatch, checksums):
    if not checksums:
        monkeypatch.setattr(checkpoints_module, "file_sha256", lambda path: "0" * 64)
    manager = CheckpointManager(directory, keep=1)
    steps = iter(range(10**6))
    benchmark.group = "checkpoint/save"
    benchmark.pedantic(lambda: manager.save(next(steps), state, {"rank": 0}), rounds=3, iterations=1)
    _record(benchmark, state)


def test_verify(benchmark, state, directory):
    manager = CheckpointManager(directory, keep=1)
    path = manager.save(1, state, {"rank": 0})
    benchmark.group = "checkpoint/verify"
    problem = benchmark.pedantic(lambda: manager.verify(path), rounds=3, iterations=1)
    assert problem is None  # a check that the benchmark measured the intact path, not a speed claim
    _record(benchmark, state)
