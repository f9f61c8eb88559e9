"""The learning benchmark: reward gained per minute and per rollout, each recipe against Flow-GRPO's recipe.

The full run is a command (it takes ``recipes x seeds x minutes`` of training plus evaluations, about 50 minutes
for three recipes at the defaults on 2 CPU cores)::

    fastgrpo bench-learning --recipes flow_grpo,cps,flow_grpo_fast --seeds 0,1,2 --held-out-sets 0,1 \
        --minutes 5 --eval-every 100 --out benchmarks/results/learning

It writes ``learning.json`` (every evaluation of every run, gains per seed and held-out set, gains per minute,
gains at the same rollout count, ratios to ``flow_grpo``) and ``learning.png`` (held-out reward against minutes and
against rollouts, one line per recipe, seed bands), and prints the table of the README's "Recipes".

Here it runs at a smoke size (two recipes, one seed, two held-out sets of 4 conditions, 3 iterations each) so that
``make test`` keeps it from rotting; nothing about speed or gain is asserted, only that it measures what it says.
"""

from __future__ import annotations

import json

from fastgrpo.train.learning import run_learning_benchmark

SMOKE = ["data.held_out=4", "sampler.prompts_per_step=2", "sampler.group_size=4", "sampler.train_steps=4",
         "sampler.eval_steps=4"]  # fmt: skip


def test_learning_benchmark_smoke(benchmark, tmp_path):
    def run():
        return run_learning_benchmark(["flow_grpo", "flow_grpo_fast"], [0], minutes=10.0, held_out_sets=(0, 1),
                                      eval_every=2, out=tmp_path, overrides=SMOKE, max_iterations=3,
                                      log=lambda _line: None)  # fmt: skip

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    written = json.loads((tmp_path / "learning.json").read_text())
    assert written["summary"] == json.loads(json.dumps(result["summary"]))
    assert (tmp_path / "learning.png").stat().st_size > 0
    runs = written["runs"]
    assert [r["recipe"] for r in runs] == ["flow_grpo", "flow_grpo_fast"]
    for run in runs:
        assert [p["iteration"] for p in run["points"]] == [0, 2, 3]  # every eval_every and the end
        assert all(len(p["reward"]) == 2 for p in run["points"])  # both held-out sets
        assert [p["rollouts"] for p in run["points"]] == [0, 16, 24]
    base = written["summary"]["recipes"]["flow_grpo"]["sets"]["0"]
    benchmark.extra_info.update({"flow_grpo_gain_set0": base["mean_gain_at_budget"]})
