"""PNG outputs of a run, drawn with Pillow only: a group's edits side by side, and the reward curve.

Both functions write atomically (a temporary file in the target folder, then ``os.replace``), create the parent
folders, and return the path written, so a viewer refreshing the file never sees a half-written image.

Example::

    save_group_grid(run_dir / "samples" / "step_000100.png", source, edits, rewards, instruction)
    save_reward_curve(run_dir / "reward.png", read_metrics(run_dir / "metrics.jsonl"))
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["group_grid_size", "save_group_grid", "save_reward_curve"]

_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
_RGB = tuple[int, int, int]

# Group grid layout, in pixels.
_PAD = 4  # around the image and between cells
_HEADER_H = 18  # the instruction line
_CAPTION_H = 16  # the caption under each tile
_BORDER = 3  # frame around each tile (coloured for the best edit)

_BACKGROUND: _RGB = (255, 255, 255)
_TEXT: _RGB = (20, 20, 20)
_FRAME: _RGB = (200, 200, 200)
_BEST_FRAME: _RGB = (0, 170, 60)

# Reward curve layout.
_CURVE_SIZE = (800, 500)
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 70, 24, 40, 50
_AXIS: _RGB = (60, 60, 60)
_GRID: _RGB = (228, 228, 228)
_TRAIN: _RGB = (160, 190, 230)
_TRAIN_AVG: _RGB = (30, 90, 180)
_EVAL: _RGB = (230, 110, 20)


# --- shared -----------------------------------------------------------------------------------------------------------


def _font() -> _Font:
    return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: _Font) -> float:
    return float(draw.textlength(text, font=font))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: _Font, max_width: float) -> str:
    """``text``, or its longest prefix followed by ``...`` that fits in ``max_width`` pixels."""
    if _text_width(draw, text, font) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix length n with prefix + "..." fitting
        mid = (lo + hi + 1) // 2
        if _text_width(draw, text[:mid].rstrip() + "...", font) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..."


def _save_png_atomic(image: Image.Image, path: str | Path) -> Path:
    from fastgrpo.train.storage.files import atomic_write_bytes

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(target, buffer.getvalue())
    return target


# --- group grid -------------------------------------------------------------------------------------------------------


def _as_uint8_rgb(image: np.ndarray, what: str) -> np.ndarray:
    """``image`` as a uint8 ``[H, W, 3]`` array; floats are read as ``[0, 1]`` and clipped."""
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


def _grid_shape(num_edits: int, columns: int | None) -> tuple[int, int]:
    """``(rows, edit columns)`` of the grid."""
    per_row = num_edits if columns is None else min(columns, num_edits)
    return math.ceil(num_edits / per_row), per_row


def group_grid_size(
    height: int, width: int, num_edits: int, *, scale: int = 4, columns: int | None = None
) -> tuple[int, int]:
    """``(width, height)`` in pixels of the image :func:`save_group_grid` draws for these arguments."""
    rows, per_row = _grid_shape(num_edits, columns)
    cell_w = width * scale + 2 * _BORDER
    cell_h = height * scale + 2 * _BORDER + _CAPTION_H
    return _PAD + (1 + per_row) * (cell_w + _PAD), _PAD + _HEADER_H + rows * (cell_h + _PAD)


def _tile_origin(row: int, col: int, tile_h: int, tile_w: int) -> tuple[int, int]:
    """Top-left pixel ``(x, y)`` of the image inside cell ``(row, col)`` (column 0 holds the source)."""
    cell_w = tile_w + 2 * _BORDER
    cell_h = tile_h + 2 * _BORDER + _CAPTION_H
    x = _PAD + col * (cell_w + _PAD) + _BORDER
    y = _PAD + _HEADER_H + row * (cell_h + _PAD) + _BORDER
    return x, y


def save_group_grid(
    path: str | Path,
    source: np.ndarray,
    edits: Sequence[np.ndarray],
    rewards: Sequence[float],
    instruction: str,
    *,
    scale: int = 4,
    columns: int | None = None,
) -> Path:
    """Draw one group: the instruction, then the source and each edit with its reward; the best edit is framed.

    Layout: a header line with the instruction (shortened with ``...`` when wider than the image), then a row
    ``source | edit_1 ... edit_G``, each upscaled ``scale`` times with nearest neighbour and captioned (``source``,
    then the reward with 3 decimals, ``nan`` for NaN). The best finite reward's tile gets a green frame. With
    ``columns``, the edits wrap onto rows of at most that many; the source stays in the first row.

    Args:
        path: the PNG to write.
        source: the source image, uint8 ``[H, W, 3]`` or float in ``[0, 1]``.
        edits: the group's ``G >= 1`` edits, each the source's shape.
        rewards: one reward per edit.
        instruction: the edit instruction.
        scale: integer upscaling factor, ``>= 1``.
        columns: edits per row, ``>= 1``; None puts all of them in one row.

    Returns:
        The path written.

    Raises:
        ValueError: bad shapes or dtypes, edits of another size than the source, a reward count different from the
            edit count, or a bad ``scale``/``columns``.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1 (the nearest-neighbour upscaling factor): got {scale!r}")
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise ValueError(f"columns must be an integer >= 1 (edits per row) or None for one row: got {columns!r}")
    src = _as_uint8_rgb(source, "source")
    if len(edits) == 0:
        raise ValueError("edits is empty: pass the group's G >= 1 edited images")
    if len(rewards) != len(edits):
        raise ValueError(f"rewards has {len(rewards)} values for {len(edits)} edits: pass one reward per edit")
    imgs = [_as_uint8_rgb(edit, f"edits[{i}]") for i, edit in enumerate(edits)]
    for i, img in enumerate(imgs):
        if img.shape != src.shape:
            raise ValueError(
                f"edits[{i}] has shape {tuple(img.shape)} but the source has {tuple(src.shape)}: "
                f"resize the edits to the source's size"
            )
    values = [float(r) for r in rewards]
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
    best = max(finite, key=lambda pair: (pair[0], -pair[1]))[1] if finite else None

    height, width = src.shape[:2]
    tile_h, tile_w = height * scale, width * scale
    per_row = _grid_shape(len(imgs), columns)[1]
    size = group_grid_size(height, width, len(imgs), scale=scale, columns=columns)
    canvas = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()

    header = _fit_text(draw, " ".join(instruction.split()), font, size[0] - 2 * _PAD)
    draw.text((_PAD, _PAD + _HEADER_H // 2), header, fill=_TEXT, font=font, anchor="lm")

    def place(img: np.ndarray, row: int, col: int, caption: str, frame: _RGB) -> None:
        x, y = _tile_origin(row, col, tile_h, tile_w)
        draw.rectangle(
            (x - _BORDER, y - _BORDER, x + tile_w + _BORDER - 1, y + tile_h + _BORDER - 1), outline=frame, width=_BORDER
        )
        canvas.paste(Image.fromarray(np.repeat(np.repeat(img, scale, axis=0), scale, axis=1), "RGB"), (x, y))
        text = _fit_text(draw, caption, font, tile_w + 2 * _BORDER + _PAD)
        draw.text((x + tile_w / 2, y + tile_h + _BORDER + _CAPTION_H / 2), text, fill=_TEXT, font=font, anchor="mm")

    place(src, 0, 0, "source", _FRAME)
    for i, (img, value) in enumerate(zip(imgs, values, strict=True)):
        row, col = divmod(i, per_row)
        caption = f"{value:.3f}" if not math.isnan(value) else "nan"
        place(img, row, 1 + col, caption, _BEST_FRAME if i == best else _FRAME)
    return _save_png_atomic(canvas, path)


# --- reward curve -----------------------------------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None for a missing, non-numeric or non-finite value."""
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    points = []
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        step, value = _finite(row.get("step")), _finite(row.get(key))
        if step is not None and value is not None:
            points.append((step, value))
    points.sort(key=lambda p: p[0])
    return points


def _nice_step(span: float, target_ticks: int = 5) -> float:
    """A round tick spacing (1, 2 or 5 times a power of ten) giving about ``target_ticks`` ticks over ``span``."""
    raw = span / max(target_ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _ticks(lo: float, hi: float, *, integer: bool) -> tuple[float, float, list[float]]:
    """Rounded axis bounds enclosing ``[lo, hi]`` and the ticks between them."""
    if hi - lo <= 0:
        pad = 1.0 if integer else max(abs(lo) * 0.1, 0.05)
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo)
    if integer:
        step = max(1.0, round(step))
    start, stop = math.floor(lo / step) * step, math.ceil(hi / step) * step
    count = round((stop - start) / step)
    return start, stop, [start + k * step for k in range(count + 1)]


def _tick_label(value: float, step: float) -> str:
    if step >= 1 and float(value).is_integer():
        return f"{int(value)}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))  # steps are 1, 2 or 5 times a power of ten
    return f"{value:.{min(decimals, 8)}f}"


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` points (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def save_reward_curve(path: str | Path, rows: Sequence[Mapping[str, Any]], *, title: str = "reward") -> Path:
    """Draw the training and evaluation reward against the step, as an 800x500 PNG.

    ``rows`` are ``metrics.jsonl`` records: dicts with ``step`` and optionally ``reward_mean`` (training rows) and
    ``eval_reward_mean`` (evaluation rows). The training reward is a thin light line with a thicker trailing moving
    average over about 10 % of its points; the evaluation reward is markers joined by a line in another colour.
    Rows without a finite ``step`` or value are skipped; with nothing to plot the image says "no data yet".

    Args:
        path: the PNG to write.
        rows: the metric records, in any order.
        title: the chart title.

    Returns:
        The path written.
    """
    train = _series(rows, "reward_mean")
    evals = _series(rows, "eval_reward_mean")
    width, height = _CURVE_SIZE
    canvas = Image.new("RGB", _CURVE_SIZE, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text(
        (width / 2, _MARGIN_TOP / 2), _fit_text(draw, title, font, width - 20), fill=_TEXT, font=font, anchor="mm"
    )
    if not train and not evals:
        draw.text((width / 2, height / 2), "no data yet", fill=_AXIS, font=font, anchor="mm")
        return _save_png_atomic(canvas, path)

    points = train + evals
    x_lo, x_hi, x_ticks = _ticks(min(p[0] for p in points), max(p[0] for p in points), integer=True)
    y_lo, y_hi, y_ticks = _ticks(min(p[1] for p in points), max(p[1] for p in points), integer=False)
    left, top, right, bottom = _MARGIN_LEFT, _MARGIN_TOP, width - _MARGIN_RIGHT, height - _MARGIN_BOTTOM

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_lo) / (x_hi - x_lo) * (right - left),
            bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top),
        )

    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for y in y_ticks:
        _, py = to_px(x_lo, y)
        draw.line((left, py, right, py), fill=_GRID)
        draw.line((left - 4, py, left, py), fill=_AXIS)
        draw.text((left - 7, py), _tick_label(y, y_step), fill=_TEXT, font=font, anchor="rm")
    for x in x_ticks:
        px, _ = to_px(x, y_lo)
        draw.line((px, top, px, bottom), fill=_GRID)
        draw.line((px, bottom, px, bottom + 4), fill=_AXIS)
        draw.text((px, bottom + 7), _tick_label(x, x_step), fill=_TEXT, font=font, anchor="mt")
    draw.rectangle((left, top, right, bottom), outline=_AXIS)
    draw.text(((left + right) / 2, height - 12), "step", fill=_TEXT, font=font, anchor="mm")

    legend: list[tuple[str, _RGB]] = []
    if train:
        xy = [to_px(x, y) for x, y in train]
        if len(xy) > 1:
            draw.line(xy, fill=_TRAIN, width=1)
        else:
            _dot(draw, xy[0], 3, _TRAIN)
        legend.append(("train reward", _TRAIN))
        window = max(1, round(0.1 * len(train)))
        if window >= 2:
            avg = _moving_average([v for _, v in train], window)
            draw.line(
                [to_px(x, a) for (x, _), a in zip(train, avg, strict=True)], fill=_TRAIN_AVG, width=3, joint="curve"
            )
            legend.append((f"train, moving average of {window}", _TRAIN_AVG))
    if evals:
        xy = [to_px(x, y) for x, y in evals]
        if len(xy) > 1:
            draw.line(xy, fill=_EVAL, width=2)
        for p in xy:
            _dot(draw, p, 4, _EVAL)
        legend.append(("eval reward", _EVAL))

    lx, ly = left + 10, top + 8
    box_w = 28 + max(_text_width(draw, label, font) for label, _ in legend) + 8
    draw.rectangle((lx - 4, ly - 4, lx + box_w, ly + 16 * len(legend)), fill=_BACKGROUND, outline=_GRID)
    for i, (label, colour) in enumerate(legend):
        y = ly + 16 * i + 6
        draw.line((lx, y, lx + 20, y), fill=colour, width=3)
        draw.text((lx + 28, y), label, fill=_TEXT, font=font, anchor="lm")
    return _save_png_atomic(canvas, path)


def _dot(draw: ImageDraw.ImageDraw, centre: tuple[float, float], radius: float, colour: _RGB) -> None:
    x, y = centre
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
