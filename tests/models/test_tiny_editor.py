"""The built-in tiny editor: shipped weights, the Kontext code path, its pre-training script, its edits."""

from __future__ import annotations

import pytest
import torch

from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.models import tiny_editor
from fastgrpo.models.flux_kontext import FluxKontextEditModel
from fastgrpo.train.pretrain_tiny import HELD_OUT_SEED_OFFSET, PretrainConfig, evaluate, pretrain


@pytest.fixture(scope="module")
def shipped():
    return tiny_editor.build_tiny_editor()


def test_shipped_weights_are_small_and_load_into_the_kontext_adapter(shipped):
    assert tiny_editor.WEIGHTS.stat().st_size < 8 * 2**20
    assert isinstance(shipped, FluxKontextEditModel) and shipped.model_type == "flux_kontext"
    assert not any(p.requires_grad for p in shipped.transformer.parameters())
    n, c = shipped.latent_shape(tiny_editor.TINY_SIZE, tiny_editor.TINY_SIZE)
    assert (n, c) == (64, 48)


def test_missing_weights_name_the_rebuild_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m fastgrpo\.train\.pretrain_tiny"):
        tiny_editor.build_tiny_editor(tmp_path / "absent.safetensors")


def test_pretraining_script_writes_loadable_weights(tmp_path):
    out = tmp_path / "tiny.safetensors"
    cfg = PretrainConfig(steps=3, batch=4, warmup=1, eval_every=3, eval_samples=2, out=str(out))
    result = pretrain(cfg, log=lambda *_: None)
    assert set(result) == {"region", "shape", "edit", "keep"}
    model = tiny_editor.build_tiny_editor(out)
    random = tiny_editor.build_tiny_editor(None)
    pairs = zip(model.transformer.parameters(), random.transformer.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)


def test_held_out_edits_beat_copying_the_source(shipped):
    # the rule reward gives an unedited copy of the source 0.25 (keep only) and the ground truth 1.0; the shipped
    # weights score 0.66 on these 16 samples (0.66 on 48): competent, with room for RL
    held_out = SyntheticEditTask(size=tiny_editor.TINY_SIZE, seed=HELD_OUT_SEED_OFFSET)
    result = evaluate(shipped, [held_out.sample(i) for i in range(16)], seed=0)
    score = 0.75 * result["edit"] + 0.25 * result["keep"]
    assert result["keep"] > 0.9, result
    assert 0.5 < score < 0.95, result


@pytest.mark.parametrize("size", sorted(tiny_editor.PACKAGED_WEIGHTS))
def test_packaged_weights_of_each_size_edit_competently(size):
    # 32x32 scores 0.66 on 48 held-out samples, 16x16 0.54 (each file's .json): better than copying the source
    # (0.25), far from the ground truth (1.0), so that GRPO has room
    model = tiny_editor.build_tiny_editor(tiny_editor.packaged_weights(size))
    held_out = SyntheticEditTask(size=size, seed=HELD_OUT_SEED_OFFSET)
    result = evaluate(model, [held_out.sample(i) for i in range(16)], seed=0)
    score = 0.75 * result["edit"] + 0.25 * result["keep"]
    assert result["keep"] > 0.85 and 0.4 < score < 0.95, result


def test_unpackaged_size_names_the_sizes_and_the_command():
    with pytest.raises(ValueError, match=r"16x16 and 32x32 images, not 24x24.*pretrain_tiny --size 24"):
        tiny_editor.packaged_weights(24)
    with pytest.raises(ValueError, match="multiple of 16"):
        PretrainConfig(size=24)
