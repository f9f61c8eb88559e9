"""The built-in synthetic editing task: coloured shapes on plain backgrounds, edited by short instructions.

Every sample is generated in code from ``(seed, index)`` alone, so the task needs no download and any sample can
be regenerated exactly. A scene holds one to three shapes (square, circle, triangle) in distinct cells of a 3x3
grid; the edit is one of

- ``recolour``: "make the red circle blue" (the shape keeps its place and form);
- ``move``: "move the red circle to the top left" (to an empty cell);
- ``remove``: "remove the red circle" (its area shows the background);
- ``add``: "add a blue square at the bottom right" (in an empty cell).

Each :class:`SyntheticEdit` carries the source image, the instruction, the mask of the region meant to change,
the ground-truth edited image (for supervised pre-training and evaluation only; GRPO never sees it) and the
structured :class:`EditSpec` that rule rewards check. Images are ``uint8 [H, W, 3]``; masks ``bool [H, W]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastgrpo.data.shapes import (
    BACKGROUNDS,
    CELLS,
    COLOURS,
    OPS,
    SHAPES,
    EditSpec,
    Op,
    ShapeSpec,
    describe,
    render,
    shape_mask,
)

__all__ = ["SyntheticEdit", "SyntheticEditTask"]


@dataclass(frozen=True, eq=False)
class SyntheticEdit:
    """One sample: ``source``/``target`` ``uint8 [H, W, 3]``, ``mask`` ``bool [H, W]`` (region meant to change)."""

    id: str
    source: np.ndarray
    instruction: str
    mask: np.ndarray
    target: np.ndarray
    spec: EditSpec
    scene: tuple[ShapeSpec, ...] = field(default=())


class SyntheticEditTask:
    """Deterministic generator of :class:`SyntheticEdit` samples.

    Args:
        size: image side in pixels (>= 12; shapes scale with it).
        seed: task seed; sample ``i`` depends only on ``(seed, i)``.
        ops: the edit operations to draw from (all by default).

    Held-out conditions come from a different seed (the trainer's default uses ``seed + 1``), so that evaluation
    never sees a training scene.
    """

    def __init__(self, size: int = 32, seed: int = 0, ops: tuple[Op, ...] = OPS) -> None:
        if not isinstance(size, int) or size < 12:
            raise ValueError(f"size must be an integer >= 12 pixels, got {size!r}")
        unknown = [op for op in ops if op not in OPS]
        if not ops or unknown:
            raise ValueError(f"ops must be a non-empty subset of {OPS}, got {ops!r}")
        self.size, self.seed, self.ops = size, seed, tuple(ops)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def sample(self, index: int) -> SyntheticEdit:
        """The sample at ``index`` (any non-negative int)."""
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = self._rng(index)
        op: Op = self.ops[int(rng.integers(len(self.ops)))]
        background = str(rng.choice(list(BACKGROUNDS)))
        count = int(rng.integers(1, 4)) if op != "add" else int(rng.integers(0, 3))
        cells = rng.permutation(9)
        colours = rng.permutation(list(COLOURS))
        scene = tuple(
            ShapeSpec(str(rng.choice(SHAPES)), str(colours[i]), int(cells[i])) for i in range(count)
        )  # distinct colours make every object nameable by colour + shape
        free = [int(c) for c in cells[count:]]
        spec, after = self._edit(op, scene, free, background, rng)
        source = render(scene, background, self.size)
        target = render(after, background, self.size)
        mask = np.zeros((self.size, self.size), dtype=bool)
        for obj in (spec.target, spec.result):
            if obj is not None:
                mask |= shape_mask(obj, self.size)
        return SyntheticEdit(
            id=f"synthetic-{self.seed}-{index}",
            source=source,
            instruction=self._instruction(spec),
            mask=mask,
            target=target,
            spec=spec,
            scene=scene,
        )

    def _edit(self, op, scene, free, background, rng) -> tuple[EditSpec, tuple[ShapeSpec, ...]]:
        if op == "add":
            used = {s.colour for s in scene}
            colour = str(rng.choice([c for c in COLOURS if c not in used]))
            new = ShapeSpec(str(rng.choice(SHAPES)), colour, free[0])
            return EditSpec(op, new, new, background), (*scene, new)
        k = int(rng.integers(len(scene)))
        target = scene[k]
        rest = scene[:k] + scene[k + 1 :]
        if op == "remove":
            return EditSpec(op, target, None, background), rest
        if op == "move":
            result = ShapeSpec(target.shape, target.colour, free[int(rng.integers(len(free)))])
        else:  # recolour to a colour no other object has
            used = {s.colour for s in scene}
            result = ShapeSpec(target.shape, str(rng.choice([c for c in COLOURS if c not in used])), target.cell)
        return EditSpec(op, target, result, background), (*rest, result)

    @staticmethod
    def _instruction(spec: EditSpec) -> str:
        if spec.op == "recolour":
            assert spec.result is not None
            return f"make the {describe(spec.target)} {spec.result.colour}"
        if spec.op == "move":
            assert spec.result is not None
            return f"move the {describe(spec.target)} to the {CELLS[spec.result.cell]}"
        if spec.op == "remove":
            return f"remove the {describe(spec.target)}"
        article = "an" if spec.target.colour[0] in "aeiou" else "a"
        return f"add {article} {describe(spec.target)} at the {CELLS[spec.target.cell]}"
