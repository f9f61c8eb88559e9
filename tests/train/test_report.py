"""The base-vs-trained report on the tiny editor: its figures against the evaluation, the base variant against a
model without LoRA, the PNG/JSON/Markdown outputs, ``fastgrpo compare`` and its errors."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fastgrpo.rewards.registry import build_reward
from fastgrpo.train.cli import main
from fastgrpo.train.conditions import build_condition_source, reward_batch
from fastgrpo.train.config import load_config
from fastgrpo.train.evaluate import edit_conditions, evaluate_conditions
from fastgrpo.train.model_setup import build_model
from fastgrpo.train.parallel.distributed import DistContext
from fastgrpo.train.report import (
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    compare_variants,
    mean_se,
    paired_difference,
    render_report_png,
    report_grid_size,
    write_report,
)

SMALL = ["sampler.eval_steps=3", "data.held_out=5", "sampler.prompts_per_step=2", "sampler.group_size=2"]
STEPS, BATCH, SEED, ROWS = 3, 4, 0, 3  # batch 4 of 5 conditions: two batches, the second partial
GOLD = ["eval.rewards={components: {rules: {type: rules, weight: 1.0}}}", "rewards.components.rules.weight=0.5"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny editor with a LoRA moved off zero (saved to a directory), its held-out conditions and reward."""
    cfg = load_config(None, SMALL)
    model = build_model(cfg, torch.device("cpu"))
    model.add_lora(4, 4.0)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    lora_dir = tmp_path_factory.mktemp("lora") / "run" / "lora"
    model.save_lora(lora_dir)
    groups = build_condition_source(cfg.data, cfg.runtime.seed, 1).held_out()
    reward = build_reward(cfg.rewards.to_reward_mapping())
    yield cfg, model, groups, reward, lora_dir
    reward.close()


@pytest.fixture(scope="module")
def comparison(setup):
    _, model, groups, reward, _ = setup
    variants = [("base", model.reference, "base model"), ("lora", contextlib.nullcontext, "the noisy LoRA")]
    return compare_variants(model, groups, {"train": reward}, variants, eval_steps=STEPS, batch_size=BATCH,
                            seed=SEED, rows=ROWS)  # fmt: skip


def test_statistics_leave_out_nan_and_pair_the_conditions():
    both = mean_se([1.0, 3.0, math.nan])
    assert (both.mean, both.n) == (2.0, 2) and both.se == pytest.approx(1.0 / math.sqrt(2))
    lone = paired_difference([1.0, math.nan, 3.0], [0.0, 1.0, math.nan])
    assert (lone.mean, lone.n) == (1.0, 1) and math.isnan(lone.se)
    d = paired_difference([1.0, 2.0, 4.0], [0.5, 1.0, 1.0])  # differences 0.5, 1, 3
    assert d.mean == pytest.approx(1.5) and d.se == pytest.approx(np.std([0.5, 1.0, 3.0]) / math.sqrt(3))
    with pytest.raises(ValueError, match="same conditions"):
        paired_difference([1.0], [1.0, 2.0])


