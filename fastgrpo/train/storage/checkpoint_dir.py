"""The layout of a run's checkpoint directory: names, the ``COMPLETE`` marker and its checksums, finding the
complete checkpoints, moving damaged ones aside and cleaning up what interrupted saves left
(:class:`CheckpointDirectory`). Writing and loading are
:class:`~fastgrpo.train.storage.checkpoints.CheckpointManager`'s (see that module for the protocol).

A checkpoint ``step-XXXXXXXX`` counts as complete when its ``COMPLETE`` marker parses, names the step and the
number of ranks, and every file it lists has the listed size; before a checkpoint is loaded every file is also read
and compared with the SHA-256 the marker recorded when it was written (:meth:`CheckpointDirectory.verify`).

What is not complete is one of two things, and they are treated differently:

- **an interrupted write**: a ``.tmp-step-*`` directory, or a ``step-*`` directory without a marker (the save died
  between renaming the directory into place and writing its marker). Nothing in it was ever vouched for: it is
  removed, and the removal is logged;
- **a damaged checkpoint**: a marker that does not parse or does not fit, a file missing, of another size or of
  another checksum (overwritten, truncated or corrupted after it was written). It may hold the only copy of
  something: it is never deleted, but moved aside to ``corrupt-step-XXXXXXXX`` (with a ``WHY.txt`` saying what
  was wrong) with a warning naming it and the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastgrpo.train.storage.files import fsync_dir

__all__ = [
    "MARKER",
    "SHARED_FILE",
    "CheckpointDirectory",
    "file_sha256",
    "rank_file_name",
    "step_dir_name",
]

logger = logging.getLogger("fastgrpo.train.storage.checkpoints")

MARKER = "COMPLETE"
SHARED_FILE = "shared.safetensors"
CORRUPT_PREFIX = "corrupt-"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER_DIR = re.compile(r"^\.(tmp|old)-step-(\d+)$")


def step_dir_name(step: int) -> str:
    """``step-00000100`` for step 100 (8 digits, more for steps >= 10**8)."""
    return f"step-{step:08d}"


def rank_file_name(rank: int) -> str:
    """``rank-00001.safetensors`` for rank 1."""
    return f"rank-{rank:05d}.safetensors"


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of the file at ``path`` (read in large blocks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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
        """The complete checkpoints, oldest to newest by step (sizes checked, not checksums: see :meth:`verify`).
        Interrupted and damaged ``step-*`` directories are skipped with a warning (once each); a checkpoint written
        by another number of ranks still counts (:meth:`load` refuses it with an explanation)."""
        complete, incomplete = self._scan()
        for _, path, problem, damaged in incomplete:
            if path not in self._warned:
                self._warned.add(path)
                what = "damaged checkpoint" if damaged else "checkpoint interrupted while being written"
                logger.warning("ignoring %s %s: %s", what, path, problem)
        return [path for _, path in complete]

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or ``None`` if there is none."""
        complete = self.complete()
        return complete[-1] if complete else None

    def _scan(self) -> tuple[list[tuple[int, Path]], list[tuple[int, Path, str, bool]]]:
        """``(complete, incomplete)`` ``step-*`` directories, each sorted by step; incomplete ones with the reason and
        whether they are damaged (True) or an interrupted write (False)."""
        complete: list[tuple[int, Path]] = []
        incomplete: list[tuple[int, Path, str, bool]] = []
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
                incomplete.append((step, path, problem, (path / MARKER).exists()))
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

    def _marker_problem(self, path: Path, step: int, *, checksums: bool = False) -> str | None:
        """Why the ``COMPLETE`` marker of ``path`` does not vouch for a whole checkpoint of ``step``, or ``None``;
        with ``checksums`` every file is read and its SHA-256 compared as well."""
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
        valid = isinstance(files, dict) and all(
            isinstance(f, dict) and isinstance(f.get("bytes"), int) and isinstance(f.get("sha256"), str)
            for f in files.values()
        )
        if not valid:
            if (path / "shared.pt").exists():
                return (
                    "it was written by an older fastgrpo as pickle files, which fastgrpo never loads (unpickling "
                    "can run code); start a fresh run (another logging.run_name)"
                )
            return f"{MARKER} has no valid file list"
        required = [SHARED_FILE, *(rank_file_name(r) for r in range(world_size))]
        unlisted = [name for name in required if name not in files]
        if unlisted:
            return f"{MARKER} does not list {unlisted}"
        for name, listed in files.items():
            try:
                actual = (path / name).stat().st_size
            except OSError:
                return f"{name} is missing"
            if actual != listed["bytes"]:
                return f"{name} has {actual} bytes, {MARKER} says {listed['bytes']} (truncated or overwritten)"
        if checksums:
            for name, listed in files.items():
                try:
                    digest = file_sha256(path / name)
                except OSError as exc:
                    return f"{name} cannot be read ({exc})"
                if digest != listed["sha256"]:
                    return f"{name} does not match its checksum (changed after it was written)"
        return None

    def verify(self, path: Path) -> str | None:
        """Why the checkpoint at ``path`` cannot be trusted — sizes, the marker and the SHA-256 of every file — or
        ``None`` when every byte is as written."""
        match = _STEP_DIR.match(Path(path).name)
        if match is None:
            return self._problem(Path(path))
        return self._marker_problem(Path(path), int(match.group(1)), checksums=True)

    # ------------------------------------------------------------------ cleaning

    def move_aside(self, path: Path, reason: str) -> Path:
        """Rank 0: rename the damaged checkpoint ``path`` to ``corrupt-<name>`` (``-2``, ``-3``, ... when taken),
        write the reason into its ``WHY.txt`` and log a warning; returns the new path."""
        target = self.directory / f"{CORRUPT_PREFIX}{path.name}"
        n = 2
        while target.exists():
            target = self.directory / f"{CORRUPT_PREFIX}{path.name}-{n}"
            n += 1
        path.rename(target)
        with contextlib.suppress(OSError):
            (target / "WHY.txt").write_text(f"{path.name} was moved aside: {reason}\n", encoding="utf-8")
        fsync_dir(self.directory)
        logger.warning("checkpoint %s is damaged (%s); moved it to %s, delete it when you have looked", path, reason,
                       target)  # fmt: skip
        return target

    def clean_incomplete(self, older_than: int | None = None) -> list[Path]:
        """Rank 0: tidy what is not a complete checkpoint (of steps below ``older_than``, when given): interrupted
        writes (``.tmp-*``, ``step-*`` without a marker) are removed, damaged checkpoints moved aside
        (:meth:`move_aside`), a complete copy left in ``.old-step-*`` by a save killed while replacing the same
        step is moved back. Every action is logged. Returns the paths removed or moved. Other ranks do nothing
        and get ``[]``. Call it before the first save of a run, not while a save is in progress."""
        if self.rank != 0:
            return []
        handled: list[Path] = []
        _, incomplete = self._scan()
        for step, path, problem, damaged in incomplete:
            if older_than is not None and step >= older_than:
                continue
            if damaged:
                self.move_aside(path, problem)
            else:
                _remove_tree(path)
                logger.warning("removed %s: a save interrupted before its %s marker was written", path, MARKER)
            handled.append(path)
        for path in self._leftovers():
            if older_than is not None and _leftover_step(path) >= older_than:
                continue
            final = self.directory / path.name.split("-", 1)[1]  # .old-step-X -> step-X
            restorable = path.name.startswith(".old-") and not final.exists()
            if restorable and self._marker_problem(path, _leftover_step(path)) is None:
                path.rename(final)
                logger.warning("restored checkpoint %s from an interrupted replacement", final)
                continue
            _remove_tree(path)
            logger.warning("removed %s, left by an interrupted save", path)
            handled.append(path)
        fsync_dir(self.directory)
        return handled

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
