"""Atomic, multi-rank checkpoints of a training run.

A checkpoint is a directory ``step-XXXXXXXX`` (the step, zero-padded to 8 digits; larger steps simply have more
digits) holding ``shared.pt`` (what rank 0 saved for everyone), one ``rank-XXXXX.pt`` per rank (that rank's own
state: RNG states, data-loader position, ...), whatever an ``extra_writer`` adds (e.g. LoRA weights in the
diffusers layout), and, written last, a ``COMPLETE`` marker: JSON with the step, the number of ranks and the size
of every file. A checkpoint counts only when its marker parses and every listed file has the listed size, so a
process killed at any point leaves either the previous checkpoints untouched or a directory that is ignored
(and removed by the next save or :meth:`CheckpointManager.clean_incomplete`).

The write protocol (every rank calls :meth:`CheckpointManager.save` with the same step):

1. rank 0 creates ``.tmp-step-XXXXXXXX`` (removing a stale one of the same step); barrier;
2. every rank writes its rank file into it (temporary file, fsync, rename); barrier;
3. rank 0 writes ``shared.pt`` and the extras, fsyncs them, renames the directory to ``step-XXXXXXXX``, fsyncs
   the parent, writes ``COMPLETE`` atomically and prunes old checkpoints; barrier.

Only rank 0 deletes or renames anything. Errors are held until every rank has passed the three barriers, so a
failure on one rank never leaves the others waiting, and every rank then raises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from fastgrpo.train.storage.files import atomic_torch_save, atomic_write_bytes, fix_hint, fsync_dir, os_error_in

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
SHARED_FILE = "shared.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER_DIR = re.compile(r"^\.(tmp|old)-step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the intact checkpoint and the fix."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :meth:`CheckpointManager.load` returns.

    Attributes:
        path: the checkpoint directory.
        step: the step it was saved at.
        shared: what rank 0 saved as ``shared``.
        rank_state: what this rank saved as ``per_rank``.
    """

    path: Path
    step: int
    shared: dict[str, Any]
    rank_state: dict[str, Any]


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


