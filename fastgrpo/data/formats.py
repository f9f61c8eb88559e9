"""Column layouts of public editing data sets, and turning one row into an :class:`EditRecord`.

A layout is a :class:`ColumnMap`: for each record field, the candidate column names, tried in order (the first one
present in the row or parquet schema wins). A candidate ``"a+b"`` joins several columns with ``-`` (MagicBrush's
``img_id`` and ``turn_index`` make its id). ``references`` is the exception: *every* listed column present is read,
in order. Presets (``--preset NAME``), and the columns each one reads:

- ``fastgrpo``: the native layout, ``id, source, references, instruction, mask, target, input_caption,
  output_caption, task``.
- ``magicbrush`` (MagicBrush parquet): ``img_id``+``turn_index`` (id), ``source_img``, ``instruction``,
  ``mask_img``, ``target_img``.
- ``emu_edit`` (Emu Edit test set): ``idx``, ``image``, ``instruction``, ``task``, ``input_caption``,
  ``output_caption``, ``edited_image`` (in the *generations* variant); metadata ``split``.
- ``gedit_bench`` (GEdit-Bench): ``key``, ``input_image`` (else ``input_image_raw``), ``instruction``,
  ``task_type``; metadata ``instruction_language`` (``en``/``cn``; or ``language``), ``Intersection_exist``.
- ``imgedit`` (ImgEdit-Bench JSON/JSONL): ``key`` (or the JSON object's key, else ``id``); the image path from
  ``path``, ``image_path``, ``image`` or ``id``; ``prompt``/``instruction``/``edit_prompt``/``edit``; ``edit_type``.
- ``imgedit_train`` (ImgEdit training parquet, ``Parquet/<task>_part<k>.parquet``): ``input_images`` (a list of
  paths: the first is the image to edit, any further ones are references), ``prompt``, ``output_images`` (target);
  the task is the ``<task>`` of the file name.
- ``imgedit_multiturn`` (ImgEdit multi-turn parquet): one ``data`` column holding the turns, each a struct of
  ``input_images``, ``output_images`` and ``prompt``; every turn becomes one record (see :func:`turn_rows`).
- ``instructpix2pix``: ``input_image``/``original_image``, ``edit_prompt``, ``edited_image``, ``original_prompt``
  (input caption), ``edited_prompt`` (output caption).
- ``flow_grpo`` (Flow-GRPO editing ``*_metadata.jsonl``): ``image`` (path relative to the file's folder), or the
  ``dual_ref`` set's ``ctrl_image`` with its ``ref_image`` as a reference and ``sup_image`` as target; ``prompt``;
  ``tag`` as task; metadata ``include``, ``exclude``, ``t2i_prompt``.

Image cells may be a path string (relative to the data root), raw bytes, the Hugging Face image struct
``{"bytes": ..., "path": ...}`` (bytes win; ``path`` alone is a file path), a reference to such a struct in
memory-mapped Arrow data (:class:`~fastgrpo.data.lazy_images.ArrowImage`, read when decoded, by the same rules), or
a list of those: a list in the ``source`` column gives the image to edit (its first item) and references (the
rest); a list in ``references`` adds each item; ``mask`` and ``target`` take one image (a list of one is fine). Rows
without an id get ``"<file name>:<line or row>"``. Any preset can be adjusted with explicit columns, e.g.
``preset.override({"instruction": "edit_instruction", "mask": ""})`` (an empty name drops the field), and an
explicit column may hold a list (``{"source": "input_images"}``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from fastgrpo.data.lazy_images import ArrowImage
from fastgrpo.data.records import BadInputError, EditRecord, ImageRef

__all__ = [
    "PRESETS",
    "ColumnMap",
    "detect_preset",
    "get_preset",
    "row_columns",
    "row_id",
    "row_to_record",
    "turn_rows",
]

RECORD_FIELDS = ("id", "source", "instruction", "mask", "target", "input_caption", "output_caption", "task")
KEY_COLUMN = "__key__"  # pseudo-column: the key of a JSON object-of-objects file
# ImgEdit names its training files <task>_part<k>.parquet (the ImgEdit README's "Download Dataset" tree)
_IMGEDIT_FILE_TASK = r"(?P<task>.+?)_part\d+"


@dataclass(frozen=True)
class ColumnMap:
    """Where each record field lives in a row: candidate column names per field, first present wins.

    Attributes:
        name: the preset's name (for messages and the ``data check`` summary).
        source, instruction: required; a row with neither candidate is skipped with a counted problem.
        id, mask, target, input_caption, output_caption, task: optional fields.
        metadata: further columns copied verbatim into ``EditRecord.metadata`` when present.
        references: columns of reference images (input images after the source); unlike the other fields, every
            one present is read, in order.
        turns: candidates for a column that holds a list of turns (structs); when set, each turn is one record
            whose fields are found *inside* the turn under the names above (see :func:`turn_rows`).
        task_pattern: a regular expression with a ``task`` group, matched against the data file's name (without
            suffix) to give the task of rows that have no task column (``""``: none).
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
    references: tuple[str, ...] = ()
    turns: tuple[str, ...] = ()
    task_pattern: str = ""

    def override(self, columns: Mapping[str, str | Sequence[str]]) -> ColumnMap:
        """A copy with some fields' columns replaced: ``{"instruction": "edit"}`` or ``{"mask": ""}`` (drop).

        Raises:
            ValueError: an unknown field name, or an empty ``source`` / ``instruction``.
        """
        known = {f.name for f in fields(self)} - {"name", "task_pattern"}
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
        """Field -> the first candidate column present in ``columns`` (fields with none are left out; the
        reference columns are :meth:`reference_columns`)."""
        present = set(columns)
        chosen: dict[str, str] = {}
        for name in RECORD_FIELDS:
            for candidate in getattr(self, name):
                if all(part in present for part in candidate.split("+")):
                    chosen[name] = candidate
                    break
        return chosen

    def reference_columns(self, columns: Collection[str]) -> list[str]:
        """The reference-image columns present in ``columns``, in the layout's order."""
        present = set(columns)
        return [c for c in self.references if c in present]

    def turns_column(self, columns: Collection[str]) -> str | None:
        """The first ``turns`` candidate present in ``columns``, or ``None``."""
        return next((c for c in self.turns if c in set(columns)), None)

    def match(self, columns: Collection[str]) -> dict[str, str] | None:
        """The columns this layout reads from data whose columns are ``columns`` (field -> column, plus
        ``"turns"`` and ``"references <k>"`` entries), or ``None`` when it finds no source and no instruction.

        ``columns`` may name fields inside list-of-struct columns as ``"<column>.<field>"`` (see
        :func:`row_columns`); a layout with ``turns`` looks for its fields there.
        """
        inner = list(columns)
        turns = None
        if self.turns:
            turns = self.turns_column(columns)
            if turns is None:
                return None
            inner = [c[len(turns) + 1 :] for c in columns if c.startswith(turns + ".")]
        found = self.resolve(inner)
        if "source" not in found or "instruction" not in found:
            return None
        found |= {f"references {i}": c for i, c in enumerate(self.reference_columns(inner), start=1)}
        return found | ({"turns": turns} if turns else {})

    def columns_needed(self, columns: Collection[str]) -> list[str]:
        """The physical columns to read from a file with ``columns`` (parquet reads only these)."""
        present = set(columns)
        turns = self.turns_column(columns) if self.turns else None
        resolved = self.resolve(columns) if turns is None else {}
        needed = {part for candidate in resolved.values() for part in candidate.split("+")}
        needed |= set(self.reference_columns(columns)) if turns is None else {turns}
        if turns is not None:  # the id, when the layout has one, is the outer row's
            needed |= {p for c in self.id if all(x in present for x in c.split("+")) for p in c.split("+")}
        needed |= {m for m in self.metadata if m in present}
        return sorted(needed)

    def file_task(self, stem: str) -> str | None:
        """The task that :attr:`task_pattern` reads from a data file's name without suffix, or ``None``."""
        if not self.task_pattern:
            return None
        found = re.fullmatch(self.task_pattern, stem)
        return found.group("task") if found else None


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
            references=("references",),
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
        # Flow-GRPO's dataset/dual_ref/*_metadata.jsonl: tag, prompt, ctrl_image (input/), ref_image
        # (referenced/), sup_image (supervise/); its other editing sets have image + prompt
        ColumnMap(
            "flow_grpo",
            source=("image", "ctrl_image"),
            instruction=("prompt",),
            target=("sup_image",),
            task=("tag",),
            metadata=("include", "exclude", "t2i_prompt"),
            references=("ref_image",),
        ),
        ColumnMap(
            "imgedit",
            source=("path", "image_path", "image", "id"),
            instruction=("prompt", "instruction", "edit_prompt", "edit"),
            id=("key", KEY_COLUMN, "id"),
            task=("edit_type",),
        ),
        # ImgEdit's training parquet (the ImgEdit README's "ImgEdit Dataset Format"): input_images and
        # output_images are lists of paths inside the extracted .tar archives, prompt is the instruction
        ColumnMap(
            "imgedit_train",
            source=("input_images",),
            instruction=("prompt",),
            target=("output_images",),
            task_pattern=_IMGEDIT_FILE_TASK,
        ),
        # ImgEdit's multi-turn parquet: one "data" column, a list of {input_images, output_images, prompt}
        ColumnMap(
            "imgedit_multiturn",
            source=("input_images",),
            instruction=("prompt",),
            target=("output_images",),
            metadata=("turn",),
            turns=("data",),
            task_pattern=_IMGEDIT_FILE_TASK,
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


def try_detect_preset(
    columns: Collection[str], overrides: Mapping[str, str | Sequence[str]] | None = None
) -> ColumnMap | None:
    """:func:`detect_preset`, but ``None`` when no preset matches."""
    best, best_score = None, -1
    for base in PRESETS.values():
        preset = base.override(overrides) if overrides else base
        found = preset.match(columns)
        if found is not None and len(found) > best_score:
            best, best_score = preset, len(found)
    return best


def detect_preset(columns: Collection[str], overrides: Mapping[str, str | Sequence[str]] | None = None) -> ColumnMap:
    """The preset that explains most of ``columns``: it must find a source and an instruction column, and among
    those the one that maps the most fields wins (ties: the order of :data:`PRESETS`).

    Args:
        columns: the column names of the data (a parquet schema, a JSON row's keys; fields inside list-of-struct
            columns as ``"<column>.<field>"``).
        overrides: explicit columns applied to every preset before scoring (see :meth:`ColumnMap.override`).

    Raises:
        ValueError: no preset finds both a source and an instruction column; the message lists the columns.
    """
    best = try_detect_preset(columns, overrides)
    if best is None:
        raise ValueError(
            f"no preset matches the columns {describe_columns(columns)}; pass --preset and, if needed, an explicit "
            "column mapping (source=..., instruction=...)"
        )
    return best


def describe_columns(columns: Collection[str]) -> list[str]:
    """The column names of ``columns`` for a message (the JSON object-key pseudo-column left out), sorted."""
    return sorted(c for c in columns if c != KEY_COLUMN)


def row_columns(row: Mapping[str, Any]) -> set[str]:
    """The columns of a JSON row for layout matching: its keys whose value is not null, plus
    ``"<key>.<field>"`` for the fields of a list of objects (the turns of a multi-turn row)."""
    names = {k for k, v in row.items() if v is not None}
    for key, value in row.items():
        if isinstance(value, list) and value and isinstance(value[0], Mapping):
            names |= {f"{key}.{field}" for field in value[0]}
    return names


def _image(value: Any, column: str) -> ImageRef | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str | ArrowImage):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        return _image(value.get("path"), column)
    raise BadInputError(
        "bad_row",
        f"column {column!r} holds a {type(value).__name__}; expected a path, bytes, an image struct or a list of them",
    )


