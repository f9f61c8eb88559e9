"""Loading edit records from JSONL, JSON and parquet files (or a folder of them).

- ``.jsonl``: one JSON object per line (blank lines are ignored); an unparsable line is a counted ``bad_row``.
- ``.json``: a list of objects, or an object of objects keyed by id (ImgEdit's benchmark files).
- ``.parquet``: read in row batches with only the columns the layout needs (so GEdit-Bench's second image column
  or unused captions are never loaded); image cells hold bytes or Hugging Face image structs. pyarrow is imported
  only here, when a parquet file is read.

Image bytes embedded in parquet are kept in memory (about the size of the image columns on disk); for data sets
larger than memory, extract the images to files under the data root and use JSONL.

Rows that cannot become a record (no instruction, no source image, a value of the wrong type, broken JSON) are
skipped and returned as :class:`~fastgrpo.data.records.Problem` entries; the dataset counts them against the
bad-input threshold. Files that cannot be read at all raise ``ValueError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastgrpo.data.formats import KEY_COLUMN, ColumnMap, detect_preset, get_preset, row_id, row_to_record
from fastgrpo.data.records import BadInputError, EditRecord, Problem

__all__ = ["DATA_SUFFIXES", "LoadedRecords", "find_data_files", "load_records"]

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_PARQUET_BATCH_ROWS = 64  # image rows are large: small batches keep peak memory near one batch of images

Row = tuple[str, str, "Mapping[str, Any] | BadInputError"]  # (origin, default id, row or why it is unreadable)


@dataclass(frozen=True, eq=False)
class LoadedRecords:
    """Records read from data files, and the rows that were skipped.

    Attributes:
        records: the usable records, in file order.
        problems: one :class:`Problem` per skipped row.
        root: the data root that image paths are relative to.
        files: the data files read.
        presets: file name (relative to the folder given, if one was) -> name of the layout used for it.
    """

    records: list[EditRecord]
    problems: list[Problem]
    root: Path
    files: tuple[Path, ...]
    presets: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows read: usable + skipped."""
        return len(self.records) + len(self.problems)


