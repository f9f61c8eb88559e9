"""Helpers of the fault-injection tests of the ``fastgrpo`` command line (``test_cli_faults.py``).

Every scenario runs the real CLI as a subprocess (``python -m fastgrpo.train.cli``), or a small ``python -c``
wrapper that injects a fault and then calls ``fastgrpo.train.cli.main``. Checkpoints are checked here with an
independent reading of their ``COMPLETE`` markers (size and SHA-256 of every listed file), not with fastgrpo's own
code, so that a fault in that code cannot hide itself.

Scenarios run on a small thread pool (:class:`ScenarioPool`): starting one CLI process costs several seconds of
imports, so two scenarios run at once while the tests, in order, wait for theirs and check the results.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the interpreter of the environment the tests run in (the one with fastgrpo installed)
PYTHON = sys.executable
CLI = [PYTHON, "-m", "fastgrpo.train.cli"]

#: a tiny, fast run of the built-in tiny editor on the synthetic task (CPU): 2 rollouts per iteration, a
#: checkpoint after every iteration, no evaluation
TINY = [
    "sampler.prompts_per_step=1",
    "sampler.group_size=2",
    "sampler.train_steps=2",
    "sampler.eval_steps=2",
    "data.held_out=2",
    "logging.eval_every=0",
    "logging.save_every=1",
    "logging.progress=false",
]

#: files every checkpoint of a single-process run holds (besides ``COMPLETE``)
CHECKPOINT_FILES = ("shared.safetensors", "rank-00000.safetensors", "lora/pytorch_lora_weights.safetensors")

#: short timeouts and no retries for a judge nothing listens on
FAST_HTTP = "http: {timeout_s: 1, connect_timeout_s: 0.5, max_retries: 0, backoff_base_s: 0, deadline_s: 2}"


def judge_reward(*, api_key_env: str | None = None) -> str:
    """A ``rewards.components=...`` override: one ``mllm_judge`` component named ``judge`` at an endpoint nothing
    listens on (port 9, "discard"), failing fast; no CLIP model is needed."""
    key = f", api_key_env: {api_key_env}" if api_key_env else ""
    endpoint = f'{{base_url: "http://127.0.0.1:9/v1", model: m{key}}}'
    return f"rewards.components={{judge: {{type: mllm_judge, weight: 1.0, endpoints: [{endpoint}], {FAST_HTTP}}}}}"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


# --- running the command line --------------------------------------------------------------------------------


@dataclass
class Result:
    """One finished command: its arguments, exit status, output and wall time."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        tail = "\n".join(self.stderr.splitlines()[-25:])
        return f"$ {' '.join(self.argv)}\nexit {self.returncode} after {self.seconds:.1f} s; stderr (tail):\n{tail}"

    def lines(self, prefix: str) -> list[str]:
        """stderr lines that start with ``prefix``."""
        return [line for line in self.stderr.splitlines() if line.startswith(prefix)]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: unbuffered output, one thread (two processes share the cores), no
    judge key that a scenario expects to be missing."""
    env = dict(os.environ)
    env.pop("FASTGRPO_TEST_MISSING_KEY", None)
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra)
    return env


def run(argv: list[str], *, cwd: Path, timeout: float) -> Result:
    """Run ``argv`` to the end (killed and reported as a failure after ``timeout`` seconds)."""
    started = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        err = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr or ""
        raise AssertionError(f"timed out after {timeout} s: {' '.join(argv)}\nstderr (tail):\n{err[-3000:]}") from None
    return Result(list(argv), done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def run_cli(args: list[str], *, cwd: Path, timeout: float = 120) -> Result:
    """``fastgrpo ARGS`` as a subprocess."""
    return run([*CLI, *args], cwd=cwd, timeout=timeout)


class Background:
    """``fastgrpo ARGS`` started in the background (output to files, so nothing blocks on a full pipe), for
    scenarios that signal the process while it trains."""

    def __init__(self, args: list[str], *, cwd: Path) -> None:
        self.argv = [*CLI, *args]
        self._out, self._err = cwd / "stdout.txt", cwd / "stderr.txt"
        self.started = time.monotonic()
        with open(self._out, "w") as out, open(self._err, "w") as err:
            self.process = subprocess.Popen(self.argv, cwd=cwd, env=cli_env(), stdout=out, stderr=err)

    def wait_for(self, condition: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll ``condition`` until it holds; fail when the process exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the run exited before {what}:\n{self.finish(timeout=1).describe()}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"no {what} within {timeout} s:\n{self.finish(timeout=10).describe()}")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, *, timeout: float) -> Result:
        """Wait for the exit (kill and fail after ``timeout`` seconds); the output."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            raise AssertionError(f"still running {timeout} s after the signal: {' '.join(self.argv)}\n"
                                 f"stderr (tail):\n{self._err.read_text()[-3000:]}") from None  # fmt: skip
        seconds = time.monotonic() - self.started
        result = Result(self.argv, self.process.returncode, self._out.read_text(), self._err.read_text(), seconds)
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