class CheckpointManager:
    """Saves, finds, loads and prunes the checkpoints of one run in ``directory``.

    Args:
        directory: where the ``step-*`` directories live (created by rank 0 on the first save).
        keep: how many complete checkpoints to keep (the newest by step); ``None`` keeps all. The checkpoint just
            written is never pruned, even when newer ones exist.
        rank: this process's rank, in ``[0, world_size)``.
        world_size: the number of processes that save together.
        barrier: a collective barrier across the ranks (e.g. ``torch.distributed.barrier``); the default is a
            no-op, right for a single process.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int | None = 3,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 (or None to keep every checkpoint), got {keep}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}) for world_size={world_size}, got {rank}")
        self.directory = Path(directory)
        self.keep = keep
        self.rank = rank
        self.world_size = world_size
        self._barrier = barrier if barrier is not None else _no_barrier
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

    # ------------------------------------------------------------------ saving

    def save(
        self,
        step: int,
        shared: dict[str, Any],
        per_rank: dict[str, Any],
        extra_writer: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the checkpoint of ``step``; every rank calls this with the same step. Returns its directory.

        Args:
            step: the training step (>= 0); saving a step that already has a checkpoint replaces it.
            shared: state common to all ranks (model/optimiser state, config, ...); only rank 0's is written.
            per_rank: this rank's own state (RNG states, data position, ...).
            extra_writer: called by rank 0 with the (temporary) checkpoint directory to add more files, e.g.
                ``lambda d: model.save_lora(d / "lora")``; they are fsynced and listed in ``COMPLETE``.

        Raises:
            CheckpointError: the checkpoint could not be written (disk full, permissions, a rank failed); the
                previous checkpoints are untouched and the message names the newest intact one.
        """
        step = _check_step(step)
        phases: list[Callable[[], object]] = [
            lambda: self._begin(step),
            lambda: self._write_rank(step, per_rank),
            lambda: self._finish(step, shared, extra_writer),
        ]
        failure: BaseException | None = None
        for phase in phases:
            if failure is None:
                try:
                    phase()
                except Exception as exc:  # held until every rank has passed the barriers, then raised
                    failure = exc
            self._barrier()
        final = self.path_for(step)
        if failure is None and self.rank != 0:
            problem = self._problem(final, step)
            if problem is not None:
                failure = CheckpointError(
                    f"rank 0 did not complete checkpoint {final} ({problem}); its error says why. "
                    f"{self._intact_sentence()}"
                )
        if failure is None:
            return final
        if self.rank == 0:
            self._discard_tmp(step)
        if isinstance(failure, CheckpointError):
            raise failure
        os_error = os_error_in(failure)
        if os_error is None:
            raise failure
        reason = os_error.strerror or str(os_error)
        where = f" ({os_error.filename})" if os_error.filename else ""
        hint = fix_hint(os_error, space="lower `keep` (logging.keep_checkpoints)", elsewhere="logging.output_dir")
        raise CheckpointError(
            f"could not write checkpoint {final} on rank {self.rank}: {reason}{where}. {self._intact_sentence()} "
            f"To fix: {hint}."
        ) from failure

    def _begin(self, step: int) -> None:
        """Phase 1 (rank 0): create a fresh temporary directory for ``step``."""
        if self.rank != 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp_dir(step)
        if tmp.exists() or tmp.is_symlink():
            _remove_tree(tmp)
        tmp.mkdir()

    def _write_rank(self, step: int, per_rank: dict[str, Any]) -> None:
        """Phase 2 (every rank): write this rank's file into the temporary directory."""
        tmp = self._tmp_dir(step)
        if not tmp.is_dir():
            raise CheckpointError(
                f"rank {self.rank} cannot write checkpoint {self.path_for(step)}: {tmp} does not exist, so rank 0 "
                f"failed to prepare it (its error says why), or the ranks do not see the same directory (use a "
                f"shared file system for the checkpoint directory). {self._intact_sentence()}"
            )
        atomic_torch_save(per_rank, tmp / rank_file_name(self.rank))

    def _finish(self, step: int, shared: dict[str, Any], extra_writer: Callable[[Path], None] | None) -> Path:
        """Phase 3 (rank 0): shared state and extras, rename into place, ``COMPLETE``, pruning."""
        final = self.path_for(step)
        if self.rank != 0:
            return final
        tmp = self._tmp_dir(step)
        missing = [r for r in range(self.world_size) if not (tmp / rank_file_name(r)).is_file()]
        if missing:
            raise CheckpointError(
                f"checkpoint {final} was not written: rank(s) {missing} did not write their state (their errors say "
                f"why; every rank must call save with the same step). {self._intact_sentence()}"
            )
        atomic_torch_save(shared, tmp / SHARED_FILE)
        if extra_writer is not None:
            extra_writer(tmp)
        _fsync_tree(tmp)
        files = {path.relative_to(tmp).as_posix(): path.stat().st_size for path in _files_under(tmp)}
        files.pop(MARKER, None)  # an extra_writer must not forge the marker; it is written below

        old = self._old_dir(step)
        replaced = False
        if final.exists() or final.is_symlink():
            if self._problem(final, step) is None:
                if old.exists():
                    _remove_tree(old)  # a stale copy of this step; the complete one is in `final`
                final.rename(old)
                replaced = True
            else:
                _remove_tree(final)
        tmp.rename(final)
        fsync_dir(self.directory)
        marker = {
            "step": step,
            "world_size": self.world_size,
            "files": files,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            (final / MARKER).unlink(missing_ok=True)
            atomic_write_bytes(final / MARKER, json.dumps(marker, indent=1).encode())
        except BaseException:
            with contextlib.suppress(OSError):  # drop the unfinished copy; put back the one it was replacing
                _remove_tree(final)
                if replaced:
                    old.rename(final)
                fsync_dir(self.directory)
            raise
        if old.exists():
            try:
                _remove_tree(old)
            except OSError as exc:
                logger.warning("could not remove the replaced checkpoint %s (%s); delete it by hand", old, exc)
        self._prune(step)
        return final

    def _discard_tmp(self, step: int) -> None:
        """Remove the temporary directory of a failed save (best effort)."""
        tmp = self._tmp_dir(step)
        try:
            if tmp.exists() or tmp.is_symlink():
                _remove_tree(tmp)
        except OSError as exc:
            logger.warning("could not remove %s after a failed save (%s); clean_incomplete() retries", tmp, exc)

    def _prune(self, step: int) -> None:
        """After saving ``step``: drop complete checkpoints beyond ``keep`` and leftovers older than ``step``.
        Failures are logged, not raised: the new checkpoint is already complete."""
        complete, incomplete = self._scan()
        doomed = [path for path_step, path, _ in incomplete if path_step < step]
        for path in self._leftovers():
            if _leftover_step(path) < step:
                doomed.append(path)
        if self.keep is not None:
            keep = {path for _, path in complete[-self.keep :]} | {self.path_for(step)}
            doomed.extend(path for _, path in complete if path not in keep)
        for path in doomed:
            try:
                _remove_tree(path)
            except OSError as exc:
                logger.warning("could not remove old checkpoint data %s (%s); delete it by hand", path, exc)

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

    # ------------------------------------------------------------------ loading

    def load(
        self, path: str | Path | None = None, *, map_location: str | torch.device = "cpu"
    ) -> LoadedCheckpoint | None:
        """Load a checkpoint: ``path``, or the newest complete one when ``None`` (then ``None`` if there is none).

        Raises:
            CheckpointError: ``path`` is not a complete checkpoint, it was written by another number of ranks, or
                a file in it cannot be read.
        """
        if path is None:
            found = self.latest()
            if found is None:
                return None
            path = found
        else:
            path = Path(path)
            problem = self._problem(path)
            if problem is not None:
                raise CheckpointError(
                    f"checkpoint {path} is incomplete or corrupt ({problem}), probably interrupted while being "
                    f"written. {self._intact_sentence()} Load that one instead (or pass path=None for the newest "
                    f"complete checkpoint)."
                )
        marker = self._read_marker(path)
        step, world_size = marker["step"], marker["world_size"]
        if world_size != self.world_size:
            raise CheckpointError(
                f"checkpoint {path} was written by {world_size} ranks, this run has {self.world_size}; resume with "
                f"the same number of processes ({world_size}), or start a fresh run in another directory"
            )
        try:
            shared = torch.load(path / SHARED_FILE, map_location=map_location, weights_only=False)
            rank_state = torch.load(path / rank_file_name(self.rank), map_location=map_location, weights_only=False)
        except Exception as exc:
            older = [p for p in self.complete() if p != path]
            fallback = f"the previous complete checkpoint is {older[-1]}" if older else "there is no other checkpoint"
            raise CheckpointError(
                f"cannot read checkpoint {path} on rank {self.rank} ({type(exc).__name__}: {exc}); its files have the "
                f"right sizes, so they were damaged after writing. Delete it to resume from an older one "
                f"({fallback})."
            ) from exc
        return LoadedCheckpoint(path=path, step=step, shared=shared, rank_state=rank_state)

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


def _no_barrier() -> None:
    """The barrier of a single process: nothing to wait for."""


def _check_step(step: int) -> int:
    """``step`` as an int; ValueError for a negative or non-integer step."""
    try:
        value = operator.index(step)  # accepts numpy / 0-d integer tensors, refuses floats
    except TypeError:
        value = -1
    if isinstance(step, bool) or value < 0:
        raise ValueError(f"step must be a non-negative int (the training step), got {step!r}")
    return value


def _leftover_step(path: Path) -> int:
    """The step of a ``.tmp-step-*``/``.old-step-*`` name."""
    match = _LEFTOVER_DIR.match(path.name)
    assert match is not None
    return int(match.group(2))
