"""Reading files under the data root, and nowhere else.

A record's image path is resolved against the data root with every symlink followed (``os.path.realpath``); the
result must lie inside the equally resolved root. So ``../escape.png``, ``/etc/passwd`` and a symlink inside the
root that points outside are all refused, while ``images/../images/a.png`` and symlinks that stay inside are fine.
The resolved path is then opened with ``O_NOFOLLOW`` (a symlink swapped in after the check is not followed) and
``O_NONBLOCK`` (a FIFO planted in the data set cannot hang a data-loader worker), and only regular files are read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from fastgrpo.data.records import BadInputError

__all__ = ["open_under_root", "resolve_under_root"]

_REMOTE = ("http://", "https://", "s3://", "gs://", "hf://", "ftp://", "file://")


def resolve_under_root(root: str | os.PathLike[str], relative: str) -> Path:
    """The real path of ``relative`` inside ``root``.

    Args:
        root: the data root directory (need not be resolved; symlinks in it are followed).
        relative: a path relative to ``root``, ``/``-separated.

    Returns:
        The fully resolved path (it may not exist; opening it reports that).

    Raises:
        BadInputError: ``outside_root`` for an absolute path or one that resolves outside ``root``;
            ``remote_url`` for ``http://``-style references; ``missing_file`` for an empty path.
    """
    if not relative or "\x00" in relative:
        raise BadInputError("missing_file", f"image path {relative!r} is empty or holds a NUL byte")
    if relative.lower().startswith(_REMOTE):
        raise BadInputError(
            "remote_url", f"image path {relative!r} is a URL; download the images under the data root first"
        )
    if os.path.isabs(relative):
        raise BadInputError("outside_root", f"image path {relative!r} is absolute; write it relative to the data root")
    real_root = os.path.realpath(root)
    candidate = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, candidate]) != real_root:
        raise BadInputError(
            "outside_root",
            f"image path {relative!r} resolves to {candidate}, outside the data root {real_root}; "
            "move the file under the root or pass a root that contains it",
        )
    return Path(candidate)


def open_under_root(root: str | os.PathLike[str], relative: str, *, max_bytes: int) -> BinaryIO:
    """Open ``relative`` (inside ``root``) for binary reading, after the safety checks.

    Args:
        root: the data root.
        relative: the record's image path.
        max_bytes: largest file accepted, in bytes.

    Returns:
        An open binary file; the caller closes it.

    Raises:
        BadInputError: ``outside_root`` / ``remote_url`` (see :func:`resolve_under_root`), ``missing_file``,
            ``not_a_file`` (directory, FIFO, device), ``unreadable`` (permissions, I/O error), ``empty_file``
            (zero bytes), ``too_large`` (more than ``max_bytes``).
    """
    path = resolve_under_root(root, relative)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BadInputError("missing_file", f"image file {relative!r} does not exist under {root}") from None
    except IsADirectoryError:
        raise BadInputError("not_a_file", f"image path {relative!r} is a directory, not an image file") from None
    except OSError as error:
        if error.errno == errno.ELOOP:  # the final component became a symlink after resolution
            raise BadInputError("outside_root", f"image path {relative!r} is a symlink; refusing it") from None
        raise BadInputError("unreadable", f"image file {relative!r} cannot be opened: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadInputError("not_a_file", f"image path {relative!r} is not a regular file")
        if info.st_size == 0:
            raise BadInputError("empty_file", f"image file {relative!r} is empty (0 bytes)")
        if info.st_size > max_bytes:
            raise BadInputError(
                "too_large",
                f"image file {relative!r} has {info.st_size} bytes, more than max_file_bytes={max_bytes}",
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