#: a wrapper around ``fastgrpo.train.cli.main`` that replaces ``safetensors.torch.save_file`` (what the LoRA writer
#: of a checkpoint uses, through diffusers) with a fault from its FROM-th call on
_INJECT = """
import os, signal, sys
import safetensors, safetensors.torch
real, calls, kind, first = safetensors.torch.save_file, [0], {kind!r}, {first}
def faulty(*args, **kwargs):
    calls[0] += 1
    if calls[0] >= first:
        if kind == "enospc":
            raise safetensors.SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)")
        if kind == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
safetensors.torch.save_file = faulty
from fastgrpo.train.cli import main
sys.exit(main(sys.argv[1:]))
"""


#: a wrapper around ``fastgrpo.train.cli.main`` in which the process sends itself SIGINT at the end of iteration 2
#: (a graceful stop follows) and again once the loop has stopped, as a second Ctrl-C pressed a moment late does
_LATE_SECOND_SIGINT = """
import os, signal, sys
from fastgrpo.train.loop import Trainer
iteration, result = Trainer.iteration, Trainer._result
def first(self, step):
    row = iteration(self, step)
    if step == 1:
        os.kill(os.getpid(), signal.SIGINT)
    return row
def second(self, *args):
    os.kill(os.getpid(), signal.SIGINT)
    return result(self, *args)
Trainer.iteration, Trainer._result = first, second
from fastgrpo.train.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_with_late_second_sigint(args: list[str], *, cwd: Path, timeout: float = 120) -> Result:
    """``fastgrpo ARGS`` receiving SIGINT during iteration 2 and a second one after the loop stopped."""
    return run([PYTHON, "-c", _LATE_SECOND_SIGINT, *args], cwd=cwd, timeout=timeout)


def run_with_fault(kind: str, first: int, args: list[str], *, cwd: Path, timeout: float = 120) -> Result:
    """``fastgrpo ARGS`` in a wrapper whose ``safetensors.torch.save_file`` fails from call ``first`` on:
    ``kind="enospc"`` raises safetensors' disk-full error, ``kind="sigkill"`` kills the process."""
    assert kind in ("enospc", "sigkill")
    return run([PYTHON, "-c", _INJECT.format(kind=kind, first=first), *args], cwd=cwd, timeout=timeout)


# --- checkpoints, read independently of fastgrpo --------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete, intact checkpoint of a single-process run, or ``None``: its ``COMPLETE``
    marker names its step and lists the checkpoint files, each with the listed size and SHA-256."""
    try:
        marker = json.loads((path / "COMPLETE").read_text())
    except (OSError, ValueError) as error:
        return f"no readable COMPLETE ({error})"
    if marker.get("step") != int(path.name.rsplit("-", 1)[1]) or marker.get("world_size") != 1:
        return f"COMPLETE does not fit the directory: {marker}"
    files = marker.get("files") or {}
    missing = [name for name in CHECKPOINT_FILES if name not in files]
    if missing:
        return f"COMPLETE does not list {missing}"
    for name, listed in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != listed["bytes"] or sha256(file) != listed["sha256"]:
            return f"{name} differs from what COMPLETE lists"
    return None


def complete_steps(run_dir: Path) -> list[int]:
    """Steps of the complete, intact ``step-*`` checkpoints of ``run_dir``, sorted."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    steps = [int(p.name[5:]) for p in root.glob("step-*") if p.is_dir() and checkpoint_problem(p) is None]
    return sorted(steps)


