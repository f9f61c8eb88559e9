"""Conditions from a data set: a data set too small for one iteration is refused in the user's terms."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import edit_fixtures as fx

from fastgrpo.train.conditions import DatasetSource
from fastgrpo.train.config.sections import DataConfig


def test_a_data_set_smaller_than_one_iteration_names_the_keys_to_change(tmp_path):
    cfg = DataConfig(source=str(fx.native(tmp_path, count=6)), resolutions=("16x16", "24x16"), multiple=8, held_out=2)
    with pytest.raises(ValueError) as info:
        DatasetSource(cfg, seed=0, conditions_per_step=4)
    message = str(info.value)
    assert "takes 4 conditions (sampler.prompts_per_step x ranks)" in message
    assert "largest bucket holds 2 training records" in message and "data.held_out=2" in message
    for key in ("sampler.prompts_per_step", "data.resolutions", "data.held_out"):
        assert key in message
    assert "groups_per_rank" not in message and "drop_last" not in message
    assert len(DatasetSource(cfg, seed=0, conditions_per_step=2).condition_indices(0)) == 2