def _images(value: Any, column: str) -> list[ImageRef]:
    """The images of one cell: none, one, or (a list cell) each item in order."""
    if not isinstance(value, list | tuple):
        ref = _image(value, column)
        return [] if ref is None else [ref]
    refs = []
    for i, item in enumerate(value):
        if isinstance(item, list | tuple):
            raise BadInputError("bad_row", f"column {column!r} holds a nested list at item {i}; expected images")
        ref = _image(item, column)
        if ref is None:
            raise BadInputError("bad_row", f"column {column!r} lists an empty image at item {i}")
        refs.append(ref)
    return refs


def _one_image(row: Mapping[str, Any], column: str | None, field: str) -> ImageRef | None:
    if column is None:
        return None
    refs = _images(row.get(column), column)
    if len(refs) > 1:
        raise BadInputError(
            "bad_row",
            f"{field} column {column!r} lists {len(refs)} images; a record has one {field} image: map {field} to a "
            f"column of one image, or drop it ({field}='')",
        )
    return refs[0] if refs else None


def _text(row: Mapping[str, Any], column: str | None) -> str | None:
    if column is None:
        return None
    parts = [row.get(part) for part in column.split("+")]
    if any(p is None for p in parts):
        return None
    if any(isinstance(p, list | dict | bytes | ArrowImage) for p in parts):
        raise BadInputError("bad_row", f"column {column!r} holds a {type(parts[0]).__name__}; expected text")
    return "-".join(str(p) for p in parts)


