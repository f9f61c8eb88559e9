"""The GRPO update on the tiny editor with LoRA: exact accumulation, LoRA-only gradients, reference policy."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fastgrpo.core import GRPOConfig, StepSpec
from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.kernels import noise_state
from fastgrpo.models import tiny_editor
from fastgrpo.models.base import images_to_tensor
from fastgrpo.train.rollout import RolloutPlan, rollout
from fastgrpo.train.update import grpo_backward

NOISE = 0.7


def _setup(seed=0):
    model = tiny_editor.build_tiny_editor()
    torch.manual_seed(seed)
    params = model.add_lora(rank=4, alpha=4)
    samples = [SyntheticEditTask(seed=3).sample(i) for i in range(2)]
    cond = model.encode(images_to_tensor([s.source for s in samples]), [s.instruction for s in samples])
    cond = cond.repeat_interleave(3)
    schedule = model.schedule(4, 32, 32)
    noise = model.initial_noise(6, 32, 32, generator=torch.Generator().manual_seed(0))
    plan = RolloutPlan.build(schedule, StepSpec(NOISE, schedule.t_cap), (0, 3))
    out = rollout(model, cond, plan, noise, noise_state=noise_state(1))
    return model, params, cond, plan.spec, out


def with_adv(rollout, adv, steps):
    return replace(rollout, advantages=adv, trained=steps)


def _grads(params):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_micro_batching_gives_the_same_gradient(beta):
    model, params, cond, spec, out = _setup()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    grpo = GRPOConfig(clip_low=0.2, clip_high=0.2, beta=beta)
    kw = {"grpo": grpo, "spec": spec}
    out = with_adv(out, adv, (0, 2))
    with torch.no_grad():  # move off the LoRA zero init so that every factor has a gradient
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    whole = grpo_backward(model, out, cond, **kw)
    g_whole = _grads(params)
    for p in params:
        p.grad = None
    parts = grpo_backward(model, out, cond, micro_batch=4, **kw)
    g_parts = _grads(params)
    for a, b in zip(g_whole, g_parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(whole.values, parts.values, rtol=1e-5, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in g_whole)
    assert (whole.kl.item() > 0) == (beta > 0)


def test_only_lora_parameters_get_gradients_and_two_steps_move_all_of_them():
    model, params, cond, spec, out = _setup()
    frozen = [p for n, p in model.transformer.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad for p in frozen) and all(p.requires_grad for p in params)
    before = [p.detach().clone() for p in params]
    optimiser = torch.optim.AdamW(params, lr=1e-3)
    out = with_adv(out, torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0]), (1,))
    for _ in range(2):  # LoRA B starts at zero: A only receives gradient from the second step on
        optimiser.zero_grad()
        grpo_backward(model, out, cond, grpo=GRPOConfig(clip_low=0.2, clip_high=0.2, beta=0.0), spec=spec)
        optimiser.step()
    assert all(p.grad is None for p in frozen)
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_on_policy_first_update_has_unit_ratios():
    model, _, cond, spec, out = _setup()
    out = with_adv(out, torch.ones(6), (0, 1, 2))
    stats = grpo_backward(model, out, cond, grpo=GRPOConfig(beta=0.0), spec=spec).to_dict()
    assert stats["ratio_min"] == stats["ratio_max"] == 1.0 and stats["clip_frac"] == 0.0
    assert stats["policy_loss"] == pytest.approx(-1.0)


def test_bad_steps_are_refused():
    model, _, cond, spec, out = _setup()
    kw = {"grpo": GRPOConfig(), "spec": spec}
    with pytest.raises(ValueError, match="must be distinct SDE steps"):
        grpo_backward(model, with_adv(out, torch.ones(6), (3,)), cond, **kw)
    with pytest.raises(ValueError, match="trains no step"):
        grpo_backward(model, with_adv(out, torch.ones(6), ()), cond, **kw)
    with pytest.raises(ValueError, match="no advantages"):
        grpo_backward(model, out, cond, **kw)
    with pytest.raises(ValueError, match="cond has 2 rows"):
        grpo_backward(model, with_adv(out, torch.ones(6), (0,)), cond.index_select(torch.arange(2)), **kw)
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        grpo_backward(model, with_adv(out, torch.ones(6), (0,)), cond, micro_batch=0, **kw)


@pytest.mark.parametrize(
    ("beta", "ratio_norm", "micro"), [(0.0, False, None), (0.05, False, 4), (0.05, True, None), (0.0, True, 3)]
)
def test_batching_the_trained_steps_gives_the_same_gradient(beta, ratio_norm, micro):
    """optim.step_batching: every trained step of a micro-batch in one forward of steps x samples rows is the same
    objective as one step at a time (per-step centring of ratio_norm included)."""
    model, params, cond, spec, out = _setup()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    kw = {"grpo": GRPOConfig(clip_low=0.2, clip_high=0.2, beta=beta, ratio_norm=ratio_norm), "spec": spec,
          "micro_batch": micro}  # fmt: skip
    out = with_adv(out, adv, (2, 0, 1))
    with torch.no_grad():
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    calls = []

    def counting(model_, batch, *args):
        from fastgrpo.train.update import micro_step

        calls.append((batch.x.shape[0], batch.blocks))
        return micro_step(model_, batch, *args)

    one = grpo_backward(model, out, cond, **kw)
    g_one = _grads(params)
    for p in params:
        p.grad = None
    stacked = grpo_backward(model, out, cond, batch_steps=True, step_fn=counting, **kw)
    g_stacked = _grads(params)
    size = micro or 6
    assert calls == [(3 * min(size, 6 - start), 3) for start in range(0, 6, size)]  # one forward per micro-batch
    for a, b in zip(g_one, g_stacked, strict=True):  # float32 sums in another order: tolerance of the scale
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
    torch.testing.assert_close(one.values, stacked.values, rtol=1e-4, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in g_one)
