"""Column layouts of public editing data sets, and turning one row into an :class:`EditRecord`.

A layout is a :class:`ColumnMap`: for each record field, the candidate column names, tried in order (the first one
present in the row or parquet schema wins). A candidate ``"a+b"`` joins several columns with ``-`` (MagicBrush's
``img_id`` and ``turn_index`` make its id). Presets (``--preset NAME``), and the columns each one reads:

- ``fastgrpo``: the native layout, ``id, source, instruction, mask, target, input_caption, output_caption, task``.
- ``magicbrush`` (MagicBrush parquet): ``img_id``+``turn_index`` (id), ``source_img``, ``instruction``,
  ``mask_img``, ``target_img``.
- ``emu_edit`` (Emu Edit test set): ``idx``, ``image``, ``instruction``, ``task``, ``input_caption``,
  ``output_caption``, ``edited_image`` (in the *generations* variant); metadata ``split``.
- ``gedit_bench`` (GEdit-Bench): ``key``, ``input_image`` (else ``input_image_raw``), ``instruction``,
  ``task_type``; metadata ``instruction_language`` (``en``/``cn``; or ``language``), ``Intersection_exist``.
- ``imgedit`` (ImgEdit JSON/JSONL): ``key`` (or the JSON object's key, else ``id``); the image path from ``path``,
  ``image_path``, ``image`` or ``id``; ``prompt``/``instruction``/``edit_prompt``/``edit``; ``edit_type``.
- ``instructpix2pix``: ``input_image``/``original_image``, ``edit_prompt``, ``edited_image``, ``original_prompt``
  (input caption), ``edited_prompt`` (output caption).
- ``flow_grpo`` (Flow-GRPO editing ``*_metadata.jsonl``): ``image`` (path relative to the file's folder),
  ``prompt``; ``tag`` as task; metadata ``include``, ``exclude``, ``t2i_prompt``.

Image cells may be a path string (relative to the data root), raw bytes, or the Hugging Face image struct
``{"bytes": ..., "path": ...}`` (bytes win; ``path`` alone is a file path). Rows without an id get
``"<file name>:<line or row>"``. Any preset can be adjusted with explicit columns, e.g.
``preset.override({"instruction": "edit_instruction", "mask": ""})`` (an empty name drops the field).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from fastgrpo.data.records import BadInputError, EditRecord, ImageRef

__all__ = ["PRESETS", "ColumnMap", "detect_preset", "get_preset", "row_id", "row_to_record"]

RECORD_FIELDS = ("id", "source", "instruction", "mask", "target", "input_caption", "output_caption", "task")
KEY_COLUMN = "__key__"  # pseudo-column: the key of a JSON object-of-objects file


@dataclass(frozen=True)
class ColumnMap:
    """Where each record field lives in a row: candidate column names per field, first present wins.

    Attributes:
        name: the preset's name (for messages and the ``data check`` summary).
        source, instruction: required; a row with neither candidate is skipped with a counted problem.
        id, mask, target, input_caption, output_caption, task: optional fields.
        metadata: further columns copied verbatim into ``EditRecord.metadata`` when present.
    """

    name: str
    source: tuple[str, ...]
    instruction: tuple[str, ...]
    id: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    input_caption: tuple[str, ...] = ()
    output_caption: tuple[str, ...] = ()
    task: tuple[str, ...] = ()
    metadata: tuple[str, ...] = ()

    def override(self, columns: Mapping[str, str | Sequence[str]]) -> ColumnMap:
        """A copy with some fields' columns replaced: ``{"instruction": "edit"}`` or ``{"mask": ""}`` (drop).

        Raises:
            ValueError: an unknown field name, or an empty ``source`` / ``instruction``.
        """
        known = {f.name for f in fields(self)} - {"name"}
        changes: dict[str, tuple[str, ...]] = {}
        for key, value in columns.items():
            if key not in known:
                raise ValueError(f"unknown record field {key!r} in the column mapping; use one of {sorted(known)}")
            names = (value,) if isinstance(value, str) else tuple(value)
            changes[key] = tuple(n for n in names if n)
        mapped = replace(self, **changes)
        if not mapped.source or not mapped.instruction:
            raise ValueError("the column mapping must keep a 'source' and an 'instruction' column")
        return mapped

    def resolve(self, columns: Collection[str]) -> dict[str, str]:
        """Field -> the first candidate column present in ``columns`` (fields with none are left out)."""
        present = set(columns)
        chosen: dict[str, str] = {}
        for name in RECORD_FIELDS:
            for candidate in getattr(self, name):
                if all(part in present for part in candidate.split("+")):
                    chosen[name] = candidate
                    break
        return chosen

    def columns_needed(self, columns: Collection[str]) -> list[str]:
        """The physical columns to read from a file with ``columns`` (parquet reads only these)."""
        resolved = self.resolve(columns)
        needed = {part for candidate in resolved.values() for part in candidate.split("+")}
        needed |= {m for m in self.metadata if m in set(columns)}
        return sorted(needed)


PRESETS: dict[str, ColumnMap] = {
    p.name: p
    for p in (
        ColumnMap(
            "fastgrpo",
            source=("source",),
            instruction=("instruction",),
            id=("id",),
            mask=("mask",),
            target=("target",),
            input_caption=("input_caption",),
            output_caption=("output_caption",),
            task=("task",),
        ),
        ColumnMap(
            "magicbrush",
            source=("source_img",),
            instruction=("instruction",),
            id=("img_id+turn_index", "img_id"),
            mask=("mask_img",),
            target=("target_img",),
        ),
        ColumnMap(
            "gedit_bench",
            source=("input_image", "input_image_raw"),
            instruction=("instruction",),
            id=("key",),
            task=("task_type",),
            metadata=("instruction_language", "language", "Intersection_exist"),
        ),
        ColumnMap(
            "emu_edit",
            source=("image",),
            instruction=("instruction",),
            id=("idx",),
            target=("edited_image",),
            input_caption=("input_caption",),
            output_caption=("output_caption",),
            task=("task",),
            metadata=("split",),
        ),
        ColumnMap(
            "instructpix2pix",
            source=("input_image", "original_image"),
            instruction=("edit_prompt",),
            target=("edited_image",),
            input_caption=("original_prompt", "input_prompt"),
            output_caption=("edited_prompt", "output_prompt"),
        ),
        ColumnMap(
            "flow_grpo",
            source=("image",),
            instruction=("prompt",),
            task=("tag",),
            metadata=("include", "exclude", "t2i_prompt"),
        ),
        ColumnMap(
            "imgedit",
            source=("path", "image_path", "image", "id"),
            instruction=("prompt", "instruction", "edit_prompt", "edit"),
            id=("key", KEY_COLUMN, "id"),
            task=("edit_type",),
        ),
    )
}


def get_preset(name: str | ColumnMap) -> ColumnMap:
    """The preset called ``name`` (a :class:`ColumnMap` passes through).

    Raises:
        ValueError: an unknown name; the message lists the presets.
    """
    if isinstance(name, ColumnMap):
        return name
    key = name.strip().lower().replace("-", "_")
    if key not in PRESETS:
        raise ValueError(f"unknown data preset {name!r}; use one of {', '.join(PRESETS)} or 'auto'")
    return PRESETS[key]


def detect_preset(columns: Collection[str], overrides: Mapping[str, str | Sequence[str]] | None = None) -> ColumnMap:
    """The preset that explains most of ``columns``: it must find a source and an instruction column, and among
    those the one that maps the most fields wins (ties: the order of :data:`PRESETS`).

    Args:
        columns: the column names of the data (a parquet schema, a JSON row's keys).
        overrides: explicit columns applied to every preset before scoring (see :meth:`ColumnMap.override`).

    Raises:
        ValueError: no preset finds both a source and an instruction column; the message lists the columns.
    """
    best, best_score = None, -1
    for base in PRESETS.values():
        preset = base.override(overrides) if overrides else base
        found = preset.resolve(columns)
        if "source" in found and "instruction" in found and len(found) > best_score:
            best, best_score = preset, len(found)
    if best is None:
        raise ValueError(
            f"no preset matches the columns {sorted(c for c in columns if c != KEY_COLUMN)}; pass --preset and, "
            "if needed, an explicit column mapping (source=..., instruction=...)"
        )
    return best


def _image(value: Any, column: str) -> ImageRef | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        return _image(value.get("path"), column)
    raise BadInputError(
        "bad_row", f"column {column!r} holds a {type(value).__name__}; expected a path, bytes or an image struct"
    )


def _text(row: Mapping[str, Any], column: str | None) -> str | None:
    if column is None:
        return None
    parts = [row.get(part) for part in column.split("+")]
    if any(p is None for p in parts):
        return None
    if any(isinstance(p, list | dict | bytes) for p in parts):
        raise BadInputError("bad_row", f"column {column!r} holds a {type(parts[0]).__name__}; expected text")
    return "-".join(str(p) for p in parts)


def row_id(row: Mapping[str, Any], columns: ColumnMap) -> str | None:
    """The id a row declares under ``columns`` (for naming a row that cannot become a record), or ``None``."""
    found = columns.resolve([k for k, v in row.items() if v is not None])
    try:
        return _text(row, found.get("id"))
    except BadInputError:
        return None


def row_to_record(row: Mapping[str, Any], columns: ColumnMap, *, origin: str, default_id: str) -> EditRecord:
    """Build the record of one row.

    Args:
        row: column name -> value (a JSON object, or a parquet row as a dict).
        columns: the layout.
        origin: where the row came from (``"train.jsonl:line 4"``).
        default_id: the id when the layout finds none.

    Raises:
        BadInputError: ``missing_instruction`` (absent, empty or whitespace), ``missing_image`` (no source) or
            ``bad_row`` (a value of the wrong type).
    """
    found = columns.resolve([k for k, v in row.items() if v is not None])
    if "instruction" not in found:
        raise BadInputError(
            "missing_instruction", f"row has no instruction (looked for columns {list(columns.instruction)})"
        )
    instruction = row[found["instruction"]]
    if not isinstance(instruction, str):
        raise BadInputError(
            "bad_row", f"instruction column {found['instruction']!r} holds a {type(instruction).__name__}"
        )
    if not instruction.strip():
        raise BadInputError("missing_instruction", f"instruction column {found['instruction']!r} is empty")
    source = _image(row.get(found.get("source", "")), found.get("source", ""))
    if source is None:
        raise BadInputError("missing_image", f"row has no source image (looked for columns {list(columns.source)})")
    return EditRecord(
        id=_text(row, found.get("id")) or default_id,
        source=source,
        instruction=instruction,
        mask=_image(row.get(found["mask"]), found["mask"]) if "mask" in found else None,
        target=_image(row.get(found["target"]), found["target"]) if "target" in found else None,
        input_caption=_text(row, found.get("input_caption")),
        output_caption=_text(row, found.get("output_caption")),
        task=_text(row, found.get("task")),
        origin=origin,
        metadata={m: row[m] for m in columns.metadata if row.get(m) is not None},
    )
