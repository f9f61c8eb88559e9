"""The CLIP reward with tiny random open_clip models built in code and loaded through the real loading paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastgrpo.rewards import ClipReward, ClipRewardConfig, EditCaptions, RewardBatch
from fastgrpo.rewards.clip_loading import resolve_cached_tag

open_clip = pytest.importorskip("open_clip")

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return CLIP(TINY["embed_dim"], CLIPVisionCfg(**TINY["vision_cfg"]), CLIPTextCfg(**TINY["text_cfg"]))


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    """An architecture file (with its own normalisation) and a checkpoint of a random tiny CLIP."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    model = tiny_model()
    arch = folder / "tiny.json"
    arch.write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {"mean": MEAN, "std": STD}}))
    weights = folder / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return arch, weights, model


@pytest.fixture(scope="module")
def reward(tiny_files) -> ClipReward:
    arch, weights, _ = tiny_files
    return ClipReward(ClipRewardConfig(model=str(arch), pretrained=str(weights), device="cpu"))


def images(count: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def manual_image_embedding(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    pixels = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return F.normalize(model.encode_image(pixels).float(), dim=-1)[0]


def manual_text_embedding(model: torch.nn.Module, text: str) -> torch.Tensor:
    with torch.no_grad():
        tokens = open_clip.SimpleTokenizer(context_length=16)([text])
        return F.normalize(model.encode_text(tokens).float(), dim=-1)[0]


def test_checkpoint_file_path_gives_the_features_of_the_saved_model(reward, tiny_files) -> None:
    _, _, model = tiny_files
    source, edited = images(2)
    result = reward.evaluate(RewardBatch.build([source], [edited], ["make the sky red"]))
    image = manual_image_embedding(model, edited)
    expected_text = float(image @ manual_text_embedding(model, "make the sky red"))
    expected_keep = float(image @ manual_image_embedding(model, source))
    assert result.details["text"].tolist() == pytest.approx([expected_text], abs=1e-5)
    assert result.details["keep"].tolist() == pytest.approx([expected_keep], abs=1e-5)
    assert math.isnan(result.details["direction"][0])  # no captions: no directional term
    cfg = reward.config
    assert result.score.tolist() == pytest.approx([cfg.text_weight * expected_text + cfg.keep_weight * expected_keep])
    assert result.score.dtype == torch.float32 and reward.score_range == (-2.0, 2.0)


def test_output_caption_replaces_the_instruction_and_direction_needs_both(reward, tiny_files) -> None:
    _, _, model = tiny_files
    source, edited = images(2, seed=1)
    captions = [EditCaptions(source="a grey sky", edited="a red sky"), ("", "a red sky")]
    batch = RewardBatch.build([source, source], [edited, edited], ["make the sky red"] * 2, captions=captions)
    result = reward.evaluate(batch)
    out, inp = manual_text_embedding(model, "a red sky"), manual_text_embedding(model, "a grey sky")
    image, src = manual_image_embedding(model, edited), manual_image_embedding(model, source)
    assert result.details["text"].tolist() == pytest.approx([float(image @ out)] * 2, abs=1e-5)
    direction = float(F.cosine_similarity(image - src, out - inp, dim=0))
    assert result.details["direction"][0] == pytest.approx(direction, abs=1e-5)
    assert math.isnan(result.details["direction"][1])  # only an output caption
    cfg = reward.config
    assert result.score[0] - result.score[1] == pytest.approx(cfg.direction_weight * direction, abs=1e-5)


def test_unchanged_edit_keeps_everything_and_has_no_direction(reward) -> None:
    (source,) = images(1, seed=2)
    batch = RewardBatch.build([source], [source.copy()], ["x"], captions=[("a cat", "a dog")])
    result = reward.evaluate(batch)
    assert result.details["keep"].tolist() == pytest.approx([1.0], abs=1e-5)
    assert result.details["direction"].tolist() == pytest.approx([0.0], abs=1e-5)


@pytest.mark.parametrize("size", [32, 48, 20], ids=["native", "downscaled", "upscaled"])
def test_keep_term_ignores_the_masked_region_exactly(reward, size) -> None:
    rng = np.random.default_rng(3)
    (source,) = images(1, size=size, seed=3)
    mask = np.zeros((size, size), dtype=bool)
    mask[size // 4 : size // 2, size // 3 : 2 * size // 3] = True
    inside = source.copy()
    inside[mask] = rng.integers(0, 256, (int(mask.sum()), 3))
    outside = source.copy()
    outside[~mask] = rng.integers(0, 256, (int((~mask).sum()), 3))
    result = reward.evaluate(RewardBatch.build([source, source], [inside, outside], ["x", "x"], masks=[mask, mask]))
    assert result.details["keep"][0] == pytest.approx(1.0, abs=1e-5)  # any change inside the mask is free
    assert result.details["keep"][1] < 0.999  # a change outside is not


def test_masks_may_be_missing_per_sample_and_tensor_batches_work(reward) -> None:
    source = torch.rand(3, 3, 32, 32)
    edited = source.clone()
    edited[:, :, :8, :8] = torch.rand(3, 3, 8, 8)
    masks = [torch.zeros(32, 32, dtype=torch.bool), None, np.ones((32, 32))]
    masks[0][:8, :8] = True
    result = reward.evaluate(RewardBatch.build(source, edited, ["x"] * 3, masks=masks))
    keep = result.details["keep"]
    assert keep[0] == pytest.approx(1.0, abs=1e-5) and keep[1] < 0.999999 and keep[2] == pytest.approx(1.0, abs=1e-5)


def test_non_finite_pixels_give_nan_for_that_sample_only(reward) -> None:
    source, edited = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    edited[1, 0, 5, 5] = math.inf
    result = reward.evaluate(RewardBatch.build(source, edited, ["a", "b", "c"]))
    alone = reward.evaluate(RewardBatch.build(source[[0, 2]], edited[[0, 2]], ["a", "c"]))
    assert math.isnan(result.score[1]) and "non-finite" in result.failures[1]
    assert all(math.isnan(v[1]) for v in result.details.values())
    assert result.score[[0, 2]].tolist() == pytest.approx(alone.score.tolist(), abs=1e-5)


def test_pil_and_mixed_sizes_and_chunking_agree(tiny_files) -> None:
    arch, weights, _ = tiny_files
    sources, edited = images(5, size=40, seed=4), images(5, size=24, seed=5)
    base = {"model": str(arch), "pretrained": str(weights), "device": "cpu"}
    whole = ClipReward(ClipRewardConfig(**base)).evaluate(RewardBatch.build(sources, edited, list("abcde"))).score
    chunked = ClipReward(ClipRewardConfig(**base, batch_size=2))
    pil = [Image.fromarray(e) for e in edited]
    result = chunked.evaluate(RewardBatch.build(sources, pil, list("abcde")))
    assert result.score.tolist() == pytest.approx(whole.tolist(), abs=1e-5)


def test_reduced_precision_tracks_float32(tiny_files) -> None:
    arch, weights, _ = tiny_files
    sources, edited = images(4, seed=6), images(4, seed=7)
    fp32 = ClipReward({"model": str(arch), "pretrained": str(weights), "device": "cpu", "precision": "fp32"})
    bf16 = ClipReward({"model": str(arch), "pretrained": str(weights), "device": "cpu", "precision": "bf16"})
    assert bf16.model.visual.conv1.weight.dtype == torch.bfloat16
    batch = RewardBatch.build(sources, edited, ["a"] * 4)
    low, full = bf16.evaluate(batch).score, fp32.evaluate(batch).score
    assert low.dtype == torch.float32 and torch.allclose(low, full, atol=5e-2)


def test_a_group_shares_its_source_encodes(reward, monkeypatch) -> None:
    rows: list[int] = []
    real = reward.model.encode_image
    monkeypatch.setattr(reward.model, "encode_image", lambda x, **k: rows.append(x.shape[0]) or real(x, **k))
    (source,) = images(1, seed=8)
    edited = images(4, seed=9)
    reward.evaluate(RewardBatch.build([source] * 4, edited, ["x"] * 4))
    assert sum(rows) == 4 + 1  # edits, then the one source
    rows.clear()
    mask = np.zeros((32, 32), dtype=bool)
    mask[:8] = True
    reward.evaluate(RewardBatch.build([source] * 4, edited, ["x"] * 4, masks=[mask] * 4))
    assert sum(rows) == 4 + 4 + 1  # edits, masked edits, the one masked source


def test_local_dir_and_from_model(tmp_path, tiny_files) -> None:
    from safetensors.torch import save_file

    _, _, model = tiny_files
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    sources, edited = images(2, seed=10), images(2, seed=11)
    batch = RewardBatch.build(sources, edited, ["a", "b"])
    from_dir = ClipReward({"model": f"local-dir:{folder}", "device": "cpu"}).evaluate(batch).score
    in_memory = ClipReward.from_model(tiny_model(), open_clip.SimpleTokenizer(context_length=16), image_size=32)
    assert from_dir.tolist() == pytest.approx(in_memory.evaluate(batch).score.tolist(), abs=1e-5)


def test_loading_errors_name_the_file_and_the_fix(tmp_path, tiny_files) -> None:
    arch, weights, _ = tiny_files
    other = tmp_path / "other.pt"
    bigger = dict(TINY, embed_dim=24)
    from open_clip.model import CLIP

    torch.save(CLIP(**bigger).state_dict(), other)
    with pytest.raises(ValueError, match="does not fit"):
        ClipReward({"model": str(arch), "pretrained": str(other), "device": "cpu"})
    with pytest.raises(ValueError, match="does not exist"):
        ClipReward({"model": str(arch), "pretrained": str(tmp_path / "missing.pt"), "device": "cpu"})
    with pytest.raises(ValueError, match="set pretrained to its weights file"):
        ClipReward({"model": str(arch), "device": "cpu"})
    with pytest.raises(ValueError, match="a random CLIP is no reward"):
        ClipReward({"model": "ViT-B-32", "device": "cpu"})
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        ClipReward({"model": "ViT-Q-99", "pretrained": str(weights)})
    with pytest.raises(ValueError, match=r"needs open_clip_config\.json"):
        ClipReward({"model": f"local-dir:{tmp_path}"})
    with pytest.raises(ValueError, match="unknown keys"):
        ClipReward({"model": str(arch), "pretrianed": str(weights)})


def test_pretrained_tags_come_from_the_cache_only(tmp_path) -> None:
    with pytest.raises(ValueError, match="not in the local cache"):
        resolve_cached_tag("ViT-B-32", "openai", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="tags:"):
        resolve_cached_tag("ViT-B-32", "no-such-tag", cache_dir=str(tmp_path))
    # The Hugging Face hub cache layout open_clip downloads into.
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    found = resolve_cached_tag("ViT-B-32", "openai", cache_dir=str(tmp_path))
    assert found == snapshot / "open_clip_pytorch_model.bin"
