"""Atomic file writing and the messages of failed writes: the one place every run file goes through.

A file is written to a temporary file in its own directory, flushed, fsynced and renamed over the target
(:func:`atomic_write`), so a reader or a crash sees the old content or the new one, never a mix; a directory (a LoRA
export) is assembled beside its target and swapped in (:func:`atomic_directory`). A failed write is described by
:func:`describe_os_error`: what, where, the operating system's reason, and what to do about it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = [
    "atomic_directory",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "describe_os_error",
    "fix_hint",
    "fsync_dir",
    "os_error_in",
]

SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk; best effort, a no-op where directories cannot
    be opened (e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temporary file in the same directory (flush, fsync, rename over ``path``); the
    temporary file is removed on failure, so ``path`` is either the old or the new content, never a mix."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, ``os.replace``)."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temporary file in the same directory, fsync, ``os.replace``)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Assemble a directory that replaces ``target`` as a whole: yields ``target.tmp`` (emptied first); when the
    body returns, the old ``target`` is moved to ``target.old``, the new one renamed into place and the old one
    removed. When the body raises, the temporary directory is removed and ``target`` is left as it was."""
    target = Path(target)
    tmp, old = target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)


_RUST_OS_ERROR = re.compile(r"^(?P<reason>.*?)\s*\(os error (?P<errno>\d+)\)\s*$")


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, one in its cause/context chain (torch's writer reports a failed ``write``
    as a RuntimeError raised while the OSError was being handled), or the one a Rust library reports in its message
    (safetensors: ``SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')``),
    rebuilt with its errno."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        match = _RUST_OS_ERROR.match(str(current).strip())
        if match is not None:
            code = int(match.group("errno"))
            return OSError(code, os.strerror(code))
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def fix_hint(error: OSError, *, space: str, elsewhere: str) -> str:
    """What to do about a failed write, by its errno: ``space`` says how to make room (e.g. "lower
    logging.keep_checkpoints"), ``elsewhere`` names the setting that moves the files (e.g. "logging.output_dir")."""
    if error.errno in SPACE_ERRNOS:
        return f"free disk space there, {space}, or set {elsewhere} to a larger disk"
    if error.errno in PERMISSION_ERRNOS:
        return f"make it writable (permissions, read-only mount) or set {elsewhere} to a folder you can write"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"a file is in the way of the folder; set {elsewhere} to a folder path"
    return f"check the disk and the path (mounted, writable, healthy), or set {elsewhere} elsewhere"


def describe_os_error(
    error: OSError,
    path: Path,
    action: str,
    *,
    space: str = "lower logging.keep_checkpoints",
    elsewhere: str = "logging.output_dir",
) -> str:
    """One message for a failed write: ``could not <action> <path>: <reason>; <fix>`` (see :func:`fix_hint`)."""
    reason = error.strerror or str(error)
    return f"could not {action} {path}: {reason}; {fix_hint(error, space=space, elsewhere=elsewhere)}"
