"""Image cells of memory-mapped Arrow data, referred to instead of copied.

A Hugging Face data set stores an image column (a ``datasets.Image`` feature) as a struct of ``bytes`` (the encoded
file) and ``path`` per row. :class:`ArrowImage` names one such cell: the table, the row and the column. Building
the records of a data set therefore reads no image data and holds none (about 100 bytes per reference instead of the
image's size); the bytes are read from the memory-mapped file when the image is probed or decoded, one image at a
time, and let go afterwards.

Pickling: a ``datasets`` memory-mapped table (``datasets.table.MemoryMappedTable``, what ``Dataset.from_file``,
``load_from_disk`` and ``load_dataset`` give; also a ``ConcatenationTable`` of them) pickles as its file path and
the transforms to replay, never its data, so a record pickles in a few hundred bytes and a ``DataLoader`` worker
started with ``spawn`` maps the same file again. References pickled together (the records of a dataset) share one
table in the pickle, and one mapping when loaded. A table held in memory (``datasets.table.InMemoryTable``, a plain
``pyarrow.Table``) pickles its whole data.

This module imports nothing heavy: pyarrow is used through the table the reference holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ArrowImage"]


@dataclass(frozen=True, eq=False, slots=True)
class ArrowImage:
    """One image cell of an Arrow table, read when the image is needed.

    Equality is identity: comparing two references never compares tables.

    Attributes:
        table: the table holding the cell: a ``datasets`` table (``Dataset.data``; memory-mapped for data read from
            disk, see the module docstring for pickling) or a ``pyarrow.Table``.
        row: the cell's row in ``table``, 0-based (the table's own order: no indices mapping applies).
        column: the image column; its cells are ``{"bytes": binary, "path": string}`` structs, as ``datasets.Image``
            stores them.
    """

    table: Any
    row: int
    column: str

    def read(self) -> bytes | str | None:
        """What the cell holds, by the rules of Hugging Face image structs: its encoded file (``bytes``, a copy
        that lives as long as the caller keeps it) when there are bytes, even empty ones; else its path (a path
        relative to the data root, as any image path) when that is not blank; else ``None`` (a null cell, or
        neither bytes nor a path).

        Raises:
            KeyError: ``table`` has no column ``column``.
            IndexError: ``row`` is out of range.
        """
        cell = self.table.column(self.column)[self.row]
        if not cell.is_valid:
            return None
        data = cell["bytes"]
        if data.is_valid:
            return data.as_py()
        path = cell["path"].as_py()
        return path if isinstance(path, str) and path.strip() else None

    def __repr__(self) -> str:  # the default one would print the table
        return f"ArrowImage(column={self.column!r}, row={self.row})"