def find_data_files(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` itself if it is a data file, else every ``.jsonl``/``.json``/``.parquet`` file below it (sorted,
    hidden files and folders left out).

    Raises:
        ValueError: ``path`` does not exist, has another suffix, or is a folder without data files.
    """
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in DATA_SUFFIXES:
            raise ValueError(f"{p} is not a data file; pass a {', '.join(DATA_SUFFIXES)} file or a folder of them")
        return [p]
    if not p.is_dir():
        raise ValueError(f"data path {p} does not exist; pass a .jsonl/.json/.parquet file or a folder of them")
    found = sorted(
        f
        for f in p.rglob("*")
        if f.suffix.lower() in DATA_SUFFIXES
        and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(p).parts)
    )
    if not found:
        raise ValueError(f"folder {p} holds no {', '.join(DATA_SUFFIXES)} files; pass the data file itself")
    return found


def _jsonl_rows(path: Path, name: str) -> Iterator[Row]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            origin, default_id = f"{name}:line {number}", f"{name}:{number}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                yield origin, default_id, BadInputError("bad_row", f"line is not valid UTF-8 JSON ({error})")
                continue
            if not isinstance(row, dict):
                yield origin, default_id, BadInputError("bad_row", f"line holds a {type(row).__name__}, not an object")
                continue
            yield origin, default_id, row


def _json_rows(path: Path, name: str) -> Iterator[Row]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid UTF-8 JSON ({error}); fix the file or convert it to JSONL") from None
    if isinstance(data, dict):
        items: Sequence[tuple[str | None, Any]] = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, list):
        items = [(None, v) for v in data]
    else:
        raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected a list of objects or an object")
    for number, (key, row) in enumerate(items):
        origin = f"{name}:{'key ' + key if key is not None else 'item ' + str(number)}"
        default_id = key if key is not None else f"{name}:{number}"
        if not isinstance(row, dict):
            yield origin, default_id, BadInputError("bad_row", f"entry holds a {type(row).__name__}, not an object")
            continue
        yield origin, default_id, ({KEY_COLUMN: key, **row} if key is not None else row)


def _parquet_rows(
    path: Path, name: str, columns: ColumnMap | None, overrides: Mapping[str, Any] | None, where: Sequence[str]
) -> Iterator[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading {path} needs pyarrow; install it (pip install pyarrow) or use JSONL") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError for damaged files
        raise ValueError(f"{path} is not a readable parquet file ({error})") from None
    names = pf.schema_arrow.names
    layout = columns or detect_preset(names, overrides)
    needed = sorted(set(layout.columns_needed(names)) | {w for w in where if w in names})
    yield layout
    number = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=needed):
        for row in batch.to_pylist():
            yield f"{name}:row {number}", f"{name}:{number}", row
            number += 1


def _layout_for(
    first: Mapping[str, Any] | None, preset: str | ColumnMap, overrides: Mapping[str, Any] | None, path: Path
) -> ColumnMap:
    if preset != "auto":
        layout = get_preset(preset)
        return layout.override(overrides) if overrides else layout
    if first is None:
        raise ValueError(f"{path} has no readable rows to detect its layout from; pass --preset")
    return detect_preset(list(first), overrides)


def _matches(row: Mapping[str, Any], where: Mapping[str, str]) -> bool:
    return all(str(row.get(column)) == value for column, value in where.items())


def load_records(
    path: str | os.PathLike[str],
    *,
    preset: str | ColumnMap = "auto",
    columns: Mapping[str, str | Sequence[str]] | None = None,
    root: str | os.PathLike[str] | None = None,
    where: Mapping[str, str] | None = None,
) -> LoadedRecords:
    """Read every data file at ``path`` into records.

    Args:
        path: a ``.jsonl``/``.json``/``.parquet`` file or a folder of them (all are read; pass a file to read one
            split, e.g. Flow-GRPO's ``train_metadata.jsonl``).
        preset: a name in :data:`~fastgrpo.data.formats.PRESETS`, a :class:`ColumnMap`, or ``"auto"`` (per file:
            the preset that maps the most columns of the parquet schema or the first JSON row).
        columns: explicit field -> column(s) overrides on top of the preset.
        root: folder that image paths are relative to; default: the folder holding the file (or ``path`` itself
            when it is a folder).
        where: keep only rows whose column equals the value as text, e.g. ``{"instruction_language": "en"}``.

    Returns:
        :class:`LoadedRecords`.

    Raises:
        ValueError: a missing path, an unknown preset, a file that is not valid JSON/parquet, or a file whose
            columns no preset explains.
    """
    files = find_data_files(path)
    p = Path(path)
    data_root = Path(root) if root is not None else (p if p.is_dir() else p.parent)
    if not data_root.is_dir():
        raise ValueError(f"data root {data_root} is not a folder; pass --root DIR holding the images")
    where = dict(where or {})
    records: list[EditRecord] = []
    problems: list[Problem] = []
    presets: dict[str, str] = {}
    for file in files:
        name = file.relative_to(p).as_posix() if p.is_dir() else file.name
        layout, rows = _open_rows(file, name, preset, columns, where)
        presets[name] = layout.name
        for origin, default_id, row in rows:
            if isinstance(row, BadInputError):
                problems.append(Problem(default_id, origin, row.reason, row.message))
                continue
            if where and not _matches(row, where):
                continue
            try:
                records.append(row_to_record(row, layout, origin=origin, default_id=default_id))
            except BadInputError as error:
                name = row_id(row, layout) or default_id
                problems.append(Problem(name, origin, error.reason, error.message))
    return LoadedRecords(records, problems, data_root, tuple(files), presets)


def _open_rows(
    file: Path, name: str, preset: str | ColumnMap, columns: Mapping[str, Any] | None, where: Mapping[str, str]
) -> tuple[ColumnMap, Iterator[Row]]:
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        fixed = None if preset == "auto" else _layout_for(None, preset, columns, file)
        rows = _parquet_rows(file, name, fixed, columns, list(where))
        return next(rows), rows  # the generator yields its layout first
    listed = list(_jsonl_rows(file, name) if suffix == ".jsonl" else _json_rows(file, name))
    first = next((row for _, _, row in listed if not isinstance(row, BadInputError)), None)
    return _layout_for(first, preset, columns, file), iter(listed)
