"""The layout of a run's checkpoint directory: names, the ``COMPLETE`` marker's validation, finding the complete
checkpoints, and cleaning up what interrupted saves left (:class:`CheckpointDirectory`). Writing and loading are
:class:`~fastgrpo.train.storage.checkpoints.CheckpointManager`'s (see that module for the protocol).

A checkpoint ``step-XXXXXXXX`` counts only when its ``COMPLETE`` marker parses, names the step and the number of
ranks, and every file it lists has the listed size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastgrpo.train.storage.files import fsync_dir

__all__ = ["MARKER", "SHARED_FILE", "CheckpointDirectory", "rank_file_name", "step_dir_name"]

logger = logging.getLogger("fastgrpo.train.storage.checkpoints")

MARKER = "COMPLETE"
SHARED_FILE = "shared.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER_DIR = re.compile(r"^\.(tmp|old)-step-(\d+)$")


def step_dir_name(step: int) -> str:
    """``step-00000100`` for step 100 (8 digits, more for steps >= 10**8)."""
    return f"step-{step:08d}"


def rank_file_name(rank: int) -> str:
    """``rank-00001.pt`` for rank 1."""
    return f"rank-{rank:05d}.pt"


def _files_under(root: Path) -> Iterator[Path]:
    """Every regular file below ``root`` (recursively), in sorted order."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` and ``root`` itself (files written by other ranks or by an
    ``extra_writer`` may still be in the page cache)."""
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            fsync_dir(path)
        elif path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                with contextlib.suppress(OSError):  # some platforms refuse fsync on a read-only descriptor
                    os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(root)


def _remove_tree(path: Path) -> None:
    """Delete a directory tree (or a stray file) at ``path``."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


