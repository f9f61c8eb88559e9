"""The metrics processor: the row of an iteration from its parts, FLOPs counted once per resolution, rows only
from rank 0."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fastgrpo.core.advantages import group_advantages
from fastgrpo.core.sde import StepSpec
from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.kernels import noise_state
from fastgrpo.models import tiny_editor
from fastgrpo.models.base import images_to_tensor
from fastgrpo.train.metrics import processor as processor_module
from fastgrpo.train.metrics.processor import MetricsProcessor
from fastgrpo.train.parallel.distributed import DistContext
from fastgrpo.train.rollout import RolloutPlan, rollout


class ListSink:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.closed = 0

    def log(self, row) -> None:
        self.rows.append(dict(row))

    def close(self) -> None:
        self.closed += 1


@pytest.fixture(scope="module")
def problem():
    model = tiny_editor.build_tiny_editor()
    params = model.add_lora(rank=2, alpha=2)
    samples = [SyntheticEditTask(seed=3).sample(i) for i in range(2)]
    cond = model.encode(images_to_tensor([s.source for s in samples]), [s.instruction for s in samples])
    cond = cond.repeat_interleave(2)
    plan = RolloutPlan.build(model.schedule(3, 32, 32), StepSpec(0.7, 0.9), (0, 2))
    noise = model.initial_noise(4, 32, 32, generator=torch.Generator().manual_seed(0))
    ro = rollout(model, cond, plan, noise, noise_state=noise_state(1), group_ids=torch.tensor([0, 0, 1, 1]))
    ro = replace(ro, rewards=torch.tensor([0.2, 0.4, float("nan"), 0.8]), trained=(1,))
    return model, params, cond, ro, group_advantages(ro.rewards, ro.group_ids, 2)


def make(model, params, sinks, **kw):
    def clear():
        for p in params:
            p.grad = None

    return MetricsProcessor(model, DistContext(), sinks, rollout_steps=3, inner_epochs=2, reference_pass=True,
                            clear_grads=clear, **kw)  # fmt: skip


def test_the_row_holds_rewards_statistics_throughput_and_flops(problem, monkeypatch):
    model, params, cond, ro, adv = problem
    counted = []
    real = processor_module.count_flops
    monkeypatch.setattr(processor_module, "count_flops", lambda fn: counted.append(1) or real(fn))
    metrics = make(model, params, [])
    kw = {"cond": cond, "rollout": ro, "advantages": adv, "failed": 1, "components": {"reward/rules": 0.5},
          "update": {"loss": 0.25}, "skipped_updates": 2, "phases": {"rollout": 0.5}, "seconds": 2.0}  # fmt: skip
    row = metrics.iteration_row(6, **kw)
    assert row["step"] == 7 and row["reward_failed"] == 1 and row["skipped_updates"] == 2
    finite = torch.tensor([0.2, 0.4, 0.8])
    assert row["reward_mean"] == pytest.approx(float(finite.mean()))
    assert row["reward_std"] == pytest.approx(float(finite.std(unbiased=False)))
    assert row["constant_groups"] == 1  # the second group has one finite reward
    assert row["reward/rules"] == 0.5 and row["loss"] == 0.25 and row["time/rollout"] == 0.5
    assert row["time/step"] == 2.0 and row["images_per_s"] == 2.0
    assert row["mfu"] is None and row["peak_mem_gib"] is None  # on the CPU
    fwd, train = metrics.flops(cond, ro)
    assert 0 < fwd < train
    # per sample: 3 rollout forwards + 1 trained step x 2 epochs (forward + backward, and a reference forward)
    assert row["tflops_per_s"] * 1e12 * 2.0 == pytest.approx((3 * fwd + 2 * train + 2 * fwd) * 4)
    metrics.iteration_row(7, **kw)
    assert len(counted) == 2  # forward and forward + backward, once for this resolution
    assert all(p.grad is None for p in params), "the FLOP count's backward left gradients behind"


def test_rows_go_to_every_sink_on_rank_0_only(problem):
    model, params, *_ = problem
    sinks = [ListSink(), ListSink()]
    make(model, params, sinks).log({"step": 0, "eval_reward_mean": 0.5})
    assert [s.rows for s in sinks] == [[{"step": 0, "eval_reward_mean": 0.5}]] * 2
    other = MetricsProcessor(model, DistContext(rank=1, world_size=2), sinks, rollout_steps=3, inner_epochs=1,
                             reference_pass=False, clear_grads=lambda: None)  # fmt: skip
    other.log({"step": 1})
    assert all(len(s.rows) == 1 for s in sinks)
    other.close()
    assert all(s.closed == 1 for s in sinks)
