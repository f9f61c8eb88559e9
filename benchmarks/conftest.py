"""pytest set-up of the kernel benchmarks: collects ``bench_*.py``, reads the settings, keeps the session summary.

Environment variables (read here, at configuration time; see benchmarks/README.md):

- ``FASTGRPO_BENCH_SIZE=small|full``: latent sizes. ``full`` (default on CUDA): FLUX 1024x1024 latents, 4096 x 64
  elements per sample, batches 8, 16, 24. ``small`` (default without CUDA): 256 x 64 per sample, batch 8, so that
  ``pytest benchmarks/`` finishes in a few minutes on a laptop CPU.
- ``FASTGRPO_BENCH_SUMMARY=path``: write a compact JSON summary (case -> provider -> median, GB/s, fraction of
  the copy bandwidth, speedup against the Flow-GRPO eager baseline) there, updated after every benchmark.
- ``FASTGRPO_BENCH_COMMIT=sha``: the commit to report (for a copy of the tree without ``.git``); otherwise
  ``git rev-parse HEAD``, or ``unknown``.

The repository's pytest configuration (``pyproject.toml``) collects ``test_*.py`` only; ``pytest_collect_file``
below adds ``bench_*.py`` for this directory without a second ini file that would shadow the root one.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest
from measure import SETTINGS, BenchSettings, CopyBandwidth, machine_facts
from summary import STORE, ResultStore

from fastgrpo import _env

BENCH_FILES = "bench_*.py"


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if not fnmatch.fnmatch(file_path.name, BENCH_FILES):
        return None
    # The python plugin already collects files named on the command line or matching python_files.
    if parent.session.isinitpath(file_path):
        return None
    if any(fnmatch.fnmatch(file_path.name, p) for p in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_configure(config: pytest.Config) -> None:
    settings = BenchSettings.build(
        size=os.environ.get("FASTGRPO_BENCH_SIZE", "").strip().lower() or None,
        summary_path=os.environ.get("FASTGRPO_BENCH_SUMMARY"),
        commit=os.environ.get("FASTGRPO_BENCH_COMMIT"),
        interpret=_env.triton_interpret(),
    )
    config.stash[SETTINGS] = settings
    config.stash[STORE] = ResultStore(settings.summary_path)


@pytest.fixture(scope="session")
def bench_settings(pytestconfig: pytest.Config) -> BenchSettings:
    return pytestconfig.stash[SETTINGS]


@pytest.fixture(scope="session")
def bench_facts(bench_settings: BenchSettings) -> dict[str, object]:
    """Device name, versions, commit and size preset (the same for every benchmark of the session)."""
    return machine_facts(bench_settings)


@pytest.fixture(scope="session")
def copy_bandwidth(bench_settings: BenchSettings) -> CopyBandwidth:
    """The session's peak-bandwidth yardstick: device copies of the same bytes as each benchmark."""
    return CopyBandwidth(bench_settings.device)


@pytest.fixture(scope="session")
def result_store(pytestconfig: pytest.Config, bench_facts: dict[str, object]) -> ResultStore:
    store = pytestconfig.stash[STORE]
    store.meta = dict(bench_facts)
    return store


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    store = config.stash.get(STORE, None)
    if store is None or not any("median_s" in r for case in store.cases.values() for r in case.values()):
        return  # nothing timed (e.g. --benchmark-disable)
    settings = config.stash[SETTINGS]
    terminalreporter.section(f"fastgrpo kernels on {settings.device} ({settings.size}): median [speedup vs eager]")
    for line in store.table():
        terminalreporter.write_line(line)
    if store.path is not None:
        terminalreporter.write_line(f"summary written to {store.path}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    store = session.config.stash.get(STORE, None)
    if store is not None:
        store.write()  # also when nothing ran, so that FASTGRPO_BENCH_SUMMARY always names a file afterwards


@pytest.hookimpl(tryfirst=True)
def pytest_benchmark_generate_commit_info(config: pytest.Config) -> dict[str, object] | None:
    """Report ``FASTGRPO_BENCH_COMMIT`` when set (a tree copied without ``.git``); else pytest-benchmark's own."""
    commit = config.stash[SETTINGS].commit
    if commit is None:
        return None
    return {"id": commit, "time": None, "author_time": None, "dirty": None, "project": "fastgrpo", "branch": None}


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    output_json["fastgrpo_summary"] = config.stash[STORE].as_json()
