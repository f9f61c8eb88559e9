"""The learning benchmark (``fastgrpo bench-learning``): reward gained per minute and per rollout, recipe against
recipe, on the built-in task.

Each named recipe (:mod:`fastgrpo.train.recipes`) trains the tiny editor from the packaged weights once per
rollout seed (``sampler.seed``) for the same budget of training time (evaluation excluded); every
``eval_every`` iterations and at the end the LoRA is evaluated by ODE on every held-out set (set ``j``: the
synthetic held-out conditions and evaluation noise of ``runtime.seed=j``; the training conditions are those of
``runtime.seed=0`` throughout, so no held-out set is ever trained on). From the curves it reports, per recipe:

- the gain at the time budget per seed and held-out set, its mean over seeds and the gain per minute;
- the gain at the same number of rollouts (the fewest any run reached), read off the curve by linear
  interpolation;
- both gains' ratio to the baseline recipe's (``flow_grpo``) mean gain on the same held-out set in the same run.

It writes ``learning.json`` (every evaluation of every run, and the summary) and ``learning.png`` (held-out
reward against training minutes and against rollouts, one line per recipe: the mean over seeds, the band from the
lowest to the highest seed).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastgrpo.train.recipes import Recipe, get_recipe

__all__ = ["BASELINE", "LearningRun", "run_learning_benchmark", "summarise_runs"]

#: the recipe every ratio is taken against
BASELINE = "flow_grpo"


@dataclass
class LearningRun:
    """The evaluations of one (recipe, rollout seed) run: ``points`` rows of ``iteration``, ``rollouts``,
    ``train_seconds`` and ``reward`` (a list, one held-out mean per set), ``train_reward`` the per-iteration
    training reward means."""

    recipe: str
    seed: int
    held_out_sets: tuple[int, ...]
    points: list[dict[str, Any]]
    train_reward: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "seed": self.seed, "held_out_sets": list(self.held_out_sets),
                "points": self.points, "train_reward": self.train_reward}  # fmt: skip


def run_recipe(
    recipe: Recipe,
    seed: int,
    *,
    minutes: float,
    held_out_sets: Sequence[int],
    eval_every: int,
    work_dir: Path,
    overrides: Sequence[str] = (),
    max_iterations: int | None = None,
    log: Callable[[str], None] = print,
) -> LearningRun:
    """Train ``recipe`` with rollout seed ``seed`` for ``minutes`` of training time (or ``max_iterations``,
    whichever comes first), evaluating every ``eval_every`` iterations and at the end."""
    from fastgrpo.train.conditions import build_condition_source
    from fastgrpo.train.config import load_config
    from fastgrpo.train.evaluate import HeldOutEvaluation
    from fastgrpo.train.loop import Trainer

    name = f"{recipe.name}-seed{seed}"
    cfg = load_config(None, [
        *recipe.overrides, *overrides, f"sampler.seed={seed}", "runtime.seed=0", f"logging.output_dir={work_dir}",
        f"logging.run_name={name}", "logging.progress=false", "logging.eval_every=0", "logging.save_every=0",
        "eval.report_conditions=0", "runtime.max_steps=1000000",
    ])  # fmt: skip
    trainer = Trainer(cfg, log=lambda _message: None)
    try:
        s = cfg.sampler
        batch = s.rollout_batch or s.prompts_per_step * s.group_size
        evaluations = [
            HeldOutEvaluation(
                trainer.model,
                build_condition_source(cfg.data, j, 1).held_out(),
                trainer.reward,
                eval_steps=s.eval_steps,
                batch_size=batch,
                seed=j,
                dist=trainer.dist,
            )
            for j in held_out_sets
        ]
        rollouts_per_iteration = trainer.plan.local_samples * trainer.dist.world_size
        points: list[dict[str, Any]] = []
        train_reward: list[float] = []

        def evaluate(iteration: int, seconds: float) -> None:
            with trainer.policy.ema_weights():
                rewards = [float(e()["eval_reward_mean"]) for e in evaluations]
            points.append({"iteration": iteration, "rollouts": iteration * rollouts_per_iteration,
                           "train_seconds": round(seconds, 3), "reward": rewards})  # fmt: skip
            log(f"  {name}: iteration {iteration}, {seconds / 60:.2f} min: held-out "
                + ", ".join(f"set {j} {r:.4f}" for j, r in zip(held_out_sets, rewards, strict=True)))  # fmt: skip

        seconds, step = 0.0, 0
        evaluate(0, 0.0)
        trainer.timer.read()
        while seconds < minutes * 60 and (max_iterations is None or step < max_iterations):
            started = time.perf_counter()
            row = trainer.iteration(step)
            seconds += time.perf_counter() - started
            step += 1
            trainer.state.step = step
            train_reward.append(float(row["reward_mean"]))
            if step % eval_every == 0:
                evaluate(step, seconds)
        if points[-1]["iteration"] != step:
            evaluate(step, seconds)
        return LearningRun(recipe.name, seed, tuple(held_out_sets), points, train_reward)
    finally:
        trainer.generator.close()
        trainer.close()


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    return float(np.interp(x, np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)))


def summarise_runs(runs: Sequence[LearningRun], baseline: str = BASELINE) -> dict[str, Any]:
    """Per recipe and held-out set: gains at the time budget (per seed, mean, per minute) and at the common
    rollout count, and their ratios to ``baseline``'s mean gains (None when the baseline was not run or gained
    nothing)."""
    if not runs:
        raise ValueError("no runs to summarise")
    sets = runs[0].held_out_sets
    common_rollouts = min(run.points[-1]["rollouts"] for run in runs)
    recipes: dict[str, Any] = {}
    for run in runs:
        entry = recipes.setdefault(run.recipe, {"seeds": [], "sets": {str(j): {} for j in sets}})
        entry["seeds"].append(run.seed)
        first, last = run.points[0], run.points[-1]
        xs = [p["rollouts"] for p in run.points]
        for i, j in enumerate(sets):
            ys = [p["reward"][i] for p in run.points]
            per = entry["sets"][str(j)]
            per.setdefault("start", first["reward"][i])
            per.setdefault("end", []).append(last["reward"][i])
            per.setdefault("gain_at_budget", []).append(last["reward"][i] - first["reward"][i])
            per.setdefault("minutes", []).append(last["train_seconds"] / 60)
            per.setdefault("gain_at_common_rollouts", []).append(_interp(xs, ys, common_rollouts) - ys[0])
    for entry in recipes.values():
        for per in entry["sets"].values():
            per["mean_gain_at_budget"] = float(np.mean(per["gain_at_budget"]))
            per["sd_gain_at_budget"] = float(np.std(per["gain_at_budget"], ddof=1)) if len(per["end"]) > 1 else None
            rates = [g / m for g, m in zip(per["gain_at_budget"], per["minutes"], strict=True) if m > 0]
            per["gain_per_minute"] = float(np.mean(rates)) if rates else math.nan
            per["mean_gain_at_common_rollouts"] = float(np.mean(per["gain_at_common_rollouts"]))
    base = recipes.get(baseline)
    for entry in recipes.values():
        for key, per in entry["sets"].items():
            for what in ("at_budget", "at_common_rollouts"):
                ref = base["sets"][key][f"mean_gain_{what}"] if base is not None else None
                ok = ref is not None and ref > 0
                per[f"ratio_{what}"] = per[f"mean_gain_{what}"] / ref if ok else None
    return {"baseline": baseline, "common_rollouts": common_rollouts, "held_out_sets": list(sets), "recipes": recipes}


def plot_runs(runs: Sequence[LearningRun], path: Path) -> Path:
    """``learning.png``: held-out reward of held-out set 0 against training minutes (left) and rollouts (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = runs[0].held_out_sets
    fig, axes = plt.subplots(len(sets), 2, figsize=(11, 3.6 * len(sets)), squeeze=False)
    by_recipe: dict[str, list[LearningRun]] = {}
    for run in runs:
        by_recipe.setdefault(run.recipe, []).append(run)
    for row, j in enumerate(sets):
        for col, (axis_key, label, scale) in enumerate((("train_seconds", "training minutes", 60.0),
                                                        ("rollouts", "rollouts", 1.0))):  # fmt: skip
            ax = axes[row][col]
            for name, group in by_recipe.items():
                top = min(run.points[-1][axis_key] for run in group)
                grid = np.linspace(0.0, top, 50)
                curves = np.stack([np.interp(grid, [p[axis_key] for p in run.points],
                                             [p["reward"][row] for p in run.points]) for run in group])  # fmt: skip
                line = ax.plot(grid / scale, curves.mean(0), label=f"{name} ({len(group)} seeds)")[0]
                ax.fill_between(grid / scale, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
            ax.set_xlabel(label)
            ax.set_ylabel(f"held-out reward (set {j})")
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.suptitle("held-out ODE reward; mean over rollout seeds, band = lowest to highest seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_learning_benchmark(
    recipes: Sequence[str],
    seeds: Sequence[int],
    *,
    minutes: float,
    held_out_sets: Sequence[int] = (0, 1),
    eval_every: int = 25,
    out: Path,
    overrides: Sequence[str] = (),
    max_iterations: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every recipe x seed (:func:`run_recipe`), then ``learning.json`` and ``learning.png`` in ``out``; returns
    the JSON's content. ``ValueError`` for an unknown recipe, no seeds or held-out sets, a budget <= 0."""
    chosen = [get_recipe(name) for name in recipes]
    if not chosen or not seeds or not held_out_sets:
        raise ValueError("bench-learning needs at least one recipe, one seed and one held-out set")
    if not minutes > 0 or eval_every < 1:
        raise ValueError(f"--minutes must be > 0 and --eval-every >= 1, got {minutes} and {eval_every}")
    out.mkdir(parents=True, exist_ok=True)
    runs: list[LearningRun] = []
    for recipe in chosen:
        for seed in seeds:
            log(f"{recipe.name}, rollout seed {seed}: {minutes:g} min of training")
            runs.append(run_recipe(recipe, seed, minutes=minutes, held_out_sets=held_out_sets, eval_every=eval_every,
                                   work_dir=out / "runs", overrides=overrides, max_iterations=max_iterations,
                                   log=log))  # fmt: skip
    result = {
        "budget_minutes": minutes,
        "eval_every": eval_every,
        "overrides": list(overrides),
        "recipes": {r.name: {"overrides": list(r.overrides), "summary": r.summary} for r in chosen},
        "summary": summarise_runs(runs),
        "runs": [run.to_dict() for run in runs],
    }
    (out / "learning.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot_runs(runs, out / "learning.png")
    return result


def summary_table(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`run_learning_benchmark`'s summary: recipe, held-out set, gain per seed at the
    budget, mean, ratio to the baseline, gain at the common rollouts and its ratio."""
    summary = result["summary"]
    lines = [
        f"| recipe | held-out set | gain at {result['budget_minutes']:g} min per seed | mean | gain/min | ratio | "
        f"gain at {summary['common_rollouts']} rollouts | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for name, entry in summary["recipes"].items():
        for key, per in entry["sets"].items():
            gains = ", ".join(f"{g:+.4f}" for g in per["gain_at_budget"])
            lines.append(
                f"| {name} | {key} | {gains} | {per['mean_gain_at_budget']:+.4f} | {per['gain_per_minute']:+.4f} | "
                f"{fmt(per['ratio_at_budget'])} | {per['mean_gain_at_common_rollouts']:+.4f} | "
                f"{fmt(per['ratio_at_common_rollouts'])} |"
            )
    return "\n".join(lines)
