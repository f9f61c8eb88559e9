"""Rule rewards on the built-in synthetic task: calibrated on ground truth, the unedited source and noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastgrpo.data.shapes import COLOURS, EditSpec, ShapeSpec, render, shape_mask
from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.rewards import RewardBatch, RuleReward, RuleRewardConfig
from fastgrpo.rewards.rules import expected_edit

TASK = SyntheticEditTask(size=32, seed=0)
EDITS = [TASK.sample(i) for i in range(64)]


def score(edited, edits=EDITS, reward=None):
    reward = reward or RuleReward()
    batch = RewardBatch.build(
        [e.source for e in edits], edited, [e.instruction for e in edits], specs=[e.spec for e in edits]
    )
    return reward.evaluate(batch)


def test_ground_truth_scores_one_for_every_op() -> None:
    result = score([e.target for e in EDITS])
    assert {e.spec.op for e in EDITS} == {"recolour", "move", "remove", "add"}
    assert result.score.tolist() == pytest.approx([1.0] * len(EDITS), abs=1e-6)


def test_unedited_source_scores_only_its_keep_weight() -> None:
    result = score([e.source for e in EDITS])
    assert result.details["edit"].max() < 1e-3 and result.details["keep"].min() > 0.999
    assert result.score.max() <= 0.25 + 1e-3


def test_noise_scores_about_zero() -> None:
    rng = np.random.default_rng(0)
    result = score([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in EDITS])
    assert result.score.max() < 0.02


def test_float_tensors_and_scores_between_the_extremes() -> None:
    """A half-done edit (right place, half the pixels) lands between the source and the target."""
    targets = torch.stack([torch.from_numpy(e.target).permute(2, 0, 1) for e in EDITS]).float() / 255
    sources = torch.stack([torch.from_numpy(e.source).permute(2, 0, 1) for e in EDITS]).float() / 255
    half = sources.clone()
    half[..., ::2, :] = targets[..., ::2, :]
    full, partial = score(targets).score, score(half).score
    assert full.tolist() == pytest.approx([1.0] * len(EDITS), abs=1e-5)
    assert ((partial > 0.3) & (partial < 0.9)).all()


def test_wrong_colour_shape_or_position_is_penalised() -> None:
    background = "gray"
    target = ShapeSpec("circle", "red", 0)
    spec = EditSpec("recolour", target, ShapeSpec("circle", "blue", 0), background)
    source = render((target,), background, 32)
    right = render((spec.result,), background, 32)
    wrong_colour = render((ShapeSpec("circle", "green", 0),), background, 32)
    wrong_shape = render((ShapeSpec("square", "blue", 0),), background, 32)
    wrong_place = render((target, ShapeSpec("circle", "blue", 4)), background, 32)
    edits = [right, wrong_colour, wrong_shape, wrong_place]
    batch = RewardBatch.build([source] * 4, edits, ["make the red circle blue"] * 4, specs=[spec] * 4)
    result = RuleReward().evaluate(batch)
    assert result.score[0] == pytest.approx(1.0)
    assert result.details["region"][1] < 0.01  # green is not blue
    assert result.details["region"][2] == pytest.approx(1.0) and result.details["shape"][2] < 0.9  # square corners
    assert result.details["region"][3] < 0.01 and result.details["keep"][3] < 1.0  # blue circle elsewhere
    assert (result.score[1:] < 0.9).all()


def test_expected_edit_matches_the_generator() -> None:
    for edit in EDITS[:16]:
        expected, region, _ = expected_edit(edit.spec, 32)
        assert np.array_equal(region, edit.mask)
        assert np.array_equal(expected[region], edit.target[region].astype(np.float32))
    spec = EditSpec("add", ShapeSpec("square", "yellow", 8), ShapeSpec("square", "yellow", 8), "navy")
    expected, region, ring = expected_edit(spec, 32)
    assert np.array_equal(region, shape_mask(spec.result, 32)) and not (ring & region).any()
    assert (expected[region] == COLOURS["yellow"]).all()


def test_nan_pixels_and_bad_input() -> None:
    edited = torch.stack([torch.from_numpy(e.target).permute(2, 0, 1) for e in EDITS[:2]]).float() / 255
    edited[0, 1, 3, 3] = math.nan
    result = score(edited, EDITS[:2])
    assert math.isnan(result.score[0]) and result.score[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="specs"):
        RuleReward().evaluate(RewardBatch.build([EDITS[0].source], [EDITS[0].target], ["x"]))
    with pytest.raises(ValueError, match="square images"):
        score([np.zeros((32, 16, 3), np.uint8)], EDITS[:1])
    with pytest.raises(ValueError, match="weights"):
        RuleRewardConfig(edit_weight=0, keep_weight=0)


def test_weights_scale_the_range() -> None:
    reward = RuleReward({"edit_weight": 2.0, "keep_weight": 1.0})
    assert reward.score_range == (0.0, 3.0)
    assert score([e.target for e in EDITS[:4]], EDITS[:4], reward).score.tolist() == pytest.approx([3.0] * 4)


def test_terms_accept_uint8_images_without_wrapping_around():
    from fastgrpo.data.synthetic import SyntheticEditTask
    from fastgrpo.rewards.rules import RuleReward

    edit = SyntheticEditTask(seed=5).sample(3)
    reward = RuleReward()
    as_uint8 = reward.terms(edit.source, edit.target, edit.spec)
    as_float = reward.terms(edit.source.astype("float32"), edit.target.astype("float32"), edit.spec)
    assert as_uint8 == as_float and as_uint8["edit"] == 1.0
