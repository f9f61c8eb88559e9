"""Resolution buckets: the fixed set of output sizes that images are resized and cropped to.

A transformer batch needs one latent shape, and a CUDA graph is captured per (batch, resolution) shape, so the
data layer emits only a few resolutions and a batch never mixes them (:class:`~fastgrpo.data.sampler.
GroupBatchSampler` batches within a bucket). An image goes to the bucket whose aspect ratio is closest to its own
(in log space, so 2:1 and 1:2 are equally far from 1:1); it is then scaled, preserving its aspect ratio, until it
covers the bucket, and centre-cropped to it. Resize and crop are one resampling pass (PIL's ``resize(box=...)``),
so no intermediate full-size image is made.

Sizes are ``(width, height)`` in pixels, like PIL; tensors built from them are ``[..., height, width]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Resolution", "ResolutionBuckets", "crop_box", "parse_resolutions"]

# Aspect ratios (width / height) of ResolutionBuckets.from_area: square, 4:3, 3:2, 16:9 and their portraits.
DEFAULT_ASPECTS: tuple[float, ...] = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16)


class Resolution(NamedTuple):
    """An image size in pixels, ``(width, height)`` like PIL's ``Image.size``."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def crop_box(size: tuple[int, int], out: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred region of an image of ``size`` that has the aspect ratio of ``out``.

    Args:
        size: the image's ``(width, height)`` in pixels (both >= 1).
        out: the output ``(width, height)``.

    Returns:
        ``(left, top, right, bottom)`` in the image's pixel coordinates (floats: the crop is exact, not rounded),
        for ``Image.resize(out, box=...)``.
    """
    w, h = size
    ow, oh = out
    if w <= 0 or h <= 0 or ow <= 0 or oh <= 0:
        raise ValueError(f"crop_box needs positive sizes, got size={size}, out={out}")
    if w * oh > ow * h:  # wider than the output: crop the sides
        cw = h * ow / oh
        return ((w - cw) / 2, 0.0, (w + cw) / 2, float(h))
    ch = w * oh / ow
    return (0.0, (h - ch) / 2, float(w), (h + ch) / 2)


@dataclass(frozen=True)
class ResolutionBuckets:
    """The output resolutions of a data set and the rule that assigns an image to one.

    Attributes:
        resolutions: the bucket sizes, ``(width, height)`` pairs; bucket ``i`` is ``resolutions[i]``.
        multiple: every width and height must be a multiple of this (16 for FLUX.1 Kontext and Qwen-Image-Edit:
            VAE factor 8 × patch size 2).

    Raises:
        ValueError: no resolutions, a duplicate, or a side that is not a positive multiple of ``multiple``.

    Example::

        buckets = ResolutionBuckets(((512, 512), (768, 512), (512, 768)))
        buckets.assign(1920, 1080)  # -> 1, the 3:2 landscape bucket
    """

    resolutions: tuple[Resolution, ...]
    multiple: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise ValueError(f"multiple must be a positive int, got {self.multiple!r}")
        sizes = tuple(Resolution(*map(int, r)) for r in self.resolutions)
        if not sizes:
            raise ValueError("resolutions is empty; give at least one (width, height), e.g. ((512, 512),)")
        for r in sizes:
            if r.width <= 0 or r.height <= 0 or r.width % self.multiple or r.height % self.multiple:
                raise ValueError(
                    f"resolution {r} is not a positive multiple of {self.multiple} on both sides; round it, "
                    f"e.g. to {_round_to(r.width, self.multiple)}x{_round_to(r.height, self.multiple)}"
                )
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"resolutions {[str(r) for r in sizes]} contain a duplicate; list each once")
        object.__setattr__(self, "resolutions", sizes)

    @classmethod
    def square(cls, side: int, multiple: int = 16) -> ResolutionBuckets:
        """One ``side × side`` bucket: every image is centre-cropped to a square."""
        return cls(((side, side),), multiple)

    @classmethod
    def from_area(
        cls, area: int, *, multiple: int = 16, aspects: Iterable[float] = DEFAULT_ASPECTS
    ) -> ResolutionBuckets:
        """Buckets of about ``area`` pixels at the given aspect ratios (width / height), sides rounded to
        ``multiple``; e.g. ``from_area(1024 * 1024)`` gives 1024x1024, 1184x880, 880x1184, ...
        """
        if area < multiple * multiple:
            raise ValueError(f"area={area} is smaller than one {multiple}x{multiple} block; pass pixels, e.g. 512**2")
        sizes: list[Resolution] = []
        for aspect in aspects:
            if not aspect > 0:
                raise ValueError(f"aspect ratios must be positive width/height values, got {aspect!r}")
            w = _round_to(math.sqrt(area * aspect), multiple)
            h = _round_to(math.sqrt(area / aspect), multiple)
            if Resolution(w, h) not in sizes:
                sizes.append(Resolution(w, h))
        return cls(tuple(sizes), multiple)

    def __len__(self) -> int:
        return len(self.resolutions)

    def __getitem__(self, index: int) -> Resolution:
        return self.resolutions[index]

    def assign(self, width: int, height: int) -> int:
        """Index of the bucket for a ``width × height`` image: the closest aspect ratio (log distance); on a tie
        the bucket listed first."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if len(self.resolutions) == 1:
            return 0
        target = math.log(width / height)
        distances = [abs(math.log(r.width / r.height) - target) for r in self.resolutions]
        return min(range(len(distances)), key=lambda i: (round(distances[i], 12), i))

    def describe(self) -> str:
        """``"512x512, 768x512"``: for logs and error messages."""
        return ", ".join(str(r) for r in self.resolutions)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def parse_resolutions(text: str | Sequence[str]) -> tuple[Resolution, ...]:
    """Parse ``"512x512,768x512"`` (width x height) into resolutions; for configs and command lines."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"resolution {item!r} is not WIDTHxHEIGHT, e.g. 768x512")
        out.append(Resolution(int(parts[0]), int(parts[1])))
    return tuple(out)
