"""The synthetic editing task: deterministic, consistent masks, every operation, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fastgrpo.data.shapes import CELLS, COLOURS, OPS, ShapeSpec, render, shape_mask
from fastgrpo.data.synthetic import SyntheticEditTask


def test_samples_are_deterministic_and_seeds_differ():
    a, b = SyntheticEditTask(seed=3).sample(17), SyntheticEditTask(seed=3).sample(17)
    assert np.array_equal(a.source, b.source) and a.instruction == b.instruction and a.id == b.id
    other = [SyntheticEditTask(seed=4).sample(i) for i in range(20)]
    mine = [SyntheticEditTask(seed=3).sample(i) for i in range(20)]
    assert sum(np.array_equal(x.source, y.source) for x, y in zip(mine, other, strict=True)) < 5


@pytest.mark.parametrize("size", [12, 32, 64])
def test_edit_changes_only_the_masked_region(size):
    task = SyntheticEditTask(size=size, seed=0)
    seen = set()
    for i in range(200):
        s = task.sample(i)
        seen.add(s.spec.op)
        assert s.source.shape == s.target.shape == (size, size, 3) and s.source.dtype == np.uint8
        assert s.mask.shape == (size, size) and s.mask.dtype == bool and s.mask.any()
        changed = (s.source != s.target).any(-1)
        assert not (changed & ~s.mask).any(), s.instruction
        assert changed.any(), s.instruction  # every edit is visible
    assert seen == set(OPS)


def test_instructions_name_the_edit():
    task = SyntheticEditTask(seed=1)
    for i in range(100):
        s = task.sample(i)
        spec = s.spec
        assert f"{spec.target.colour} {spec.target.shape}" in s.instruction
        if spec.op == "recolour":
            assert s.instruction.endswith(spec.result.colour)
        if spec.op in ("move", "add"):
            obj = spec.result if spec.op == "move" else spec.target
            assert s.instruction.endswith(CELLS[obj.cell])
        if spec.op == "add":
            assert s.instruction.startswith("add an " if spec.target.colour[0] in "aeiou" else "add a ")


def test_shapes_fill_their_cell_without_touching_others():
    size = 30
    masks = [
        shape_mask(ShapeSpec(shape, "red", cell), size)
        for shape in ("square", "circle", "triangle")
        for cell in range(9)
    ]
    for m in masks:
        assert m.sum() > 10
    for cell in range(9):
        others = np.zeros((size, size), bool)
        for c in range(9):
            if c != cell:
                others |= shape_mask(ShapeSpec("square", "red", c), size)
        assert not (shape_mask(ShapeSpec("square", "red", cell), size) & others).any()
    image = render((ShapeSpec("circle", "blue", 4),), "black", size)
    assert tuple(image[15, 15]) == COLOURS["blue"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="size must be"):
        SyntheticEditTask(size=8)
    with pytest.raises(ValueError, match="ops must be"):
        SyntheticEditTask(ops=("paint",))
    with pytest.raises(ValueError, match="index must be"):
        SyntheticEditTask().sample(-1)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask(ShapeSpec("star", "red", 0), 32)
