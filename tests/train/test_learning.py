"""Named recipes (``--recipe``) and the learning benchmark's arithmetic (gains, interpolation, ratios)."""

from __future__ import annotations

import math

import pytest

from fastgrpo.train.cli import main
from fastgrpo.train.config import load_config
from fastgrpo.train.learning import LearningRun, summarise_runs, summary_table
from fastgrpo.train.recipes import RECIPES, get_recipe


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_a_valid_config(name):
    cfg = load_config(None, list(get_recipe(name).overrides))
    assert cfg.sampler.group_size >= 2


def test_the_flow_grpo_recipe_is_flow_grpos_setting():
    cfg = load_config(None, list(get_recipe("flow_grpo").overrides))
    assert (cfg.sde.sampler, cfg.sde.noise_level, cfg.sampler.sde_window, cfg.sampler.sde_steps) == (
        "sde",
        0.7,
        None,
        None,
    )
    assert (cfg.grpo.beta, cfg.grpo.clip_low, cfg.grpo.clip_high, cfg.grpo.ratio_norm) == (0.004, 1e-4, 1e-4, False)
    assert not cfg.sampler.shared_noise and cfg.sampler.train_fraction == 0.5 and cfg.optim.lr == 3e-4


def test_the_flow_grpo_fast_sde_recipe_is_the_built_in_default():
    assert load_config(None, list(get_recipe("flow_grpo_fast_sde").overrides)) == load_config(None)
    assert load_config(None, list(get_recipe("flow_grpo").overrides)) != load_config(None)


def test_an_unknown_recipe_names_the_recipes(tmp_path, capsys):
    with pytest.raises(ValueError, match="no recipe 'fast'; the recipes are: flow_grpo"):
        get_recipe("fast")
    assert main(["train", "--recipe", "fast", f"logging.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "no recipe 'fast'" in err and "Traceback" not in err


def run(recipe, seed, rewards, seconds, per_iteration=10, every=5):
    points = [{"iteration": i * every, "rollouts": i * every * per_iteration, "train_seconds": s, "reward": list(r)}
              for i, (r, s) in enumerate(zip(rewards, seconds, strict=True))]  # fmt: skip
    return LearningRun(recipe, seed, (0, 1), points, [])


def test_summary_gains_ratios_and_the_common_rollout_count():
    runs = [
        run("flow_grpo", 0, [(0.5, 0.4), (0.52, 0.41), (0.54, 0.42)], [0, 60, 120]),
        run("flow_grpo", 1, [(0.5, 0.4), (0.51, 0.40), (0.52, 0.40)], [0, 60, 120]),
        run("fast", 0, [(0.5, 0.4), (0.60, 0.5)], [0, 120]),  # 5 iterations = 50 rollouts in the same time
    ]
    summary = summarise_runs(runs)
    assert summary["common_rollouts"] == 50
    base, fast = summary["recipes"]["flow_grpo"]["sets"], summary["recipes"]["fast"]["sets"]
    assert base["0"]["gain_at_budget"] == pytest.approx([0.04, 0.02])
    assert base["0"]["mean_gain_at_budget"] == pytest.approx(0.03)
    assert base["0"]["gain_per_minute"] == pytest.approx(0.015)
    assert fast["0"]["ratio_at_budget"] == pytest.approx(0.1 / 0.03)
    # at 50 rollouts the baseline's seeds are at 0.52 and 0.51 (iteration 5): gain 0.015; fast's +0.1
    assert base["0"]["mean_gain_at_common_rollouts"] == pytest.approx(0.015)
    assert fast["0"]["ratio_at_common_rollouts"] == pytest.approx(0.1 / 0.015)
    assert base["1"]["mean_gain_at_budget"] == pytest.approx(0.01)
    assert fast["1"]["ratio_at_budget"] == pytest.approx(10.0)
    table = summary_table({"budget_minutes": 2, "summary": summary})
    assert "| fast | 0 | +0.1000 | +0.1000 |" in table and "3.33" in table


def test_no_ratio_against_a_baseline_that_did_not_gain():
    runs = [run("flow_grpo", 0, [(0.5, 0.4), (0.49, 0.4)], [0, 60]), run("fast", 0, [(0.5, 0.4), (0.6, 0.5)], [0, 60])]
    fast = summarise_runs(runs)["recipes"]["fast"]["sets"]["0"]
    assert fast["ratio_at_budget"] is None and not math.isnan(fast["mean_gain_at_budget"])


def test_bench_learning_refuses_bad_arguments(tmp_path, capsys):
    assert main(["bench-learning", "--recipes", "nope", "--out", str(tmp_path)]) == 2
    assert main(["bench-learning", "--seeds", "a,b", "--out", str(tmp_path)]) == 2
    assert main(["bench-learning", "--minutes", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no recipe 'nope'" in err and "comma-separated integers" in err and "--minutes must be > 0" in err
    assert "Traceback" not in err
