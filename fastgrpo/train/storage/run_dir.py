"""The run directory: ``config.yaml``, ``metrics.jsonl``, ``lora/``, ``checkpoints/``, ``samples/``, the curve.

Writes that fail for lack of space or permission raise :class:`RunDirError` with the path, the operating system's
reason and what to do; nothing already written is lost (metrics are appended line by line and flushed; files are
replaced atomically).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastgrpo.train.storage.files import atomic_write_bytes, describe_os_error

__all__ = ["METRICS_FILENAME", "RunDir", "RunDirError", "open_run_dir"]

METRICS_FILENAME = "metrics.jsonl"


class RunDirError(RuntimeError):
    """The run directory cannot be created or written."""


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class RunDir:
    """One run's folder (created on rank 0 only; other ranks only read paths)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self._metrics_handle: Any = None
        if create:
            self._create()

    def _create(self) -> None:
        try:
            for sub in ("", "checkpoints", "samples"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.path, prefix=".write-test-")
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                Path(probe).unlink(missing_ok=True)
        except OSError as error:
            raise RunDirError(describe_os_error(error, self.path, "create the run directory")) from None

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILENAME

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def lora(self) -> Path:
        return self.path / "lora"

    @property
    def curve_path(self) -> Path:
        return self.path / "reward_curve.png"

    def has_started(self) -> bool:
        """Whether a run has trained or evaluated here: a metrics row or a checkpoint directory exists. A folder with
        only ``config.yaml`` is a start that failed (a missing model, bad data) and binds nothing."""
        if self.read_metrics():
            return True
        return self.checkpoints.is_dir() and any(
            p.name.startswith(("step-", "corrupt-")) for p in self.checkpoints.iterdir()
        )

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.path).free

    def check_space(self, needed_bytes: int) -> None:
        """Refuse to start when the disk cannot hold ``needed_bytes`` (checkpoints, LoRA exports)."""
        free = self.free_bytes()
        if free < needed_bytes:
            raise RunDirError(
                f"{self.path} has {free / 2**20:.1f} MiB free but the run's checkpoints need about "
                f"{needed_bytes / 2**20:.1f} MiB; free space, lower logging.keep_checkpoints, or set "
                "logging.output_dir to a larger disk"
            )

    # metrics --------------------------------------------------------------------------------------------------

    def read_metrics(self) -> list[dict[str, Any]]:
        """Rows of ``metrics.jsonl`` (a torn last line, from a crash mid-write, is dropped)."""
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only rows with ``step <= last_step`` (a resumed run rewrites the steps after its checkpoint)."""
        rows = [r for r in self.read_metrics() if int(r.get("step", 0)) <= last_step]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        self.close()
        try:
            atomic_write_bytes(self.metrics_path, text.encode("utf-8"))
        except OSError as error:
            raise RunDirError(describe_os_error(error, self.metrics_path, "rewrite")) from None

    def log_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one JSON line and flush it."""
        line = json.dumps({k: _plain(v) for k, v in row.items()}) + "\n"
        try:
            if self._metrics_handle is None:
                self._metrics_handle = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            self._metrics_handle.write(line)
            self._metrics_handle.flush()
        except OSError as error:
            raise RunDirError(describe_os_error(error, self.metrics_path, "append to")) from None

    def close(self) -> None:
        if self._metrics_handle is not None:
            with contextlib.suppress(OSError):
                self._metrics_handle.close()
            self._metrics_handle = None


def open_run_dir(cfg: Any, dist: Any) -> RunDir:
    """The run directory ``logging.output_dir / (logging.run_name or the start time)`` of ``cfg`` on every rank.

    Rank 0 creates it, refuses it when it holds a run that has started (:meth:`RunDir.has_started`) whose saved
    ``config.yaml`` differs from ``cfg`` in a setting a resumed run may not change
    (:func:`~fastgrpo.train.config.config_differences`), and writes the resolved config; the other ranks wait for
    that (``dist``: a :class:`~fastgrpo.train.parallel.distributed.DistContext`).

    Raises :class:`RunDirError` (cannot create or write) or :class:`~fastgrpo.train.errors.TrainingError` (a
    different run already lives there).
    """
    import datetime

    from fastgrpo.train.config import config_differences, config_to_dict, load_config, save_resolved_config
    from fastgrpo.train.errors import TrainingError

    name = cfg.logging.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.logging.output_dir) / dist.broadcast_object(name)
    if not dist.is_main:
        dist.barrier()
        return RunDir(path, create=False)
    run_dir = RunDir(path)
    saved = path / "config.yaml"
    if saved.is_file() and run_dir.has_started():
        diffs = config_differences(config_to_dict(load_config(saved)), config_to_dict(cfg))
        if diffs:
            raise TrainingError(
                f"{path} holds a run with a different config ({'; '.join(diffs[:5])}); resume it with the same "
                "settings, or choose another logging.run_name for a new run"
            )
    save_resolved_config(cfg, path)
    dist.barrier()
    return run_dir
