"""Loading edit records from JSONL, JSON and parquet files (or a folder of them).

- ``.jsonl``: one JSON object per line (blank lines are ignored); an unparsable line is a counted ``bad_row``.
- ``.json``: a list of objects, or an object of objects keyed by id (ImgEdit's benchmark files).
- ``.parquet``: read in row batches with only the columns the layout needs (so GEdit-Bench's second image column
  or unused captions are never loaded); image cells hold bytes, Hugging Face image structs, paths, or lists of
  them. pyarrow is imported only here, when a parquet file is read.

A folder is read file by file, each with its own layout (see :mod:`fastgrpo.data.formats` for the presets). The
columns of a file are its parquet schema or the keys of its JSON rows (fields inside a list of structs count as
``"<column>.<field>"``, so that ImgEdit's multi-turn ``data`` column is recognised). A file whose columns match no
layout (with ``preset="auto"``), or lack the source or instruction column of the preset asked for, is skipped with
one log line naming it and its columns and is listed in :attr:`LoadedRecords.skipped`; only when no file at all
can be read is it an error. A folder that holds Flow-GRPO split files (``<split>_metadata.jsonl``, what
Flow-GRPO's training scripts read) is read through those: its other ``.jsonl`` files are skipped the same way
(``counting_edit/`` also keeps ``metadata.jsonl``, the GenEval prompts its images were generated from, and
``output.jsonl``, the generation script's output, whose rows the split files already hold). Pass a file itself to
read it whatever its neighbours.

A multi-turn row (a layout with ``turns``, e.g. ``imgedit_multiturn``) gives one record per turn, with the id
``"<row id>-<turn>"``; see :func:`~fastgrpo.data.formats.turn_rows`. Each turn counts as one row.

Image bytes embedded in parquet are kept in memory (about the size of the image columns on disk): parquet pages
are compressed, so reading an image again when it is decoded would decompress a row group of its column per image.
For a large parquet data set, read it as Arrow instead: ``hf://owner/name`` (a parquet snapshot in the hub cache is
converted once into the memory-mapped Arrow cache) or a ``save_to_disk`` folder (e.g.
``datasets.load_dataset("parquet", data_files=...)`` then ``save_to_disk(DIR)``). Records read from Arrow refer to
the image cells of the memory-mapped files and hold no image bytes (see :mod:`fastgrpo.data.hf_datasets`); so do
JSONL rows naming image files under the data root.

Rows that cannot become a record (no instruction, no source image, a value of the wrong type, broken JSON) are
skipped and returned as :class:`~fastgrpo.data.records.Problem` entries; the dataset counts them against the
bad-input threshold. Files that cannot be read at all raise ``ValueError``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastgrpo.data.formats import (
    KEY_COLUMN,
    ColumnMap,
    describe_columns,
    get_preset,
    row_columns,
    row_id,
    row_to_record,
    try_detect_preset,
    turn_rows,
)
from fastgrpo.data.hf_datasets import is_hf_dataset
from fastgrpo.data.records import BadInputError, EditRecord, Problem

__all__ = ["DATA_SUFFIXES", "LoadedRecords", "find_data_files", "load_records"]

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_PARQUET_BATCH_ROWS = 64  # image rows are large: small batches keep peak memory near one batch of images
# Flow-GRPO's training scripts read os.path.join(dataset, f"{split}_metadata.jsonl")
_FLOW_GRPO_SPLIT = re.compile(r".+_metadata\.jsonl")

logger = logging.getLogger(__name__)

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
    skipped: dict[str, str] = field(default_factory=dict)

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


def _parquet_file(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading {path} needs pyarrow; install it (pip install pyarrow) or use JSONL") from None
    try:
        return pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError for damaged files
        raise ValueError(f"{path} is not a readable parquet file ({error})") from None


def _schema_columns(schema: Any) -> list[str]:
    """Top-level column names, plus ``"<column>.<field>"`` for every field of a list-of-struct column."""
    import pyarrow as pa

    names = list(schema.names)
    for item in schema:
        kind = item.type
        if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_struct(kind.value_type):
            names += [f"{item.name}.{kind.value_type.field(i).name}" for i in range(kind.value_type.num_fields)]
    return names


def _parquet_rows(pf: Any, name: str, layout: ColumnMap, columns: Sequence[str], where: Sequence[str]) -> Iterator[Row]:
    needed = sorted(set(layout.columns_needed(columns)) | {w for w in where if w in pf.schema_arrow.names})
    number = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=needed):
        for row in batch.to_pylist():
            yield f"{name}:row {number}", f"{name}:{number}", row
            number += 1


def _choose_layout(
    columns: Sequence[str], preset: str | ColumnMap, overrides: Mapping[str, Any] | None
) -> tuple[ColumnMap | None, str]:
    """The layout of a file with ``columns``, or ``None`` and why none fits."""
    if preset == "auto":
        layout = try_detect_preset(columns, overrides)
        return layout, "" if layout else f"its columns {describe_columns(columns)} match no editing layout"
    layout = get_preset(preset)
    layout = layout.override(overrides) if overrides else layout
    if layout.match(columns) is not None:
        return layout, ""
    wanted = f"source {list(layout.source)} and instruction {list(layout.instruction)}"
    if layout.turns:
        wanted = f"a turns column {list(layout.turns)} whose turns have {wanted}"
    return None, f"its columns {describe_columns(columns)} lack the {layout.name} layout's {wanted} columns"


def _side_files(files: Sequence[Path]) -> dict[Path, str]:
    """The ``.jsonl`` files beside Flow-GRPO split files (in the same folder), each with the reason to skip it."""
    splits: dict[Path, list[str]] = {}
    for f in files:
        if _FLOW_GRPO_SPLIT.fullmatch(f.name):
            splits.setdefault(f.parent, []).append(f.name)
    return {
        f: f"it stands beside the Flow-GRPO split files {', '.join(splits[f.parent])}, which are read instead "
        "(pass the file itself to read it)"
        for f in files
        if f.parent in splits and f.suffix.lower() == ".jsonl" and not _FLOW_GRPO_SPLIT.fullmatch(f.name)
    }


def _matches(row: Mapping[str, Any], where: Mapping[str, str]) -> bool:
    return all(str(row.get(column)) == value for column, value in where.items())


def load_records(
    path: str | os.PathLike[str],
    *,
    preset: str | ColumnMap = "auto",
    columns: Mapping[str, str | Sequence[str]] | None = None,
    root: str | os.PathLike[str] | None = None,
    where: Mapping[str, str] | None = None,
    split: str | None = None,
) -> LoadedRecords:
    """Read every data file at ``path`` into records.

    Args:
        path: a ``.jsonl``/``.json``/``.parquet`` file or a folder of them (all are read, each with its own layout;
            files that fit no layout are skipped and logged, see the module docstring; pass a file to read one
            split, e.g. Flow-GRPO's ``train_metadata.jsonl``); or a Hugging Face data set: a ``save_to_disk``
            folder, an ``.arrow`` file or a folder of them, ``hf://owner/name[@revision]`` (see
            :mod:`fastgrpo.data.hf_datasets`).
        preset: a name in :data:`~fastgrpo.data.formats.PRESETS`, a :class:`ColumnMap`, or ``"auto"`` (per file:
            the preset that maps the most columns of the parquet schema or of the JSON rows).
        columns: explicit field -> column(s) overrides on top of the preset.
        root: folder that image paths are relative to; default: the folder holding the file (or ``path`` itself
            when it is a folder).
        where: keep only rows whose column equals the value as text, e.g. ``{"instruction_language": "en"}``.
        split: the split to read, of a Hugging Face data set or of a folder whose file names give splits the way
            ``load_dataset`` reads them (MagicBrush's ``data/train-*.parquet`` and ``data/dev-*.parquet``,
            Flow-GRPO's ``train_metadata.jsonl`` and ``test_metadata.jsonl``); ``None``: ``train``, else the only
            split. The other splits' files are skipped and logged.

    Returns:
        :class:`LoadedRecords`.

    Raises:
        ValueError: a missing path, an unknown preset, a file that is not valid JSON/parquet, no file whose
            columns the layout (with ``"auto"``: any preset) explains (the message names each file and why); an
            unknown split, a hub data set that is not cached, or a ``split`` for data that is not a Hugging Face
            data set.
    """
    if is_hf_dataset(path):
        return _load_hf(path, preset, columns, root, dict(where or {}), split)
    p = Path(path)
    if split is not None and p.is_file():
        raise ValueError(
            f"split={split!r} chooses among the files of a folder or the splits of a Hugging Face data set; {path} "
            "is one file, read whole: drop the split, or pass the file or folder of that split"
        )
    files = find_data_files(path)
    skipped: dict[Path, str] = {}
    if p.is_dir():
        files, skipped = _one_split(p, files, split)
    data_root = Path(root) if root is not None else (p if p.is_dir() else p.parent)
    if not data_root.is_dir():
        raise ValueError(f"data root {data_root} is not a folder; pass --root DIR holding the images")
    where = dict(where or {})
    records: list[EditRecord] = []
    problems: list[Problem] = []
    presets: dict[str, str] = {}
    side = _side_files(files) if p.is_dir() else {}
    for file in files:
        name = file.relative_to(p).as_posix() if p.is_dir() else file.name
        opened = _open_rows(file, name, preset, columns, where)
        if not isinstance(opened, str) and file in side:
            opened = f"its rows fit the {opened[0].name} layout, but {side[file]}"
        if isinstance(opened, str):
            skipped[file] = opened
            logger.info("%s: skipped, %s", name, opened)
            continue
        layout, rows = opened
        presets[name] = layout.name
        _add_rows(rows, layout, where, records, problems, task=layout.file_task(file.stem))
    why = {(f.relative_to(p).as_posix() if p.is_dir() else f.name): reason for f, reason in skipped.items()}
    if not presets:
        raise ValueError(
            f"no data file at {path} can be read: {'; '.join(f'{n}: {r}' for n, r in why.items())}; pass --preset "
            "and, if needed, an explicit column mapping (source=..., instruction=...)"
        )
    return LoadedRecords(records, problems, data_root, tuple(files), presets, why)


def _one_split(folder: Path, files: list[Path], split: str | None) -> tuple[list[Path], dict[Path, str]]:
    """The files of one split of ``folder`` (``split``; ``None``: ``train``, else the only one) when its file names
    give several splits or a split is asked for (:func:`~fastgrpo.data.hf_datasets.folder_splits`), and the files
    of the other splits with the reason they are skipped (logged). Files whose names give no split stay."""
    from fastgrpo.data.hf_datasets import choose_split, folder_splits

    splits = folder_splits(folder, files)
    if split is None and len(splits) == 1:
        return files, {}
    chosen = choose_split(sorted(splits), split, f"folder {folder}")
    others = {f: s for s, found in splits.items() if s != chosen for f in found if f not in splits[chosen]}
    skipped = {f: f"it holds the {s} split, not {chosen} (--split / data.split chooses)" for f, s in others.items()}
    for f, reason in skipped.items():
        logger.info("%s: skipped, %s", f.relative_to(folder).as_posix(), reason)
    return [f for f in files if f not in others], skipped


def _add_rows(
    rows: Iterable[Row],
    layout: ColumnMap,
    where: Mapping[str, str],
    records: list[EditRecord],
    problems: list[Problem],
    *,
    task: str | None = None,
) -> None:
    """Turn ``rows`` into records (appended to ``records``) or counted problems (appended to ``problems``); a
    multi-turn layout makes one record (or problem) per turn; ``task`` is the task of rows without one."""
    for origin, default_id, row in rows:
        if isinstance(row, BadInputError):
            problems.append(Problem(default_id, origin, row.reason, row.message))
            continue
        if where and not _matches(row, where):
            continue
        turns = turn_rows(row, layout, origin=origin, default_id=default_id) if layout.turns else None
        for turn_origin, turn_id, entry in turns or [(origin, default_id, row)]:
            if isinstance(entry, BadInputError):
                problems.append(Problem(turn_id, turn_origin, entry.reason, entry.message))
                continue
            try:
                records.append(row_to_record(entry, layout, origin=turn_origin, default_id=turn_id, default_task=task))
            except BadInputError as error:
                name = row_id(entry, layout) or turn_id
                problems.append(Problem(name, turn_origin, error.reason, error.message))


def _open_rows(
    file: Path, name: str, preset: str | ColumnMap, columns: Mapping[str, Any] | None, where: Mapping[str, str]
) -> tuple[ColumnMap, Iterable[Row]] | str:
    """The layout and rows of one data file, or why it is skipped."""
    if file.suffix.lower() == ".parquet":
        pf = _parquet_file(file)
        schema = _schema_columns(pf.schema_arrow)
        layout, why = _choose_layout(schema, preset, columns)
        return why if layout is None else (layout, _parquet_rows(pf, name, layout, schema, list(where)))
    listed = list(_jsonl_rows(file, name) if file.suffix.lower() == ".jsonl" else _json_rows(file, name))
    names: set[str] = set()
    for _, _, row in listed:
        if not isinstance(row, BadInputError):
            names |= row_columns(row)
    if not listed:
        return "it holds no rows"
    if not names:
        return f"it has no readable rows ({len(listed)} unreadable; the first: {listed[0][2]})"
    layout, why = _choose_layout(sorted(names), preset, columns)
    return why if layout is None else (layout, listed)


def _load_hf(
    path: str | os.PathLike[str],
    preset: str | ColumnMap,
    columns: Mapping[str, Any] | None,
    root: str | os.PathLike[str] | None,
    where: Mapping[str, str],
    split: str | None,
) -> LoadedRecords:
    from fastgrpo.data.hf_datasets import hf_rows, open_hf_split

    opened = open_hf_split(path, split=split)
    data_root = Path(root) if root is not None else opened.root
    if not data_root.is_dir():
        raise ValueError(f"data root {data_root} is not a folder; pass --root DIR holding the images")
    names = _schema_columns(opened.schema)  # matched like a parquet file's schema
    layout, why = _choose_layout(names, preset, columns)
    if layout is None:
        raise ValueError(
            f"{opened.name}: {why}; pass --preset and, if needed, an explicit column mapping (source=..., "
            "instruction=...)"
        )
    records: list[EditRecord] = []
    problems: list[Problem] = []
    _add_rows(hf_rows(opened, layout, names, list(where)), layout, where, records, problems)
    presets = {label: layout.name for label, _ in opened.parts}
    return LoadedRecords(records, problems, data_root, opened.files, presets)
