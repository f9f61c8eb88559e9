"""PNG outputs of a run: a group's edits side by side (drawn with Pillow) and the reward curve (matplotlib).

:func:`save_group_grid` pastes the source and the group's edits, upscaled, into one image with the instruction and
each edit's reward; :func:`save_reward_curve` plots the training and evaluation reward against the step with
matplotlib's object API and the Agg renderer (no ``pyplot``, so no global figure state and no GUI backend;
matplotlib is imported on the first curve, keeping this module cheap to import).

Both render the PNG in memory and write it atomically (a temporary file in the target folder, then ``os.replace``),
create the parent folders, and return the path written, so a viewer refreshing the file never sees a half-written
image and a failed write leaves the previous image in place.

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
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from fastgrpo.train.metrics.drawing import (
    BACKGROUND,
    BEST_FRAME,
    FRAME,
    RGB,
    TEXT,
    as_uint8_rgb,
    default_font,
    fit_text,
    write_file,
)

if TYPE_CHECKING:
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

__all__ = ["group_grid_size", "save_group_grid", "save_reward_curve"]

# Group grid layout, in pixels.
_PAD = 4  # around the image and between cells
_HEADER_H = 18  # the instruction line
_CAPTION_H = 16  # the caption under each tile
_BORDER = 3  # frame around each tile (coloured for the best edit)

# Reward curve: 800x500 pixels; margins as fractions of the figure (room for the title, tick labels and "step").
_CURVE_SIZE = (800, 500)
_CURVE_DPI = 100
_CURVE_MARGINS = {"left": 0.09, "right": 0.97, "bottom": 0.1, "top": 0.91}
_AXIS = "#3c3c3c"
_GRID = "#e4e4e4"
_TRAIN = "#a0bee6"
_TRAIN_AVG = "#1e5ab4"
_EVAL = "#e66e14"


# --- group grid -------------------------------------------------------------------------------------------------------


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
    src = as_uint8_rgb(source, "source")
    if len(edits) == 0:
        raise ValueError("edits is empty: pass the group's G >= 1 edited images")
    if len(rewards) != len(edits):
        raise ValueError(f"rewards has {len(rewards)} values for {len(edits)} edits: pass one reward per edit")
    imgs = [as_uint8_rgb(edit, f"edits[{i}]") for i, edit in enumerate(edits)]
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
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = default_font()

    header = fit_text(draw, " ".join(instruction.split()), font, size[0] - 2 * _PAD)
    draw.text((_PAD, _PAD + _HEADER_H // 2), header, fill=TEXT, font=font, anchor="lm")

    def place(img: np.ndarray, row: int, col: int, caption: str, frame: RGB) -> None:
        x, y = _tile_origin(row, col, tile_h, tile_w)
        draw.rectangle(
            (x - _BORDER, y - _BORDER, x + tile_w + _BORDER - 1, y + tile_h + _BORDER - 1), outline=frame, width=_BORDER
        )
        canvas.paste(Image.fromarray(np.repeat(np.repeat(img, scale, axis=0), scale, axis=1), "RGB"), (x, y))
        text = fit_text(draw, caption, font, tile_w + 2 * _BORDER + _PAD)
        draw.text((x + tile_w / 2, y + tile_h + _BORDER + _CAPTION_H / 2), text, fill=TEXT, font=font, anchor="mm")

    place(src, 0, 0, "source", FRAME)
    for i, (img, value) in enumerate(zip(imgs, values, strict=True)):
        row, col = divmod(i, per_row)
        caption = f"{value:.3f}" if not math.isnan(value) else "nan"
        place(img, row, 1 + col, caption, BEST_FRAME if i == best else FRAME)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return write_file(path, buffer.getvalue())


# --- reward curve -----------------------------------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None for a missing, non-numeric or non-finite value."""
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` float64 arrays of shape ``[N]``, sorted by step, of the rows holding a finite ``step``
    and a finite ``key``; other rows (and entries that are not mappings) are left out."""
    points = []
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        step, value = _finite(row.get("step")), _finite(row.get(key))
        if step is not None and value is not None:
            points.append((step, value))
    points.sort(key=lambda p: p[0])
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean of a ``[N]`` array over up to ``window >= 1`` points (fewer at the start), shape ``[N]``."""
    values = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(values)
    out = sums / np.minimum(np.arange(1, len(values) + 1), window)
    out[window:] = (sums[window:] - sums[:-window]) / window
    return out


def _fit_title(renderer: RendererAgg, text: str, font: FontProperties, max_width: float) -> str:
    """``text`` on one line (runs of whitespace made one space), or its longest prefix followed by ``...`` that is
    at most ``max_width`` pixels wide in ``font``, measured by ``renderer``; ``$`` comes back escaped, so that a run
    name is shown as written instead of being parsed as mathtext."""

    def width(candidate: str) -> float:
        return renderer.get_text_width_height_descent(candidate, font, ismath=False)[0]

    text = " ".join(text.split())
    if width(text) > max_width:
        lo, hi = 0, len(text)
        while lo < hi:  # longest prefix length n with prefix + "..." fitting
            mid = (lo + hi + 1) // 2
            if width(text[:mid].rstrip() + "...") <= max_width:
                lo = mid
            else:
                hi = mid - 1
        text = text[:lo].rstrip() + "..."
    return text.replace("$", r"\$")


def _reward_figure(rows: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """The reward curve as a matplotlib figure of ``_CURVE_SIZE`` pixels, with an Agg canvas attached (so that
    ``savefig`` renders with Agg whatever the default backend); nothing is rendered yet."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    width, height = _CURVE_SIZE
    fig = Figure(figsize=(width / _CURVE_DPI, height / _CURVE_DPI), dpi=_CURVE_DPI, facecolor="white")
    renderer = FigureCanvasAgg(fig).get_renderer()
    train_x, train_y = _series(rows, "reward_mean")
    eval_x, eval_y = _series(rows, "eval_reward_mean")
    # Centred on the image, not on the axes (which sit right of centre), so that the width it may take is known.
    heading = fig.suptitle("")
    heading.set_text(_fit_title(renderer, title, heading.get_fontproperties(), width - 20))
    if len(train_x) == 0 and len(eval_x) == 0:
        fig.text(0.5, 0.5, "no data yet", ha="center", va="center", color=_AXIS)
        return fig

    # Fixed margins rather than a layout engine: the size is fixed and the tick labels short, and a layout engine
    # would cost an extra measuring pass on every save.
    fig.subplots_adjust(**_CURVE_MARGINS)
    ax = fig.add_subplot()
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.grid(True, color=_GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    if len(train_x):
        # A lone point would make an invisible zero-length line: show it as a marker.
        marker = "o" if len(train_x) == 1 else None
        ax.plot(train_x, train_y, color=_TRAIN, linewidth=1.0, marker=marker, markersize=5, label="train reward")
        window = max(1, round(0.1 * len(train_x)))
        if window >= 2:
            ax.plot(
                train_x,
                _moving_average(train_y, window),
                color=_TRAIN_AVG,
                linewidth=2.5,
                label=f"train, moving average of {window}",
            )
    if len(eval_x):
        ax.plot(eval_x, eval_y, color=_EVAL, linewidth=2.0, marker="o", markersize=6, label="eval reward")
    steps = np.concatenate([train_x, eval_x])
    if steps.min() == steps.max():
        # One step only: matplotlib would pad it by a fraction of a step and label the ticks 2.96, 3.00, ...
        ax.set_xlim(steps.min() - 1, steps.max() + 1)
    # A fixed corner: "best" scans every vertex of every line, slow on long runs; early rewards are low, so the
    # top left is usually free.
    ax.legend(loc="upper left", framealpha=0.9)
    return fig


def save_reward_curve(path: str | Path, rows: Sequence[Mapping[str, Any]], *, title: str = "reward") -> Path:
    """Draw the training and evaluation reward against the step, as an 800x500 PNG (matplotlib, Agg).

    ``rows`` are ``metrics.jsonl`` records: dicts with ``step`` and optionally ``reward_mean`` (training rows) and
    ``eval_reward_mean`` (evaluation rows). The training reward is a thin light line with a thicker trailing moving
    average over about 10 % of its points (from 15 points on); the evaluation reward is markers joined by a
    line in another colour; a legend names the series, the x axis is the step. Rows without a finite ``step`` or
    value (missing keys, None, NaN, inf, strings, non-mapping entries) are skipped, the line joining their
    neighbours; with nothing to plot the image holds the title and "no data yet".

    The PNG is rendered in memory and then written atomically, so ``path`` holds the old image or the new one, never
    a half-written file; its parent folders are created.

    Args:
        path: the PNG to write.
        rows: the metric records, in any order.
        title: the chart title, on one line (shortened with ``...`` when wider than the image).

    Returns:
        The path written.

    Raises:
        OSError: the folder or the file cannot be written (an earlier PNG at ``path`` is left as it was).
    """
    buffer = io.BytesIO()
    _reward_figure(rows, title).savefig(buffer, format="png")
    return write_file(path, buffer.getvalue())
