"""The canonical edit record, the problems a record can have, and the error that carries one.

Every loader (JSONL, JSON, parquet, the synthetic task) produces :class:`EditRecord` objects; everything downstream
(the dataset, the sampler, ``fastgrpo data check``) sees only this type. A record *refers* to its images; decoding
happens later, under the safety limits of :mod:`fastgrpo.data.images`.

A record has one or more *input* images, in order: the image to edit (``source``) first, then reference images
(``references``: Flow-GRPO's ``dual_ref`` set pairs a control image with a referenced one; Qwen-Image-Edit-2509 and
FLUX.2 take several input images). Messages and :class:`Problem` name an image by its field: ``"source"``,
``"reference 1"``, ``"reference 2"``, ..., ``"mask"``, ``"target"``.

An image reference (:data:`ImageRef`) is one of

- ``str``: a path relative to the data root (``"images/0001.png"``); absolute paths and paths that leave the root
  (``..``, symlinks pointing outside) are refused when the image is read;
- ``bytes``: the encoded file (PNG, JPEG, WebP, ...), as embedded in parquet data sets;
- :class:`~fastgrpo.data.lazy_images.ArrowImage`: an image cell of a memory-mapped Arrow table (Hugging Face data
  sets), whose bytes are read only when the image is probed or decoded;
- ``numpy.ndarray``: decoded pixels, ``uint8 [H, W, 3]`` for images, ``bool [H, W]`` for masks (the synthetic task).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from fastgrpo.core.advantages import GroupKey
from fastgrpo.data.lazy_images import ArrowImage

__all__ = [
    "REASONS",
    "BadInputError",
    "EditRecord",
    "ImageField",
    "ImageRef",
    "Problem",
    "Reason",
    "input_field",
]

ImageRef = str | bytes | ArrowImage | np.ndarray
#: the name of one image of a record: ``"source"``, ``"reference <k>"`` (k = 1, 2, ...), ``"mask"`` or ``"target"``
ImageField = str

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
        self.field = field  # "source", "reference <k>", "mask" or "target" when known


@dataclass(frozen=True)
class Problem:
    """A skipped record (or row): which one, where it came from, why.

    Attributes:
        record: the record id (or the row's position when no id could be read).
        origin: where the record came from, ``"train.jsonl:line 17"`` or ``"part-0.parquet:row 16"``.
        reason: a key of :data:`REASONS`.
        message: one sentence naming the offending value and, where there is one, the fix.
        field: the image the problem is about (``"source"``, ``"reference 1"``, ..., ``"mask"``, ``"target"``), or
            ``None``.
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
    if isinstance(ref, str | bytes | ArrowImage | np.ndarray):
        return
    raise ValueError(
        f"EditRecord.{name} is a {type(ref).__name__}; pass a path relative to the data root (str), the encoded "
        "file (bytes), an Arrow image cell (ArrowImage) or decoded pixels (numpy array)"
    )


def input_field(position: int) -> ImageField:
    """The field name of input image ``position``: ``"source"`` for 0 (the image to edit), ``"reference <k>"``
    for the ``k``-th reference image."""
    return "source" if position == 0 else f"reference {position}"


@dataclass(frozen=True, eq=False)
class EditRecord:
    """One condition (the image to edit, any reference images, the instruction) and what else the data set knows.

    Attributes:
        id: identifier, unique within its data set where the data provides one (else ``"<file>:<row>"``).
        source: the image to edit (:data:`ImageRef`), the first input image.
        instruction: the edit instruction, verbatim (non-empty after stripping whitespace).
        mask: optional image of the region meant to change (white / non-zero, or transparent, = change; see
            :func:`fastgrpo.data.images.decode_mask`); a mask of another size than ``source`` is resized to it.
        target: optional ground-truth edited image; GRPO never trains on it (evaluation and rewards only).
        input_caption: optional caption of the source image.
        output_caption: optional caption of the edited image.
        task: optional edit category (``"add"``, ``"background_change"``, ...).
        origin: where the record came from (``"file.jsonl:line 3"``), for messages.
        metadata: other columns the format declares (GEdit-Bench's language, Flow-GRPO's tags, the synthetic
            task's ``EditSpec``), read-only.
        references: further input images after ``source``, in order (a tuple of :data:`ImageRef`; a list is
            accepted and stored as a tuple); empty for the usual single-image edit. :attr:`inputs` is
            ``(source, *references)``.

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
    references: tuple[ImageRef, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"EditRecord.id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError(f"EditRecord {self.id!r} has no instruction; every record needs the edit instruction")
        _check_ref("source", self.source, optional=False)
        _check_ref("mask", self.mask, optional=True)
        _check_ref("target", self.target, optional=True)
        if not isinstance(self.references, tuple | list):
            raise ValueError(
                f"EditRecord.references is a {type(self.references).__name__}; pass a tuple of image references "
                "(the input images after the source), () for none"
            )
        for i, ref in enumerate(self.references):
            _check_ref(f"references[{i}]", ref, optional=False)
        object.__setattr__(self, "references", tuple(self.references))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def inputs(self) -> tuple[ImageRef, ...]:
        """Every input image, in order: ``(source, *references)``."""
        return (self.source, *self.references)

    @property
    def source_id(self) -> str:
        """Stable identity of the source image: its path when it is a file, else (bytes, an Arrow cell, an array)
        the record id."""
        return self.source if isinstance(self.source, str) else self.id

    @property
    def inputs_id(self) -> str:
        """Stable identity of all input images: :attr:`source_id` alone without references, else the identities
        of every input joined with ``" | "`` (a path, or ``"<id>:<field>"`` for bytes, Arrow cells and arrays)."""
        if not self.references:
            return self.source_id
        parts = [ref if isinstance(ref, str) else f"{self.id}:{input_field(i)}" for i, ref in enumerate(self.inputs)]
        return " | ".join(parts)

    @property
    def group_key(self) -> GroupKey:
        """The GRPO group of this condition: input image ids + instruction (SPEC S3); with a single input image,
        the source image id + instruction."""
        return GroupKey(self.inputs_id, self.instruction)

    def images(self) -> dict[ImageField, ImageRef]:
        """The image references present, in order, keyed ``"source"``, ``"reference 1"``, ..., ``"mask"``,
        ``"target"``."""
        refs: dict[ImageField, ImageRef | None] = {input_field(i): ref for i, ref in enumerate(self.inputs)}
        refs |= {"mask": self.mask, "target": self.target}
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
