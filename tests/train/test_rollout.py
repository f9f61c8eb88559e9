"""Rollouts with the tiny editor: ODE outside the window, exact on-policy log-probs, fresh reproducible noise."""

from __future__ import annotations

import pytest
import torch

from fastgrpo.core.sde import StepSpec
from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.kernels import noise_state, step_logprob
from fastgrpo.models import tiny_editor
from fastgrpo.models.base import images_to_tensor
from fastgrpo.train.rollout import RolloutPlan, rollout, sde_steps

NOISE = 0.7


def plan(schedule, window=None) -> RolloutPlan:
    return RolloutPlan.build(schedule, StepSpec(NOISE, schedule.t_cap), window)


@pytest.fixture(scope="module")
def setup():
    model = tiny_editor.build_tiny_editor()
    samples = [SyntheticEditTask(seed=3).sample(i) for i in range(2)]
    cond = model.encode(images_to_tensor([s.source for s in samples]), [s.instruction for s in samples])
    cond = cond.repeat_interleave(2)  # groups of G = 2
    schedule = model.schedule(tiny_editor.TRAIN_STEPS, 32, 32, interval_steps=tiny_editor.EVAL_STEPS)
    noise = model.initial_noise(4, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, cond, schedule, noise


def test_an_empty_window_is_the_euler_ode(setup):
    model, cond, schedule, noise = setup
    ode = rollout(model, cond, plan(schedule, (0, 0)), noise, noise_state=noise_state(1))
    assert ode.sde_steps == ode.trained == () and torch.equal(ode.log_probs, torch.zeros_like(ode.log_probs))
    x = noise.float()
    times = schedule.to("cpu")
    for k in range(schedule.num_steps):
        v = model.velocity(x, times.t[k].expand(4), cond)
        x = x + (times.t_next[k] - times.t[k]) * v.float()
    torch.testing.assert_close(ode.latents[:, -1], x, rtol=0, atol=1e-6)


def test_trained_steps_reproduce_their_log_probs_exactly(setup):
    model, cond, schedule, noise = setup
    out = rollout(model, cond, plan(schedule, (1, 4)), noise, noise_state=noise_state(2))
    assert out.sde_steps == out.trained == (1, 2, 3)
    times = schedule.to("cpu")
    for k in range(schedule.num_steps):
        x, x_next = out.step(k)
        v = model.velocity(x, times.t[k].expand(4), cond)
        if k in out.sde_steps:
            lp = step_logprob(x_next, x, v, times.t[k], times.t_next[k], noise_level=NOISE, t_cap=schedule.t_cap)
            assert torch.equal(lp, out.log_probs[:, k])
        else:
            assert torch.equal(x_next, x + (times.t_next[k] - times.t[k]) * v.float())
    assert torch.isnan(out.rewards).all() and out.group_ids.tolist() == [0, 1, 2, 3]


def test_noise_is_fresh_per_rollout_and_reproducible_from_the_seed(setup):
    model, cond, schedule, noise = setup
    state = noise_state(7)
    a = rollout(model, cond, plan(schedule), noise, noise_state=state)
    assert state.tolist() == [7, schedule.num_steps]  # one offset per SDE step
    b = rollout(model, cond, plan(schedule), noise, noise_state=state)
    again = rollout(model, cond, plan(schedule), noise, noise_state=noise_state(7))
    assert not torch.equal(a.latents, b.latents)
    assert torch.equal(a.latents, again.latents) and torch.equal(a.log_probs, again.log_probs)
    # samples of one group start from different noise rows here; with equal starting noise they still differ
    same = noise[:1].expand(4, -1, -1).contiguous()
    c = rollout(model, cond.index_select(torch.tensor([0, 0, 0, 0])), plan(schedule), same, noise_state=noise_state(8))
    assert not torch.equal(c.latents[0, -1], c.latents[1, -1])


def test_bad_window_and_batch_are_refused(setup):
    model, cond, schedule, noise = setup
    with pytest.raises(ValueError, match="SDE window"):
        sde_steps(8, (3, 9))
    with pytest.raises(ValueError, match="one per sample"):
        rollout(model, cond, plan(schedule), noise[:3], noise_state=noise_state(0))
    with pytest.raises(ValueError, match="noise_state must be an int64 tensor"):
        rollout(model, cond, plan(schedule), noise, noise_state=torch.zeros(2))
