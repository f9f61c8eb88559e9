"""Conditions from a data set: a data set too small for one iteration is refused in the user's terms; records with
reference images reach the conditions, and a model that takes one input image refuses (or skips) them up front."""

from __future__ import annotations

import sys
from dataclasses import replace
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


def _with_references(folder, count: int, single: int):
    """``count`` records of a 16x16 image to edit and a reference, then ``single`` records without one."""
    files = {f"src/{i}.png": fx.png(16, 16, seed=i) for i in range(count + single)}
    files |= {f"ref/{i}.png": fx.png(16, 16, seed=50 + i) for i in range(count)}
    rows = [{"id": f"m{i}", "source": f"src/{i}.png", "references": [f"ref/{i}.png"], "instruction": "e"}
            for i in range(count)]  # fmt: skip
    rows += [{"id": f"s{i}", "source": f"src/{i}.png", "instruction": "e"} for i in range(count, count + single)]
    fx.write_files(folder, files)
    return fx.write_jsonl(folder / "refs.jsonl", rows)


def test_records_with_references_are_refused_for_a_one_image_model_naming_the_fix(tmp_path):
    cfg = DataConfig(source=str(_with_references(tmp_path, 2, 4)), resolutions=("16x16",), held_out=0)
    with pytest.raises(ValueError) as info:
        DatasetSource(cfg, seed=0, conditions_per_step=2, max_inputs=1, model_type="flux_kontext")
    message = str(info.value)
    assert "2 of 6 records have reference images (input images per record: 1 x 4, 2 x 2)" in message
    assert "model.type=flux_kontext takes one input image per condition (the image to edit)" in message
    assert "would not use them; no model adapter takes several input images yet" in message
    assert "set data.multi_input=skip to train on the 4 records with one input image" in message
    skipping = DatasetSource(replace(cfg, multi_input="skip"), seed=0, conditions_per_step=2, max_inputs=1)
    assert len(skipping.dataset) == 4 and {skipping.dataset.record(i).id for i in range(4)} == {"s2", "s3", "s4", "s5"}
    every = DataConfig(source=str(_with_references(tmp_path / "all", 3, 0)), resolutions=("16x16",), held_out=0)
    with pytest.raises(ValueError, match=r"3 of 3 records .* use a data set whose records have one input image"):
        DatasetSource(replace(every, multi_input="skip"), seed=0, conditions_per_step=2, max_inputs=1)
    kept = DatasetSource(cfg, seed=0, conditions_per_step=2)  # no model limit: the references reach the items
    items = kept.items([0, 1])
    assert [len(item.references) for item in items] == [1, 1] and items[0].references[0].shape == (16, 16, 3)


def _data_run(tmp_path, data, *extra: str):
    from fastgrpo.train.config import load_config

    return load_config(None, [
        f"data.source={data}", "data.resolutions=[16x16]", "data.held_out=0", "logging.eval_every=0",
        "logging.save_every=0", "logging.progress=false", "rewards.components={sat: {type: saturation, weight: 1.0}}",
        "sampler.prompts_per_step=2", "sampler.group_size=2", "sampler.train_steps=2", "sampler.eval_steps=2",
        "runtime.max_steps=1", f"logging.output_dir={tmp_path / 'runs'}", *extra,
    ])  # fmt: skip


def test_the_tiny_editor_trains_on_single_image_data_and_refuses_references_before_starting(tmp_path):
    from fastgrpo.train.loop import Trainer

    single = fx.native(tmp_path / "single", count=4)
    trainer = Trainer(_data_run(tmp_path, single, "logging.run_name=single"), log=lambda _m: None)
    try:
        assert trainer.run().steps_done == 1
    finally:
        trainer.close()
    refs = _with_references(tmp_path / "refs", 2, 2)
    with pytest.raises(ValueError, match=r"model\.type=tiny takes one input image per condition") as info:
        Trainer(_data_run(tmp_path, refs, "logging.run_name=refs"), log=lambda _m: None)
    assert "data.multi_input=skip" in str(info.value)
    skip = Trainer(_data_run(tmp_path, refs, "logging.run_name=skip", "data.multi_input=skip"), log=lambda _m: None)
    try:
        assert len(skip.source.dataset) == 2 and skip.run().steps_done == 1
    finally:
        skip.close()


def test_the_references_of_a_batch_reach_the_model_for_training_and_evaluation():
    import numpy as np
    import torch

    from fastgrpo.models.tiny_editor import build_tiny_editor
    from fastgrpo.train.conditions import ConditionItem, RankBatch, encode_batch
    from fastgrpo.train.evaluate import edit_conditions

    model = build_tiny_editor(weights=None)
    image = np.zeros((16, 16, 3), np.uint8)
    items = [ConditionItem("a", image, "make it red"), ConditionItem("b", image, "make it red", references=(image,))]
    ids = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"1 of 2 conditions also have reference images"):
        encode_batch(model, RankBatch(items, ids, ids, 2))
    with pytest.raises(ValueError, match=r"1 of 2 conditions also have reference images"):
        next(edit_conditions(model, [items], eval_steps=2, batch_size=2, seed=0))
    single = torch.tensor([0, 0])
    assert encode_batch(model, RankBatch(items[:1], single, single, 1)).batch_size == 2