class CheckpointDirectory:
    """The checkpoints found in ``directory`` for a run of ``world_size`` ranks (``rank`` is this process's; only
    rank 0 cleans)."""

    def __init__(self, directory: str | Path, *, rank: int = 0, world_size: int = 1) -> None:
        self.directory = Path(directory)
        self.rank = rank
        self.world_size = world_size
        self._warned: set[Path] = set()

    # ------------------------------------------------------------------ paths

    def path_for(self, step: int) -> Path:
        """The directory of the checkpoint of ``step`` (whether or not it exists)."""
        return self.directory / step_dir_name(step)

    def _tmp_dir(self, step: int) -> Path:
        """Where the checkpoint of ``step`` is assembled before it is renamed into place."""
        return self.directory / f".tmp-{step_dir_name(step)}"

    def _old_dir(self, step: int) -> Path:
        """Where a complete checkpoint of ``step`` waits while a new one of the same step replaces it."""
        return self.directory / f".old-{step_dir_name(step)}"

    # ------------------------------------------------------------------ finding

    def complete(self) -> list[Path]:
        """The complete checkpoints, oldest to newest by step. Incomplete or corrupt ``step-*`` directories are
        skipped with a warning; a checkpoint written by another number of ranks still counts (:meth:`load`
        refuses it with an explanation)."""
        complete, incomplete = self._scan()
        for _, path, problem in incomplete:
            if path not in self._warned:
                self._warned.add(path)
                logger.warning("ignoring incomplete checkpoint %s (interrupted while being written): %s", path, problem)
        return [path for _, path in complete]

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or ``None`` if there is none."""
        complete = self.complete()
        return complete[-1] if complete else None

    def _scan(self) -> tuple[list[tuple[int, Path]], list[tuple[int, Path, str]]]:
        """``(complete, incomplete)`` ``step-*`` directories, each sorted by step; incomplete ones with the reason."""
        complete: list[tuple[int, Path]] = []
        incomplete: list[tuple[int, Path, str]] = []
        if not self.directory.is_dir():
            return complete, incomplete
        for path in self.directory.iterdir():
            match = _STEP_DIR.match(path.name)
            if match is None or not path.is_dir():
                continue
            step = int(match.group(1))
            problem = self._problem(path, step)
            if problem is None:
                complete.append((step, path))
            else:
                incomplete.append((step, path, problem))
        complete.sort(key=lambda item: item[0])
        incomplete.sort(key=lambda item: item[0])
        return complete, incomplete

    def _leftovers(self) -> list[Path]:
        """``.tmp-step-*`` and ``.old-step-*`` entries of the directory."""
        if not self.directory.is_dir():
            return []
        return sorted(path for path in self.directory.iterdir() if _LEFTOVER_DIR.match(path.name))

    @staticmethod
    def _read_marker(path: Path) -> dict[str, Any]:
        """The parsed ``COMPLETE`` of ``path``; OSError/ValueError when missing or not valid JSON."""
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        if not isinstance(marker, dict):
            raise ValueError(f"{MARKER} holds {type(marker).__name__}, not a JSON object")
        return marker

    def _problem(self, path: Path, step: int | None = None) -> str | None:
        """Why ``path`` is not a complete checkpoint (of ``step``, when given), or ``None`` when it is."""
        match = _STEP_DIR.match(path.name)
        if match is None:
            return f"its name is not step-<number> (like {step_dir_name(0)})"
        dir_step = int(match.group(1))
        if step is not None and step != dir_step:
            return f"it is the directory of step {dir_step}, not {step}"
        return self._marker_problem(path, dir_step)

    def _marker_problem(self, path: Path, step: int) -> str | None:
        """Why the ``COMPLETE`` marker of ``path`` does not vouch for a whole checkpoint of ``step``, or ``None``."""
        if not path.is_dir():
            return "no such directory"
        try:
            marker = self._read_marker(path)
        except FileNotFoundError:
            return f"no {MARKER} marker"
        except (OSError, ValueError) as exc:
            return f"unreadable {MARKER} marker ({exc})"
        marker_step, world_size, files = marker.get("step"), marker.get("world_size"), marker.get("files")
        if not isinstance(marker_step, int) or marker_step != step:
            return f"{MARKER} says step {marker_step!r}, the directory name says {step}"
        if not isinstance(world_size, int) or world_size < 1:
            return f"{MARKER} has no valid world_size ({world_size!r})"
        if not isinstance(files, dict) or not all(isinstance(size, int) for size in files.values()):
            return f"{MARKER} has no valid file list"
        required = [SHARED_FILE, *(rank_file_name(r) for r in range(world_size))]
        unlisted = [name for name in required if name not in files]
        if unlisted:
            return f"{MARKER} does not list {unlisted}"
        for name, size in files.items():
            try:
                actual = (path / name).stat().st_size
            except OSError:
                return f"{name} is missing"
            if actual != size:
                return f"{name} has {actual} bytes, {MARKER} says {size} (truncated or overwritten)"
        return None

    # ------------------------------------------------------------------ cleaning

    def clean_incomplete(self) -> list[Path]:
        """Rank 0: delete what interrupted saves left behind (``.tmp-*`` and ``.old-*`` directories, incomplete
        ``step-*`` directories); returns the removed paths. Other ranks do nothing and get ``[]``. Call it before
        the first save of a run, not while a save is in progress.

        A save killed while replacing a checkpoint of the same step can leave the complete previous copy in
        ``.old-step-*`` and an incomplete ``step-*``; that copy is moved back instead of deleted.
        """
        if self.rank != 0:
            return []
        removed: list[Path] = []
        _, incomplete = self._scan()
        for _, path, _problem in incomplete:
            _remove_tree(path)
            removed.append(path)
        for path in self._leftovers():
            final = self.directory / path.name.split("-", 1)[1]  # .old-step-X -> step-X
            restorable = path.name.startswith(".old-") and not final.exists()
            if restorable and self._marker_problem(path, _leftover_step(path)) is None:
                path.rename(final)
                logger.warning("restored checkpoint %s from an interrupted replacement", final)
                continue
            _remove_tree(path)
            removed.append(path)
        fsync_dir(self.directory)
        return removed

    def _intact_sentence(self) -> str:
        """``The newest complete checkpoint <path> is intact.`` (or that there is none)."""
        try:
            newest = self.latest()
        except OSError:
            newest = None
        if newest is None:
            return "No complete checkpoint exists yet (none was damaged)."
        return f"The newest complete checkpoint {newest} is intact."


def _leftover_step(path: Path) -> int:
    """The step of a ``.tmp-step-*``/``.old-step-*`` name."""
    match = _LEFTOVER_DIR.match(path.name)
    assert match is not None
    return int(match.group(2))