def checkpoint_entries(run_dir: Path) -> list[str]:
    """Every name in ``run_dir/checkpoints`` (hidden ones too), sorted."""
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def metrics_steps(run_dir: Path) -> list[int]:
    """The ``step`` of every row of ``metrics.jsonl``, in file order."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def fix_marker(checkpoint: Path, name: str) -> None:
    """Make ``COMPLETE`` vouch for the current content of ``checkpoint/name`` (size and SHA-256), as a forger
    would."""
    marker_path = checkpoint / "COMPLETE"
    marker = json.loads(marker_path.read_text())
    file = checkpoint / name
    marker["files"][name] = {"bytes": file.stat().st_size, "sha256": sha256(file)}
    marker_path.write_text(json.dumps(marker, indent=1))


class _Witness:
    """A pickle payload: unpickling it creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.path!r}, 'w').write('unpickled')",))


def witness_pickle(path: Path) -> bytes:
    """Bytes that create ``path`` when unpickled (by ``pickle.load`` or ``torch.load(weights_only=False)``)."""
    return pickle.dumps({"policy": _Witness(path)}, protocol=4)


# --- data sets ---------------------------------------------------------------------------------------------


def write_png(path: Path, size: int = 32, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "PNG")


def write_dataset(folder: Path, *, good: int, bad: int = 0) -> Path:
    """``folder/edits.jsonl`` with ``good`` PNG records then ``bad`` records whose file is not an image (image
    paths relative to the file, the fastgrpo layout ``{"id", "source", "instruction"}``)."""
    rows = []
    for i in range(good):
        write_png(folder / "img" / f"good-{i}.png", seed=i)
        rows.append({"id": f"good-{i}", "source": f"img/good-{i}.png", "instruction": "make the square red"})
    for i in range(bad):
        (folder / "img").mkdir(parents=True, exist_ok=True)
        (folder / "img" / f"bad-{i}.png").write_bytes(b"this is not an image at all " * 8)
        rows.append({"id": f"bad-{i}", "source": f"img/bad-{i}.png", "instruction": "make the square red"})
    path = folder / "edits.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- running scenarios two at a time -------------------------------------------------------------------------


@dataclass
class Skip:
    """What a scenario returns when it cannot run here (the test skips with the reason)."""

    reason: str


@dataclass
class Scenario:
    """A function of a scratch folder that runs the processes of one scenario and returns what the test checks;
    ``after`` are scenarios it needs first (their results are passed as keyword arguments)."""

    name: str
    body: Callable[..., Any]
    after: tuple[str, ...] = ()


@dataclass
class ScenarioPool:
    """Runs the scenarios the selected tests need on ``workers`` threads, in the order given (dependencies
    first), and hands each test its results."""

    scenarios: dict[str, Scenario]
    folder: Callable[[str], Path]
    workers: int = 2
    seconds: dict[str, float] = field(default_factory=dict)
    _futures: dict[str, concurrent.futures.Future[Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, wanted: Iterable[str]) -> None:
        needed: list[str] = []

        def add(name: str) -> None:
            for dependency in self.scenarios[name].after:
                add(dependency)
            if name not in needed:
                needed.append(name)

        for name in self.scenarios:  # the declaration order, which puts long and dependency-free ones first
            if name in set(wanted):
                add(name)
        self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="scenario")
        folders = {name: self.folder(name) for name in needed}
        with self._lock:
            for name in needed:
                self._futures[name] = self._executor.submit(self._run, name, folders[name])

    def _run(self, name: str, folder: Path) -> Any:
        scenario = self.scenarios[name]
        inputs = {dep: self._futures[dep].result() for dep in scenario.after}
        started = time.monotonic()
        try:
            return scenario.body(folder, **inputs)
        finally:
            self.seconds[name] = time.monotonic() - started

    def result(self, name: str, timeout: float = 600) -> Any:
        with self._lock:
            future = self._futures.get(name)
        if future is None:
            raise AssertionError(f"scenario {name!r} was not started (is the test marked with its scenarios?)")
        return future.result(timeout=timeout)

    def close(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def copy_run(run_dir: Path, folder: Path) -> tuple[Path, Path]:
    """A copy of the run directory ``run_dir`` under ``folder/runs`` (same run name); ``(output dir, run dir)``."""
    output = folder / "runs"
    copy = output / run_dir.name
    shutil.copytree(run_dir, copy)
    return output, copy
