"""The exploration options of the ``sampler`` section: the moving SDE window (``sde_steps``, ``window_schedule``:
Flow-GRPO-Fast branching, MixGRPO's sliding window), shared initial noise per group (DanceGRPO) with its
once-per-group ODE prefix, CPS plans, and a training run that uses them all (on-policy ratios exactly 1)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from fastgrpo.core.sde import StepSpec
from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.kernels import noise_state
from fastgrpo.models import tiny_editor
from fastgrpo.models.base import images_to_tensor
from fastgrpo.train.config import load_config
from fastgrpo.train.config.sections import SamplerConfig
from fastgrpo.train.loop import Trainer
from fastgrpo.train.rollout import RolloutPlan, rollout

SMALL = [
    "sampler.prompts_per_step=2", "sampler.group_size=4", "sampler.train_steps=4", "sampler.eval_steps=4",
    "data.held_out=4", "logging.eval_every=0", "logging.save_every=0", "logging.progress=false",
    "runtime.max_steps=2", "eval.report_conditions=0",
]  # fmt: skip


def trainer_of(tmp_path: Path, *extra: str, name: str = "run") -> Trainer:
    cfg = load_config(None, [*SMALL, f"logging.output_dir={tmp_path}", f"logging.run_name={name}", *extra])
    return Trainer(cfg, log=lambda _m: None)


@contextlib.contextmanager
def built(tmp_path: Path, *extra: str, name: str = "run"):
    trainer = trainer_of(tmp_path, *extra, name=name)
    try:
        yield trainer
    finally:
        trainer.generator.close()
        trainer.close()


def base_plan(trainer: Trainer) -> RolloutPlan:
    return trainer.plans(16, 16)


# --- configuration ---------------------------------------------------------------------------------------------


def test_sampler_options_are_checked():
    assert SamplerConfig(sde_window=(0, 2), sde_steps=3).trained_steps == 2  # at most the window
    with pytest.raises(ValueError, match=r"sampler\.sde_steps must be"):
        SamplerConfig(sde_steps=0)
    with pytest.raises(ValueError, match="window_schedule must be 'random' or 'sliding'"):
        SamplerConfig(window_schedule="cyclic")
    with pytest.raises(ValueError, match="shared_noise must be true or false"):
        SamplerConfig(shared_noise="yes")
    with pytest.raises(ValueError, match="window_stride"):
        SamplerConfig(window_stride=0)
    assert SamplerConfig(sde_steps=2, train_fraction=1.0).trained_steps == 2
    assert SamplerConfig(sde_steps=2, train_fraction=0.5).trained_steps == 1
    assert SamplerConfig(sde_steps=None, train_fraction=0.5).trained_steps == 4  # the whole 8-step window


def test_a_cps_plan_drops_the_noiseless_last_step_and_refuses_a_window_of_only_that():
    model = tiny_editor.build_tiny_editor()
    schedule = model.schedule(4, 16, 16, interval_steps=4)
    cps = StepSpec(0.7, schedule.t_cap, sampler="cps")
    assert RolloutPlan.build(schedule, cps).sde_steps == (0, 1, 2)  # the step to t = 0 draws no noise
    assert RolloutPlan.build(schedule, StepSpec(0.7, schedule.t_cap)).sde_steps == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="holds no step that draws noise"):
        RolloutPlan.build(schedule, cps, (3, 4))


# --- the moving window -----------------------------------------------------------------------------------------


def test_a_sliding_window_moves_one_step_per_stride_and_wraps(tmp_path):
    extra = ("sde.sampler=sde", "sampler.sde_steps=2", "sampler.window_schedule=sliding", "sampler.window_stride=3")
    with built(tmp_path, *extra) as t:
        plan = base_plan(t)
        starts = [t.generator.iteration_plan(s, plan).sde_steps for s in range(0, 12, 3)]
    assert starts == [(0, 1), (1, 2), (2, 3), (0, 1)]


def test_a_random_window_is_consecutive_inside_the_window_and_reproducible(tmp_path):
    extra = ("sde.sampler=sde", "sampler.sde_steps=2", "sampler.sde_window=[1,4]", "sampler.train_fraction=1.0")
    with built(tmp_path, *extra) as t:
        plan = base_plan(t)
        windows = [t.generator.iteration_plan(s, plan).sde_steps for s in range(40)]
        again = [t.generator.iteration_plan(s, plan).sde_steps for s in range(40)]
        trained = [set(t.generator.trained_steps(s, t.generator.iteration_plan(s, plan))) for s in range(40)]
    assert windows == again
    assert set(windows) == {(1, 2), (2, 3)}  # both placements occur, none outside [1, 4)
    assert all(set(w) == tr for w, tr in zip(windows, trained, strict=True))  # train_fraction 1: both trained


def test_without_sde_steps_the_plan_is_the_whole_window(tmp_path):
    with built(tmp_path, "sampler.sde_window=[1,3]") as t:
        plan = base_plan(t)
        assert t.generator.iteration_plan(5, plan) is plan and plan.sde_steps == (1, 2)


# --- shared noise ----------------------------------------------------------------------------------------------


def first_latents(trainer: Trainer, step: int = 0) -> torch.Tensor:
    batch = trainer.source.rank_batch(step, trainer.plan)
    from fastgrpo.train.conditions import encode_batch

    cond = encode_batch(trainer.model, batch)
    return trainer.generator.generate(step, batch, cond).rollout.latents


@pytest.mark.parametrize("chunk", ["null", "4"])
def test_shared_noise_starts_a_group_from_one_draw_whatever_the_chunking(tmp_path, chunk):
    with built(tmp_path, "sampler.shared_noise=true", f"sampler.rollout_batch={chunk}", name=f"c{chunk}") as t:
        latents = first_latents(t)
    start = latents[:, 0]
    groups = start.reshape(2, 4, *start.shape[1:])
    assert torch.equal(groups, groups[:, :1].expand_as(groups))  # one draw per group
    assert not torch.equal(groups[0, 0], groups[1, 0])  # another per group
    assert not torch.equal(latents[0, -1], latents[1, -1])  # the SDE steps still tell the edits apart
    reference = tmp_path / "ref"
    with built(reference, "sampler.shared_noise=true", "sampler.rollout_batch=null", name="ref") as t:
        torch.testing.assert_close(first_latents(t)[:, 0], start, rtol=0, atol=0)


def test_without_shared_noise_every_sample_starts_apart(tmp_path):
    with built(tmp_path, "sampler.shared_noise=false") as t:
        start = first_latents(t)[:, 0]
    assert all(not torch.equal(start[0], start[i]) for i in range(1, 4))


def test_the_shared_ode_prefix_equals_rolling_out_every_row():
    model = tiny_editor.build_tiny_editor()
    samples = [SyntheticEditTask(seed=5).sample(i) for i in range(2)]
    cond = model.encode(images_to_tensor([s.source for s in samples]), [s.instruction for s in samples])
    cond = cond.repeat_interleave(3)  # groups of G = 3
    schedule = model.schedule(6, 32, 32, interval_steps=6)
    plan = RolloutPlan.build(schedule, StepSpec(0.7, schedule.t_cap, sampler="cps"), (3, 5))
    noise = model.initial_noise(2, 32, 32, generator=torch.Generator().manual_seed(1)).repeat_interleave(3, 0)
    calls = []

    def counting(model_, cond_, latents, *args, **kwargs):
        calls.append(latents.shape[0])
        from fastgrpo.train.rollout import rollout_steps

        return rollout_steps(model_, cond_, latents, *args, **kwargs)

    every = rollout(model, cond, plan, noise, noise_state=noise_state(7))
    shared = rollout(model, cond, plan, noise, noise_state=noise_state(7), shared_prefix=3, steps_fn=counting)
    assert calls == [2, 6]  # the prefix on one row per group, then every row
    torch.testing.assert_close(shared.latents, every.latents, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shared.log_probs, every.log_probs, rtol=1e-5, atol=1e-6)
    assert shared.sde_steps == every.sde_steps == (3, 4)
    with pytest.raises(ValueError, match="must divide the batch"):
        rollout(model, cond, plan, noise, noise_state=noise_state(7), shared_prefix=4)


# --- a run with all of them ------------------------------------------------------------------------------------


def test_a_run_with_cps_a_branch_window_shared_noise_and_ratio_norm_trains_on_policy(tmp_path):
    extra = ("sde.sampler=cps", "sampler.sde_steps=2", "sampler.shared_noise=true", "sampler.train_fraction=1.0",
             "grpo.ratio_norm=true", "optim.lr=0.003")  # fmt: skip
    with built(tmp_path, *extra) as t:
        before = {k: v.clone() for k, v in t.model.lora_state_dict().items()}
        rows = [t.iteration(step) for step in range(2)]
        after = t.model.lora_state_dict()
    for row in rows:
        assert row["trained_steps"] == 2
        assert row["ratio_min"] == row["ratio_max"] == 1.0  # on-policy: the log-probs are reproduced exactly
        assert row["grad_norm"] > 0
    assert any(not torch.equal(before[k], after[k]) for k in before)