def row_id(row: Mapping[str, Any], columns: ColumnMap) -> str | None:
    """The id a row declares under ``columns`` (for naming a row that cannot become a record), or ``None``."""
    found = columns.resolve([k for k, v in row.items() if v is not None])
    try:
        return _text(row, found.get("id"))
    except BadInputError:
        return None


def row_to_record(
    row: Mapping[str, Any],
    columns: ColumnMap,
    *,
    origin: str,
    default_id: str,
    default_task: str | None = None,
) -> EditRecord:
    """Build the record of one row (of one turn, for a layout with ``turns``: see :func:`turn_rows`).

    Args:
        row: column name -> value (a JSON object, or a parquet row as a dict).
        columns: the layout.
        origin: where the row came from (``"train.jsonl:line 4"``).
        default_id: the id when the layout finds none.
        default_task: the task when the layout finds no task column (e.g. from the file name).

    Raises:
        BadInputError: ``missing_instruction`` (absent, empty or whitespace), ``missing_image`` (no source) or
            ``bad_row`` (a value of the wrong type, a target or mask column listing several images).
    """
    present = [k for k, v in row.items() if v is not None]
    found = columns.resolve(present)
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
    inputs = _images(row.get(found["source"]), found["source"]) if "source" in found else []
    if not inputs:
        raise BadInputError("missing_image", f"row has no source image (looked for columns {list(columns.source)})")
    for column in columns.reference_columns(present):
        inputs += _images(row[column], column)
    return EditRecord(
        id=_text(row, found.get("id")) or default_id,
        source=inputs[0],
        references=tuple(inputs[1:]),
        instruction=instruction,
        mask=_one_image(row, found.get("mask"), "mask"),
        target=_one_image(row, found.get("target"), "target"),
        input_caption=_text(row, found.get("input_caption")),
        output_caption=_text(row, found.get("output_caption")),
        task=_text(row, found.get("task")) or default_task,
        origin=origin,
        metadata={m: row[m] for m in columns.metadata if row.get(m) is not None},
    )


