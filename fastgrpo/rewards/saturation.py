"""The colour-saturation reward: how vivid the edited image is, whatever the instruction asked.

``score = mean over pixels of the HSV saturation (max(R, G, B) - min(R, G, B)) / max(R, G, B)`` in ``[0, 1]`` (0
where a pixel is black). It reads no instruction and no source image, so a policy can raise it without editing
well: a deliberately hackable reward, for testing that a gold reward (``eval.rewards``) and the over-optimisation
alarm catch a training reward being gamed, or as a small style term beside a real reward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastgrpo.rewards.base import RewardBatch, RewardFunction, RewardResult
from fastgrpo.rewards.config import dataclass_from_mapping
from fastgrpo.rewards.images import is_finite_image, to_float_hwc255

__all__ = ["SaturationReward", "SaturationRewardConfig"]


@dataclass(frozen=True)
class SaturationRewardConfig:
    """Options of :class:`SaturationReward` (none yet: the score has no parameter)."""

    @classmethod
    def from_mapping(cls, mapping: Any, where: str = "saturation") -> SaturationRewardConfig:
        return dataclass_from_mapping(cls, mapping, where)


class SaturationReward(RewardFunction):
    """Mean HSV saturation of each edited image, in ``[0, 1]``; NaN for an image with non-finite pixels."""

    score_range = (0.0, 1.0)

    def __init__(self, config: SaturationRewardConfig | Mapping[str, Any] | None = None) -> None:
        config = config or SaturationRewardConfig()
        self.config = (
            config if isinstance(config, SaturationRewardConfig) else SaturationRewardConfig.from_mapping(config)
        )

    def evaluate(self, batch: RewardBatch) -> RewardResult:
        scores, failures = [], []
        for item in batch.edited:
            if not is_finite_image(item):
                scores.append(float("nan"))
                failures.append("edited image has non-finite pixels")
                continue
            rgb = to_float_hwc255(item)
            high, low = rgb.max(-1), rgb.min(-1)
            saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
            scores.append(float(saturation.mean()))
            failures.append(None)
        return RewardResult(score=torch.tensor(scores, dtype=torch.float32), failures=tuple(failures))
