"""Atomic, multi-rank, checksummed checkpoints of a training run.

A checkpoint is a directory ``step-XXXXXXXX`` (the step, zero-padded to 8 digits; larger steps simply have more
digits) holding ``shared.safetensors`` (what rank 0 saved for everyone), one ``rank-XXXXX.safetensors`` per rank
(that rank's own state: RNG states, ...), whatever an ``extra_writer`` adds (e.g. LoRA weights in the diffusers
layout), and, written last, a ``COMPLETE`` marker: JSON with the step, the number of ranks and the size and SHA-256
of every file. State files are safetensors with a JSON skeleton (:mod:`~fastgrpo.train.storage.state_files`):
loading one never unpickles anything. A checkpoint counts only when its marker parses and every listed file has the
listed size; it is loaded only when every file also matches its checksum. A process killed at any point leaves the
previous checkpoints untouched and at most an interrupted write, which is removed (logged); a checkpoint damaged
after it was written is moved aside, never deleted (:mod:`~fastgrpo.train.storage.checkpoint_dir`).

The write protocol (every rank calls :meth:`CheckpointManager.save` with the same step):

1. rank 0 creates ``.tmp-step-XXXXXXXX`` (removing a stale one of the same step); barrier;
2. every rank writes its rank file into it (temporary file, fsync, rename); barrier;
3. rank 0 writes ``shared.safetensors`` and the extras, fsyncs them, reads them back for their SHA-256, renames
   the directory to ``step-XXXXXXXX``, fsyncs the parent, writes ``COMPLETE`` atomically and prunes old
   checkpoints; barrier.

Only rank 0 deletes or renames anything. Errors are held until every rank has passed the three barriers, so a
failure on one rank never leaves the others waiting, and every rank then raises.
"""

from __future__ import annotations

import contextlib
import json
import operator
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastgrpo.train.storage.checkpoint_dir import (
    MARKER,
    SHARED_FILE,
    CheckpointDirectory,
    _files_under,
    _fsync_tree,
    _remove_tree,
    file_sha256,
    logger,
    rank_file_name,
    step_dir_name,
)
from fastgrpo.train.storage.files import atomic_write_bytes, fix_hint, fsync_dir, os_error_in
from fastgrpo.train.storage.state_files import StateFileError, load_state, state_bytes

__all__ = [
    "MARKER",
    "SHARED_FILE",
    "CheckpointError",
    "CheckpointManager",
    "LoadedCheckpoint",
    "rank_file_name",
    "step_dir_name",
]


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


