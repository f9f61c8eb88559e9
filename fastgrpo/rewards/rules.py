"""Rule rewards of the built-in synthetic task: the edit checked pixel by pixel against its :class:`EditSpec`.

The task's images are flat colours from a known palette, so what the edited image should show wherever the edit
acts follows from the spec alone: the region meant to change ``M`` (the target's and the result's shapes) should
show the result's colour on the result's shape and the background where the target was; the rest of the result's
grid cell (the "ring") should stay background, so that the right colour in the wrong form does not pass; everything
outside ``M`` should equal the source. Per pixel, agreement with the expected colour is
``exp(-d² / (2 τ²))`` with ``d`` the RGB distance (0-255 units) and ``τ = colour_tolerance``: 1 for an exact
colour, about 0.03 for the two closest palette colours at the default ``τ = 16``.

Terms (``details``), each in ``[0, 1]``:

- ``region``: mean agreement over ``M`` (colour, form and position of the change);
- ``shape``: mean agreement over the ring (nothing extra drawn in the result's cell);
- ``edit = region · shape``;
- ``keep``: mean agreement of the edited image with the source outside ``M``.

``score = edit_weight · edit + keep_weight · keep`` (default 0.75 / 0.25, so in ``[0, 1]``). Calibration: the
ground-truth target scores 1; the unedited source scores ``keep_weight`` (0.25: its ``edit`` is 0); uniform noise
scores about 0. Masks passed in the batch are not used: the spec defines the region exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastgrpo.data.shapes import BACKGROUNDS, COLOURS, EditSpec, shape_mask
from fastgrpo.rewards.base import RewardBatch, RewardFunction, RewardResult
from fastgrpo.rewards.config import dataclass_from_mapping
from fastgrpo.rewards.images import is_finite_image, to_float_hwc255

__all__ = ["RuleReward", "RuleRewardConfig", "expected_edit"]


@dataclass(frozen=True)
class RuleRewardConfig:
    """Configuration of :class:`RuleReward`.

    Attributes:
        edit_weight: weight of ``edit`` (the change is the instructed one).
        keep_weight: weight of ``keep`` (nothing else changed).
        colour_tolerance: ``τ`` in RGB units (0-255) of the per-pixel agreement ``exp(-d² / (2 τ²))``.
    """

    edit_weight: float = 0.75
    keep_weight: float = 0.25
    colour_tolerance: float = 16.0

    def __post_init__(self) -> None:
        weights = (self.edit_weight, self.keep_weight)
        if not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
            raise ValueError(f"RuleRewardConfig weights (edit, keep)={weights}: finite, >= 0, not both 0")
        if not self.colour_tolerance > 0:
            raise ValueError(f"RuleRewardConfig.colour_tolerance must be > 0 RGB units, got {self.colour_tolerance}")

    @classmethod
    def from_mapping(cls, mapping: Any, where: str = "rules") -> RuleRewardConfig:
        return dataclass_from_mapping(cls, mapping, where)


def _cell_box(cell: int, size: int) -> np.ndarray:
    """``bool [size, size]``: the pixels whose centres lie in grid cell ``cell`` (the geometry of ``shape_mask``)."""
    row, col = divmod(cell, 3)
    centres = np.arange(size) + 0.5
    third = size / 3.0
    rows = (centres >= row * third) & (centres < (row + 1) * third)
    cols = (centres >= col * third) & (centres < (col + 1) * third)
    return rows[:, None] & cols[None, :]


def expected_edit(spec: EditSpec, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the edit should produce where it acts.

    Returns:
        expected: ``float32 [size, size, 3]`` RGB (0-255) the edited image should show on ``region`` and ``ring``.
        region: ``bool [size, size]``, the pixels meant to change (target and result shapes).
        ring: ``bool [size, size]``, the rest of the result's cell (the target's for ``remove``): background.
    """
    background = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    expected = np.broadcast_to(background, (size, size, 3)).copy()
    region = shape_mask(spec.target, size)
    cell_of = spec.target
    if spec.result is not None:
        result = shape_mask(spec.result, size)
        expected[result] = COLOURS[spec.result.colour]
        region = region | result
        cell_of = spec.result
        ring = _cell_box(spec.result.cell, size) & ~result
    else:
        ring = _cell_box(cell_of.cell, size) & ~region
    return expected, region, ring


class RuleReward(RewardFunction):
    """Rule reward of the synthetic task, in ``[0, edit_weight + keep_weight]`` (``[0, 1]`` by default).

    Needs ``specs`` in the batch (``RewardBatch.build(..., specs=[edit.spec for edit in edits])``); raises
    ``ValueError`` without them. Images must be square and the source as large as the edited image. A sample with a
    non-finite pixel scores NaN.
    """

    def __init__(self, config: RuleRewardConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = RuleRewardConfig()
        self.config = config if isinstance(config, RuleRewardConfig) else RuleRewardConfig.from_mapping(config)
        self.score_range = (0.0, self.config.edit_weight + self.config.keep_weight)

    def _agreement(self, image: np.ndarray, reference: np.ndarray) -> np.ndarray:
        squared = ((image - reference) ** 2).sum(-1)
        return np.exp(-squared / (2.0 * self.config.colour_tolerance**2))

    def terms(self, source: np.ndarray, edited: np.ndarray, spec: EditSpec) -> dict[str, float]:
        """``region``, ``shape``, ``edit``, ``keep`` of one sample (images ``[S, S, 3]`` in 0-255, uint8 or float)."""
        # uint8 arithmetic would wrap around in the squared differences: always compute in float32
        source, edited = np.asarray(source, dtype=np.float32), np.asarray(edited, dtype=np.float32)
        size = edited.shape[0]
        expected, region, ring = expected_edit(spec, size)
        agree = self._agreement(edited, expected)
        region_score = float(agree[region].mean()) if region.any() else 1.0
        shape_score = float(agree[ring].mean()) if ring.any() else 1.0
        outside = ~region
        keep = float(self._agreement(edited, source)[outside].mean()) if outside.any() else 1.0
        return {"region": region_score, "shape": shape_score, "edit": region_score * shape_score, "keep": keep}

    def evaluate(self, batch: RewardBatch) -> RewardResult:
        if any(spec is None for spec in batch.specs):
            raise ValueError(
                "RuleReward needs the EditSpec of every sample: pass specs=[edit.spec for edit in edits] "
                "(only the built-in synthetic task has them)"
            )
        names = ("region", "shape", "edit", "keep")
        values = {name: [math.nan] * batch.size for name in (*names, "score")}
        failures: list[str | None] = [None] * batch.size
        samples = zip(batch.sources, batch.edited, batch.specs, strict=True)
        for i, (source_item, edited_item, spec) in enumerate(samples):
            if not (is_finite_image(edited_item) and is_finite_image(source_item)):
                failures[i] = "source or edited image has non-finite pixels"
                continue
            source, edited = to_float_hwc255(source_item), to_float_hwc255(edited_item)
            if edited.shape[0] != edited.shape[1] or source.shape != edited.shape:
                raise ValueError(
                    f"RuleReward needs square images of one size per sample; sample {i} has source "
                    f"{source.shape[:2]} and edited {edited.shape[:2]}: decode the edit at the task's size"
                )
            terms = self.terms(source, edited, spec)  # type: ignore[arg-type]
            for name in names:
                values[name][i] = terms[name]
            values["score"][i] = self.config.edit_weight * terms["edit"] + self.config.keep_weight * terms["keep"]
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        details = {name: as_tensor(values[name]) for name in names}
        return RewardResult(score=as_tensor(values["score"]), details=details, failures=tuple(failures))
