"""The canonical edit record, the problems a record can have, and the error that carries one.

Every loader (JSONL, JSON, parquet, the synthetic task) produces :class:`EditRecord` objects; everything downstream
(the dataset, the sampler, ``fastgrpo data check``) sees only this type. A record *refers* to its images; decoding
happens later, under the safety limits of :mod:`fastgrpo.data.images`.

An image reference (:data:`ImageRef`) is one of

- ``str``: a path relative to the data root (``"images/0001.png"``); absolute paths and paths that leave the root
  (``..``, symlinks pointing outside) are refused when the image is read;
- ``bytes``: the encoded file (PNG, JPEG, WebP, ...), as embedded in parquet data sets;
- ``numpy.ndarray``: decoded pixels, ``uint8 [H, W, 3]`` for images, ``bool [H, W]`` for masks (the synthetic task).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from fastgrpo.core.advantages import GroupKey

__all__ = [
    "REASONS",
    "BadInputError",
    "EditRecord",
    "ImageField",
    "ImageRef",
    "Problem",
    "Reason",
]

ImageRef = str | bytes | np.ndarray
ImageField = Literal["source", "mask", "target"]

Reason = Literal[
    "bad_row",
    "missing_instruction",
    "missing_image",
    "missing_file",
    "outside_root",
    "remote_url",
    "not_a_file",
    "unreadable",
    "empty_file",
    "too_large",
    "decompression_bomb",
    "unsupported_mode",
    "truncated_image",
    "corrupt_image",
    "bad_array",
    "mask_mismatch",
]
REASONS: dict[str, str] = {
    "bad_row": "the row is not a JSON object / a value has the wrong type",
    "missing_instruction": "no instruction, or an empty one",
    "missing_image": "no source image in the row",
    "missing_file": "the image file does not exist under the data root",
    "outside_root": "the path is absolute or leaves the data root (.., symlink)",
    "remote_url": "the path is a URL; images are never fetched over the network",
    "not_a_file": "the path is a directory, FIFO or device, not a regular file",
    "unreadable": "the file exists but cannot be opened (permissions, I/O error)",
    "empty_file": "the image file or byte string has zero bytes",
    "too_large": "the encoded image is larger than max_file_bytes",
    "decompression_bomb": "the declared pixel count exceeds max_pixels",
    "unsupported_mode": "pixel mode other than RGB, RGBA, L, LA, P, 1 (e.g. CMYK, I;16, F)",
    "truncated_image": "the file ends before the image data does",
    "corrupt_image": "not an image in an allowed format, or its data does not decode",
    "bad_array": "an in-memory image with the wrong dtype or shape",
    "mask_mismatch": "the mask's size differs from the source image's",
}


class BadInputError(ValueError):
    """One unusable input: a reason code (a key of :data:`REASONS`) and a message that names the thing.

    Raised by the path, image and row checks; the dataset catches it, turns it into a :class:`Problem` that
    names the record, counts it and skips the record.
    """

    def __init__(self, reason: Reason, message: str, field: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown bad-input reason {reason!r}; use one of {sorted(REASONS)}")
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.field = field  # "source", "mask" or "target" when known


@dataclass(frozen=True)
class Problem:
    """A skipped record (or row): which one, where it came from, why.

    Attributes:
        record: the record id (or the row's position when no id could be read).
        origin: where the record came from, ``"train.jsonl:line 17"`` or ``"part-0.parquet:row 16"``.
        reason: a key of :data:`REASONS`.
        message: one sentence naming the offending value and, where there is one, the fix.
        field: the image the problem is about (``"source"``, ``"mask"``, ``"target"``), or ``None``.
    """

    record: str
    origin: str
    reason: str
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = f" ({self.origin})" if self.origin and self.origin != self.record else ""
        return f"record {self.record!r}{where}: {self.message}"


def _check_ref(name: str, ref: object, *, optional: bool) -> None:
    if ref is None and optional:
        return
    if isinstance(ref, str | bytes | np.ndarray):
        return
    raise ValueError(
        f"EditRecord.{name} is a {type(ref).__name__}; pass a path relative to the data root (str), the encoded "
        "file (bytes) or decoded pixels (numpy array)"
    )


@dataclass(frozen=True, eq=False)
class EditRecord:
    """One (source image, instruction) condition and what else the data set knows about it.

    Attributes:
        id: identifier, unique within its data set where the data provides one (else ``"<file>:<row>"``).
        source: the image to edit (:data:`ImageRef`).
        instruction: the edit instruction, verbatim (non-empty after stripping whitespace).
        mask: optional image of the region meant to change (white / non-zero, or transparent, = change; see
            :func:`fastgrpo.data.images.decode_mask`).
        target: optional ground-truth edited image; GRPO never trains on it (evaluation and rewards only).
        input_caption: optional caption of the source image.
        output_caption: optional caption of the edited image.
        task: optional edit category (``"add"``, ``"background_change"``, ...).
        origin: where the record came from (``"file.jsonl:line 3"``), for messages.
        metadata: other columns the format declares (GEdit-Bench's language, Flow-GRPO's tags, the synthetic
            task's ``EditSpec``), read-only.

    Raises:
        ValueError: a field has the wrong type, ``id`` is empty or ``instruction`` is empty.
    """

    id: str
    source: ImageRef
    instruction: str
    mask: ImageRef | None = None
    target: ImageRef | None = None
    input_caption: str | None = None
    output_caption: str | None = None
    task: str | None = None
    origin: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"EditRecord.id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError(f"EditRecord {self.id!r} has no instruction; every record needs the edit instruction")
        _check_ref("source", self.source, optional=False)
        _check_ref("mask", self.mask, optional=True)
        _check_ref("target", self.target, optional=True)
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def source_id(self) -> str:
        """Stable identity of the source image: its path when it is a file, else the record id."""
        return self.source if isinstance(self.source, str) else self.id

    @property
    def group_key(self) -> GroupKey:
        """The GRPO group of this condition: source image id + instruction (SPEC S3)."""
        return GroupKey(self.source_id, self.instruction)

    def images(self) -> dict[str, ImageRef]:
        """The image references present, keyed ``"source"``, ``"mask"``, ``"target"``."""
        refs = {"source": self.source, "mask": self.mask, "target": self.target}
        return {name: ref for name, ref in refs.items() if ref is not None}

    def __getstate__(self) -> dict[str, Any]:
        # MappingProxyType does not pickle; DataLoader workers (spawn) need the record to.
        state = dict(self.__dict__)
        state["metadata"] = dict(self.metadata)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["metadata"] = MappingProxyType(state["metadata"])
        self.__dict__.update(state)