def turn_rows(
    row: Mapping[str, Any], columns: ColumnMap, *, origin: str, default_id: str
) -> Iterator[tuple[str, str, Mapping[str, Any] | BadInputError]]:
    """The turns of one multi-turn row, each as ``(origin, default id, turn row or why it is unusable)`` for
    :func:`row_to_record`.

    Turn ``k`` (counted from 1) of row ``R`` has the id ``"<R's id>-<k>"`` (the row's id column when the layout
    has one, else its ``default_id``) and the origin ``"<origin> turn <k>"``. Its image to edit is the turn's own
    input image; a turn that lists none edits the previous turn's output (its target). Columns of
    ``columns.metadata`` on the outer row are copied into every turn, and a ``turn`` column holding ``k`` is added
    (kept in ``EditRecord.metadata`` when the layout lists ``"turn"`` among its metadata, as ``imgedit_multiturn``
    does).

    Raises nothing: a row whose turns column is missing or not a list of objects yields one ``bad_row`` entry.
    """
    turns_column = columns.turns_column([k for k, v in row.items() if v is not None])
    turns = row.get(turns_column) if turns_column is not None else None
    if not isinstance(turns, list) or not turns or not all(isinstance(t, Mapping) for t in turns):
        kind = "no turns" if not turns else f"a {type(turns).__name__}, not a list of turn objects"
        looked = f"column {turns_column!r}" if turns_column else f"columns {list(columns.turns)}"
        yield origin, default_id, BadInputError("bad_row", f"multi-turn row has {kind} ({looked})")
        return
    base = row_id(row, columns) or default_id
    outer = {m: row[m] for m in columns.metadata if row.get(m) is not None}
    previous: Any = None
    for k, turn in enumerate(turns, start=1):
        current = {**outer, **turn}
        current.setdefault("turn", k)
        found = columns.resolve([key for key, v in current.items() if v is not None and v != []])
        if "source" not in found and previous is not None:
            current[columns.source[0]] = previous
        previous = current.get(found["target"]) if "target" in found else None
        yield f"{origin} turn {k}", f"{base}-{k}", current
