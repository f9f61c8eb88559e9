"""The vocabulary of the built-in synthetic editing task: shapes, colours, grid cells and edit specs.

Part of the data layer: the task generator (:mod:`fastgrpo.data.synthetic`) draws its scenes and edits from it,
and the rule rewards that check an edit (:mod:`fastgrpo.rewards.rules`) and the built-in tiny editor's vocabulary
(:mod:`fastgrpo.models.tiny_text`) import it from here. Pure functions on numpy arrays, no I/O; importing it pulls
in numpy only (no PIL, no torch). Images are ``uint8 [H, W, 3]``; masks ``bool [H, W]``; sizes are in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Op = Literal["recolour", "move", "remove", "add"]
OPS: tuple[Op, ...] = ("recolour", "move", "remove", "add")
SHAPES = ("square", "circle", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
    "white": (240, 240, 240),
    "orange": (240, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 20),
    "gray": (90, 90, 95),
    "navy": (20, 30, 70),
    "olive": (60, 70, 30),
}
CELLS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)


@dataclass(frozen=True)
class ShapeSpec:
    """One object of a scene: its form, colour name and grid cell (index into :data:`CELLS`)."""

    shape: str
    colour: str
    cell: int


@dataclass(frozen=True)
class EditSpec:
    """What the edit asks for, in terms a rule reward can check.

    Attributes:
        op: the edit operation.
        target: the object the instruction names, as it is in the source (for ``add``: the new object).
        result: the object as it should be after the edit (None for ``remove``).
        background: background colour name of the scene.
    """

    op: Op
    target: ShapeSpec
    result: ShapeSpec | None
    background: str


def shape_mask(spec: ShapeSpec, size: int) -> np.ndarray:
    """``bool [size, size]`` pixels covered by ``spec`` (drawn inside its grid cell with a margin)."""
    cell = size / 3.0
    row, col = divmod(spec.cell, 3)
    cy, cx = (row + 0.5) * cell, (col + 0.5) * cell
    half = 0.36 * cell
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    if spec.shape == "square":
        return (np.abs(y - cy) <= half) & (np.abs(x - cx) <= half)
    if spec.shape == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 <= half**2
    if spec.shape == "triangle":  # apex up: inside the base and both slanted edges
        top, bottom = cy - half, cy + half
        frac = (y - top) / (2 * half)
        return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= frac * half)
    raise ValueError(f"unknown shape {spec.shape!r}; use one of {SHAPES}")


def render(scene: tuple[ShapeSpec, ...], background: str, size: int) -> np.ndarray:
    """``uint8 [size, size, 3]`` image of ``scene`` over a plain ``background``."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[background]
    for spec in scene:
        image[shape_mask(spec, size)] = COLOURS[spec.colour]
    return image


def describe(spec: ShapeSpec) -> str:
    return f"{spec.colour} {spec.shape}"
