"""The saturation reward: HSV saturation of the edit, in [0, 1], blind to the instruction (deliberately hackable)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastgrpo.rewards.base import RewardBatch
from fastgrpo.rewards.registry import build_reward
from fastgrpo.rewards.saturation import SaturationReward


def test_saturation_is_zero_for_grey_one_for_pure_colour_and_ignores_the_instruction():
    grey = np.full((6, 6, 3), 128, np.uint8)
    red = np.zeros((6, 6, 3), np.uint8)
    red[..., 0] = 255
    half = red.copy()
    half[:3] = 0  # black pixels count as unsaturated
    scores = SaturationReward().evaluate(RewardBatch.build([grey] * 3, [grey, red, half], ["x", "y", "z"])).score
    assert scores.tolist() == pytest.approx([0.0, 1.0, 0.5])
    again = SaturationReward().evaluate(RewardBatch.build([red] * 3, [grey, red, half], ["a", "b", "c"])).score
    assert again.tolist() == scores.tolist()


def test_non_finite_pixels_score_nan_and_the_type_is_registered():
    bad = np.full((4, 4, 3), np.nan, np.float32)
    good = np.full((4, 4, 3), 0.5, np.float32)
    reward = build_reward({"components": {"sat": {"type": "saturation", "weight": 1.0}}})
    total = reward.evaluate(RewardBatch.build([good, good], [bad, good], ["a", "b"])).total()
    assert math.isnan(float(total[0])) and float(total[1]) == 0.0
    with pytest.raises(ValueError, match="unknown"):
        build_reward({"components": {"sat": {"type": "saturation", "weight": 1.0, "gain": 2}}})
