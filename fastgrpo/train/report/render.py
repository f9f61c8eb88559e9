"""The report's files: ``report.png`` drawn with Pillow, ``report.json`` and ``report.md``, each written atomically.

See :mod:`fastgrpo.train.report` for what they hold.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fastgrpo.models.base import EditModel
from fastgrpo.rewards.composite import CompositeReward
from fastgrpo.train.conditions import ConditionItem
from fastgrpo.train.metrics.drawing import BACKGROUND, BEST_FRAME, FRAME, TEXT, as_uint8_rgb, fit_text, write_file
from fastgrpo.train.parallel.distributed import DistContext
from fastgrpo.train.report.comparison import TOTAL, Comparison, Variant, compare_variants

__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "REPORT_PNG",
    "render_report_png",
    "report_grid_size",
    "write_report",
    "write_run_report",
]

REPORT_PNG, REPORT_JSON, REPORT_MD = "report.png", "report.json", "report.md"

# report.png layout, in pixels
_TILE = 192  # the longest side of each tile: images are scaled to fit (nearest neighbour up, Lanczos down)
_PAD = 6  # around the image, between cells and rows
_BORDER = 3  # frame around each tile (green for the best total of the first reward in the row)
_HEADER_H = 18  # the instruction line above each row
_LINE_H = 14  # a caption line in the normal font (the label, the total of each reward)
_SMALL_H = 11  # a caption line in the small font (the components)
_MAX_SMALL = 12  # component lines per tile at most; more are summed up as "+k more"
_ROW_RULE: tuple[int, int, int] = (235, 235, 235)


def _fonts() -> tuple[Any, Any]:
    """The normal and the small font (Pillow's default font at two sizes; one bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=11), ImageFont.load_default(size=9)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        font = ImageFont.load_default()
        return font, font


def _caption_lines(comparison: Comparison) -> tuple[int, int]:
    """``(normal, small)`` caption lines of every tile: the label and one total per reward; the components."""
    components = sum(len(comparison.names[r]) - 1 for r in comparison.rewards)
    return 1 + len(comparison.rewards), components if components <= _MAX_SMALL else _MAX_SMALL


def _cell(tile: int, caption: tuple[int, int]) -> tuple[int, int]:
    """``(cell width, row height)``: the framed tile, then under it the caption; the instruction above."""
    body = tile + 2 * _BORDER + caption[0] * _LINE_H + caption[1] * _SMALL_H + _PAD
    return tile + 2 * _BORDER, _HEADER_H + body


def report_grid_size(comparison: Comparison, *, tile: int = _TILE) -> tuple[int, int]:
    """``(width, height)`` in pixels of the ``report.png`` of ``comparison``: one row per shown condition, one
    column for the source and one per variant; ``(0, 0)`` when no condition is shown."""
    if not comparison.shown:
        return 0, 0
    cell_w, row_h = _cell(tile, _caption_lines(comparison))
    columns = 1 + len(comparison.variants)
    return _PAD + columns * (cell_w + _PAD), _PAD + len(comparison.shown) * (row_h + _PAD)


def _fit_image(image: np.ndarray, tile: int) -> Image.Image:
    """``image`` scaled so that its longest side is at most ``tile``: by the largest whole factor with nearest
    neighbour when it is smaller, with Lanczos when it is larger."""
    height, width = image.shape[:2]
    if max(height, width) <= tile:
        k = tile // max(height, width)
        return Image.fromarray(np.repeat(np.repeat(image, k, axis=0), k, axis=1), "RGB")
    f = tile / max(height, width)
    size = (max(1, round(width * f)), max(1, round(height * f)))
    return Image.fromarray(image, "RGB").resize(size, Image.Resampling.LANCZOS)


def _format(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3f}"


def render_report_png(comparison: Comparison, *, tile: int = _TILE) -> bytes:
    """The PNG bytes of ``report.png`` (see :func:`write_report`); ``ValueError`` when no condition is shown or a
    shown condition lacks a variant's edit."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 8:
        raise ValueError(f"tile must be an integer >= 8 (pixels of a tile's longest side): got {tile!r}")
    if not comparison.shown:
        raise ValueError("no condition to show in report.png (rows=0)")
    caption = _caption_lines(comparison)
    cell_w, row_h = _cell(tile, caption)
    size = report_grid_size(comparison, tile=tile)
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font, small = _fonts()
    first = comparison.rewards[0]
    multi = len(comparison.rewards) > 1

    def place(image: np.ndarray, row_y: int, col: int, lines: list[str], small_lines: list[str], best: bool) -> None:
        x0 = _PAD + col * (cell_w + _PAD)
        y0 = row_y + _HEADER_H
        frame = BEST_FRAME if best else FRAME
        draw.rectangle((x0, y0, x0 + cell_w - 1, y0 + tile + 2 * _BORDER - 1), outline=frame, width=_BORDER)
        picture = _fit_image(as_uint8_rgb(image, "edit"), tile)
        canvas.paste(picture, (x0 + _BORDER + (tile - picture.width) // 2, y0 + _BORDER + (tile - picture.height) // 2))
        y = y0 + tile + 2 * _BORDER + 2
        for text in lines:
            draw.text((x0 + cell_w / 2, y + _LINE_H / 2), fit_text(draw, text, font, cell_w), fill=TEXT, font=font,
                      anchor="mm")  # fmt: skip
            y += _LINE_H
        for text in small_lines:
            draw.text((x0 + 2, y + _SMALL_H / 2), fit_text(draw, text, small, cell_w - 4), fill=TEXT, font=small,
                      anchor="lm")  # fmt: skip
            y += _SMALL_H

    for r, shown in enumerate(comparison.shown):
        row_y = _PAD + r * (row_h + _PAD)
        if r:
            draw.line((_PAD, row_y - _PAD // 2, size[0] - _PAD, row_y - _PAD // 2), fill=_ROW_RULE)
        header = f"#{shown.index} {' '.join(shown.item.instruction.split())}"
        draw.text((_PAD, row_y + _HEADER_H / 2), fit_text(draw, header, font, size[0] - 2 * _PAD), fill=TEXT,
                  font=font, anchor="lm")  # fmt: skip
        totals = {v.label: comparison.scores[v.label][first][TOTAL][shown.index] for v in comparison.variants}
        finite = {k: t for k, t in totals.items() if math.isfinite(t)}
        best = max(finite, key=finite.__getitem__) if len(finite) > 1 else None
        place(shown.item.source, row_y, 0, ["source", *[""] * (caption[0] - 1)], [shown.item.id][: caption[1]], False)
        for c, variant in enumerate(comparison.variants, start=1):
            if variant.label not in shown.edits:
                raise ValueError(f"condition {shown.index} has no edit of variant {variant.label!r}")
            scores = comparison.scores[variant.label]
            lines = [variant.label, *(f"{r_} {_format(scores[r_][TOTAL][shown.index])}" for r_ in comparison.rewards)]
            parts = [
                f"{r_ + '/' if multi else ''}{name} {_format(scores[r_][name][shown.index])}"
                for r_ in comparison.rewards
                for name in comparison.names[r_][1:]
            ]
            if len(parts) > caption[1]:
                parts = [*parts[: caption[1] - 1], f"+{len(parts) - caption[1] + 1} more"]
            place(shown.edits[variant.label], row_y, c, lines, parts, variant.label == best)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def write_report(comparison: Comparison, directory: str | Path, *, tile: int = _TILE) -> dict[str, Path]:
    """Write ``report.png`` (when conditions are shown), ``report.json`` and ``report.md`` into ``directory``
    (created), each atomically (a file holds its old or its new content, never a mix); returns ``{"png": ...,
    "json": ..., "md": ...}`` of the files written.

    Raises:
        OSError: the directory or a file cannot be written; ValueError: a bad ``tile``.
    """
    directory = Path(directory)
    out: dict[str, Path] = {}
    if comparison.shown:
        out["png"] = write_file(directory / REPORT_PNG, render_report_png(comparison, tile=tile))
    text = json.dumps(comparison.to_dict(), indent=2, allow_nan=False) + "\n"
    out["json"] = write_file(directory / REPORT_JSON, text.encode())
    out["md"] = write_file(directory / REPORT_MD, comparison.markdown().encode())
    return out


def write_run_report(
    model: EditModel,
    groups: Sequence[Sequence[ConditionItem]],
    rewards: Mapping[str, CompositeReward],
    directory: str | Path,
    *,
    variants: Sequence[Variant | tuple[Any, ...]],
    rows: int,
    eval_steps: int,
    batch_size: int,
    seed: int,
    dist: DistContext | None = None,
) -> Path:
    """The report at the end of a training run: :func:`compare_variants` then :func:`write_report`; returns
    ``directory``.

    Typical call (the held-out conditions, ``{"train": reward, "gold": gold}`` or ``{"train": reward}``)::

        write_run_report(model, held_out, rewards, run_dir, rows=cfg.eval.report_conditions,
                         variants=[("base", model.reference, "base model (LoRA off)"),
                                   ("trained", policy.ema_weights, "the trained LoRA (its EMA when kept)")],
                         eval_steps=cfg.sampler.eval_steps, batch_size=..., seed=cfg.runtime.seed)

    The variants' contexts must leave the weights as they found them (``model.reference`` and
    ``policy.ema_weights`` do). Raises what :func:`compare_variants` and :func:`write_report` raise (several ranks
    included: call it only in a single-process run).
    """
    comparison = compare_variants(model, groups, rewards, variants, eval_steps=eval_steps, batch_size=batch_size,
                                  seed=seed, rows=rows, dist=dist)  # fmt: skip
    write_report(comparison, directory)
    return Path(directory)