def test_report_figures_equal_the_evaluation_of_each_variant(setup, comparison, tmp_path):
    _, model, groups, reward, _ = setup
    paths = write_report(comparison, tmp_path)
    assert set(paths) == {"png", "json", "md"}
    report = json.loads((tmp_path / REPORT_JSON).read_text())
    assert report["conditions"] == 5 and report["eval_steps"] == STEPS and report["seed"] == SEED
    assert [v["label"] for v in report["variants"]] == ["base", "lora"]
    assert report["variants"][1]["weights"] == "the noisy LoRA"
    assert report["rewards"]["train"][0] == "total" and "rules" in report["rewards"]["train"]
    kwargs = {"eval_steps": STEPS, "batch_size": 2, "seed": SEED}  # another batch size: the same noise per condition
    with model.reference():
        base = evaluate_conditions(model, groups, reward, **kwargs)
    trained = evaluate_conditions(model, groups, reward, **kwargs)
    stats, diff = report["stats"], report["differences"]["lora"]["train"]
    for label, expected in (("base", base), ("lora", trained)):
        assert stats[label]["train"]["total"]["mean"] == pytest.approx(expected["eval_reward_mean"], abs=1e-6)
        assert stats[label]["train"]["total"]["se"] == pytest.approx(expected["eval_reward_se"], abs=1e-6)
        assert stats[label]["train"]["rules"]["mean"] == pytest.approx(expected["eval/rules"], abs=1e-6)
        assert stats[label]["train"]["total"]["n"] == 5
    assert trained["eval_reward_mean"] != pytest.approx(base["eval_reward_mean"], abs=1e-4)  # the LoRA does edit
    assert diff["total"]["n"] == 5
    assert diff["total"]["mean"] == pytest.approx(trained["eval_reward_mean"] - base["eval_reward_mean"], abs=1e-6)
    assert math.isfinite(diff["total"]["se"]) and diff["total"]["se"] > 0
    per = report["per_condition"]["scores"]
    expected_se = np.std(np.subtract(per["lora"]["train"]["total"], per["base"]["train"]["total"])) / math.sqrt(5)
    assert diff["total"]["se"] == pytest.approx(expected_se, rel=1e-9)
    assert report["shown"] == [item.id for item in groups[0][:ROWS]]
    md = (tmp_path / REPORT_MD).read_text()
    assert "| component | base | lora | lora − base |" in md
    total = stats["base"]["train"]["total"]
    assert f"| **total** | {total['mean']:.4f} ± {total['se']:.4f} |" in md
    assert f"{diff['total']['mean']:+.4f} ± {diff['total']['se']:.4f}" in md


def test_base_variant_is_the_model_without_lora(setup, comparison):
    cfg, _, groups, reward, _ = setup
    fresh = build_model(cfg, torch.device("cpu"))  # never had an adapter
    totals = np.full(5, np.nan)
    for indices, items, edited in edit_conditions(fresh, groups, eval_steps=STEPS, batch_size=5, seed=SEED):
        totals[indices] = reward.evaluate(reward_batch(items, edited)).total().numpy()
    np.testing.assert_allclose(comparison.scores["base"]["train"]["total"], totals, rtol=0, atol=1e-6)
    assert not np.allclose(comparison.scores["lora"]["train"]["total"], totals, atol=1e-4)
    for shown in comparison.shown:  # the edits kept for the PNG are those of their variant
        assert set(shown.edits) == {"base", "lora"} and shown.edits["base"].dtype == np.uint8
        assert not np.array_equal(shown.edits["base"], shown.edits["lora"])


def test_swapping_the_variants_flips_the_difference(setup, comparison):
    _, model, groups, reward, _ = setup
    variants = [("lora", contextlib.nullcontext), ("base", model.reference)]
    swapped = compare_variants(model, groups, {"train": reward}, variants, eval_steps=STEPS, batch_size=BATCH,
                               seed=SEED, rows=0)  # fmt: skip
    forward = comparison.differences()["lora"]["train"]
    back = swapped.differences()["base"]["train"]
    for name in comparison.names["train"]:
        assert back[name].mean == pytest.approx(-forward[name].mean, abs=1e-9)
        assert back[name].se == pytest.approx(forward[name].se, abs=1e-9)
    assert swapped.shown == []
    assert "png" not in write_report(swapped, setup[4].parent / "swapped")


def test_png_has_one_row_per_condition_and_one_column_per_variant(comparison, tmp_path):
    tile = 64
    write_report(comparison, tmp_path, tile=tile)
    with Image.open(tmp_path / REPORT_PNG) as image:
        image.load()
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == report_grid_size(comparison, tile=tile)

    def size(rows, variants):
        return report_grid_size(dataclasses.replace(comparison, shown=comparison.shown[:rows],
                                                    variants=comparison.variants[:variants]), tile=tile)  # fmt: skip

    (w1, h1), (w2, h2), (w3, h3) = size(1, 2), size(2, 2), size(3, 2)
    assert w1 == w2 == w3 and h3 - h2 == h2 - h1 > tile  # each condition adds one row of a tile and its caption
    (v1, _), (v2, _) = size(1, 1), size(1, 2)
    assert w2 - v2 == 0 and v2 - v1 > tile and 3 * tile < w1 < 4 * tile  # source + 2 variants
    png = Image.open(io.BytesIO(render_report_png(comparison, tile=tile)))
    assert png.size == (w3, h3)