class CheckpointManager(CheckpointDirectory):
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
        super().__init__(directory, rank=rank, world_size=world_size)
        self.keep = keep
        self._barrier = barrier if barrier is not None else _no_barrier

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
        hint = fix_hint(os_error, space=self._space_needed(), elsewhere="logging.output_dir")
        raise CheckpointError(
            f"could not write checkpoint {final} on rank {self.rank}: {reason}{where}. {self._intact_sentence()} "
            f"To fix: {hint}."
        ) from None

    def _space_needed(self) -> str:
        """How much room a checkpoint takes and how much there is: the hint of a full disk."""
        newest = self.latest()
        size = sum(f.stat().st_size for f in _files_under(newest)) if newest is not None else 0
        free = shutil.disk_usage(self.directory).free if self.directory.exists() else 0
        needed = f"a checkpoint takes about {size / 2**20:.1f} MiB, " if size else ""
        return f"{needed}{free / 2**20:.1f} MiB are free; or lower logging.keep_checkpoints"

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
        atomic_write_bytes(tmp / rank_file_name(self.rank), state_bytes(per_rank))

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
        atomic_write_bytes(tmp / SHARED_FILE, state_bytes(shared))
        if extra_writer is not None:
            extra_writer(tmp)
        _fsync_tree(tmp)
        files = {  # read back after the fsync: the checksum is of what the file system holds
            path.relative_to(tmp).as_posix(): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
            for path in _files_under(tmp)
        }
        files.pop(MARKER, None)  # an extra_writer must not forge the marker; it is written below

        old = self._old_dir(step)
        replaced = False
        if final.exists() or final.is_symlink():
            problem = self._problem(final, step)
            if problem is None:
                if old.exists():
                    _remove_tree(old)  # a stale copy of this step; the complete one is in `final`
                final.rename(old)
                replaced = True
            elif (final / MARKER).exists():
                self.move_aside(final, problem)
            else:
                _remove_tree(final)  # an interrupted write of this step: nothing in it was vouched for
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
        """After saving ``step``: drop complete checkpoints beyond ``keep``, tidy what older saves left
        (:meth:`clean_incomplete`). Failures are logged, not raised: the new checkpoint is already complete."""
        try:
            self.clean_incomplete(older_than=step)
        except OSError as exc:
            logger.warning("could not tidy %s (%s); the next run's start retries", self.directory, exc)
        complete, _ = self._scan()
        if self.keep is None:
            return
        keep = {path for _, path in complete[-self.keep :]} | {self.path_for(step)}
        for _, path in complete:
            if path in keep:
                continue
            try:
                _remove_tree(path)
            except OSError as exc:
                logger.warning("could not remove old checkpoint %s (%s); delete it by hand", path, exc)

    # ------------------------------------------------------------------ loading

    def load(self, path: str | Path | None = None) -> LoadedCheckpoint | None:
        """Load a checkpoint: ``path``, or the newest intact one when ``None`` (then ``None`` if there is none).
        Every rank calls it. Every file is checked against the checksum written with it first.

        Without ``path``, a checkpoint that fails the check is skipped with a warning naming the file and the
        reason, moved aside by rank 0 (:meth:`move_aside`), and the next older one is tried: every rank reaches
        the same verdicts (they read the same files), and rank 0 moves anything only after all ranks have looked.

        Raises:
            CheckpointError: ``path`` is not an intact checkpoint, it was written by another number of ranks, or
                its state cannot be read (the message names the checkpoint and the fix).
        """
        if path is not None:
            path = Path(path)
            problem = self.verify(path)
            if problem is not None:
                raise CheckpointError(
                    f"checkpoint {path} cannot be trusted ({problem}). {self._intact_sentence()} Load that one "
                    "instead (or pass path=None for the newest intact checkpoint)."
                )
            return self._read(path)
        chosen, damaged = None, []
        for candidate in reversed(self.complete()):
            problem = self.verify(candidate)
            if problem is None:
                chosen = candidate
                break
            damaged.append((candidate, problem))
        self._barrier()  # every rank has read the files before rank 0 moves any
        for candidate, problem in damaged:
            logger.warning("not resuming from %s: %s", candidate, problem)
            if self.rank == 0:
                self.move_aside(candidate, problem)
        self._barrier()
        return None if chosen is None else self._read(chosen)

    def _read(self, path: Path) -> LoadedCheckpoint:
        marker = self._read_marker(path)
        step, world_size = marker["step"], marker["world_size"]
        if world_size != self.world_size:
            raise CheckpointError(
                f"checkpoint {path} was written by {world_size} ranks, this run has {self.world_size}; resume with "
                f"the same number of processes ({world_size}), or start a fresh run in another directory"
            )
        try:
            shared = load_state(path / SHARED_FILE)
            rank_state = load_state(path / rank_file_name(self.rank))
        except (StateFileError, OSError) as exc:
            raise CheckpointError(
                f"cannot read checkpoint {path} on rank {self.rank}: {exc}. Its files match their checksums, so it "
                f"was written by another program or version: move it out of {self.directory} (e.g. rename it to "
                f"corrupt-{path.name}) to resume from the checkpoint before it, or start a fresh run"
            ) from None
        return LoadedCheckpoint(path=path, step=step, shared=shared, rank_state=rank_state)


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
