"""Pillow drawing shared by the run's PNG outputs (the group grids of :mod:`.plots`, the report of
:mod:`fastgrpo.train.report`): the palette, fitting text into a width, reading an edit as ``uint8 RGB`` and writing a
file atomically.

Example::

    canvas = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), fit_text(draw, instruction, default_font(), w - 8), fill=TEXT, font=default_font())
    canvas.paste(Image.fromarray(as_uint8_rgb(edit, "edit")), (4, 20))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ImageDraw, ImageFont

__all__ = [
    "BACKGROUND",
    "BEST_FRAME",
    "FRAME",
    "RGB",
    "TEXT",
    "Font",
    "as_uint8_rgb",
    "default_font",
    "fit_text",
    "text_width",
    "write_file",
]

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
RGB = tuple[int, int, int]

BACKGROUND: RGB = (255, 255, 255)
TEXT: RGB = (20, 20, 20)
FRAME: RGB = (200, 200, 200)  # the frame around a tile
BEST_FRAME: RGB = (0, 170, 60)  # the frame around the best tile of a row or group


def write_file(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (a temporary file in the target folder, then ``os.replace``), creating
    the parent folders; returns ``path`` as a Path. A reader never sees a half-written file, and a failed write
    leaves the previous file in place."""
    from fastgrpo.train.storage.files import atomic_write_bytes  # imports torch: only when a file is written

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    return target


def default_font() -> Font:
    """Pillow's default font."""
    return ImageFont.load_default()


def text_width(draw: ImageDraw.ImageDraw, text: str, font: Font) -> float:
    """The width of ``text`` in pixels."""
    return float(draw.textlength(text, font=font))


def fit_text(draw: ImageDraw.ImageDraw, text: str, font: Font, max_width: float) -> str:
    """``text``, or its longest prefix followed by ``...`` that fits in ``max_width`` pixels."""
    if text_width(draw, text, font) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix length n with prefix + "..." fitting
        mid = (lo + hi + 1) // 2
        if text_width(draw, text[:mid].rstrip() + "...", font) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..."


def as_uint8_rgb(image: np.ndarray, what: str) -> np.ndarray:
    """``image`` as a uint8 ``[H, W, 3]`` array; floats are read as ``[0, 1]`` and clipped. ``ValueError`` naming
    ``what`` for any other shape, an empty image, integers outside ``[0, 255]`` or another dtype."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{what} must be an RGB image of shape [H, W, 3]: got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} is empty: got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"{what}: integer pixels must lie in [0, 255] (or pass floats in [0, 1])")
        return arr.astype(np.uint8)
    raise ValueError(f"{what} must be uint8 in [0, 255] or float in [0, 1]: got dtype {arr.dtype}")