def test_several_ranks_and_bad_variants_are_refused(setup):
    _, model, groups, reward, _ = setup
    kwargs = {"eval_steps": STEPS, "batch_size": BATCH, "seed": SEED}
    with pytest.raises(ValueError, match="one process"):
        compare_variants(model, groups, {"train": reward}, [("base", model.reference)], dist=DistContext(rank=0,
                         world_size=2), **kwargs)  # fmt: skip
    with pytest.raises(ValueError, match="unique"):
        compare_variants(model, groups, {"train": reward}, [("a", model.reference), ("a", model.reference)], **kwargs)
    with pytest.raises(ValueError, match="no conditions"):
        compare_variants(model, [], {"train": reward}, [("base", model.reference)], **kwargs)


def test_compare_command_writes_the_report_with_the_gold_reward(setup, comparison, tmp_path, capsys):
    _, _, _, _, lora_dir = setup
    out = tmp_path / "out"
    args = ["compare", "--lora", str(lora_dir), "--out", str(out), "--limit", "4", "--rows", "2", *SMALL, *GOLD]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "## train reward" in printed and "## gold reward" in printed and str(out / REPORT_PNG) in printed
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["conditions"] == 4 and list(report["rewards"]) == ["train", "gold"]
    label = report["variants"][1]["label"]
    assert label == "run/lora" and str(lora_dir) in report["variants"][1]["weights"]
    scores = report["per_condition"]["scores"]
    for variant in ("base", label):  # the gold reward weighs the rule reward 1.0, the training reward 0.5
        np.testing.assert_allclose(scores[variant]["gold"]["total"], np.multiply(scores[variant]["train"]["total"], 2),
                                   atol=1e-6)  # fmt: skip
    # the same first 4 conditions from the same noise as the library's comparison (whose reward weighs 1.0)
    for variant, library in (("base", "base"), (label, "lora")):
        np.testing.assert_allclose(scores[variant]["gold"]["total"], comparison.scores[library]["train"]["total"][:4],
                                   atol=1e-6)  # fmt: skip
    assert len(report["shown"]) == 2
    with Image.open(out / REPORT_PNG) as image:
        assert image.size[0] > 3 * 192 and 2 * 192 < image.size[1] < 3 * 192 * 2  # two rows of three tiles
    assert "| **total** |" in (out / REPORT_MD).read_text()


def test_compare_command_errors_name_the_fix(setup, tmp_path, capsys):
    _, _, _, _, lora_dir = setup
    missing = tmp_path / "no-such-lora"
    assert main(["compare", "--lora", str(missing), *SMALL]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such directory" in err and len(err.strip().splitlines()) == 1
    assert main(["compare", "--lora", str(lora_dir), *SMALL, "data.held_out=0", "logging.eval_every=0"]) == 2
    assert "nothing to compare" in capsys.readouterr().err
    # a LoRA of another model: its targets match no layer of the tiny editor
    from safetensors.torch import save_file

    other = tmp_path / "other"
    other.mkdir()
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 2, "transformer.lora_alpha": 2,
                                                 "transformer.target_modules": ["mlp.fc9"]})}  # fmt: skip
    save_file({"transformer.blocks.0.mlp.fc9.lora_A.weight": torch.zeros(2, 4)}, str(other /
              "pytorch_lora_weights.safetensors"), metadata=meta)  # fmt: skip
    assert main(["compare", "--lora", str(other), "--out", str(tmp_path / "x"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "does not fit" in err
    assert not (tmp_path / "x").exists()
    # LoRAs of two shapes cannot share the one adapter: refused before the model is built
    assert main(["compare", "--lora", str(lora_dir), "--lora", str(other), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "rank 4" in err and "rank 2" in err and "once per shape" in err
