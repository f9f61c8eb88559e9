"""The policy component: the optimiser step, skipped non-finite updates, the EMA, the files it writes, and its
state_dict round trip."""

from __future__ import annotations

import math

import pytest
import torch

from fastgrpo.kernels import GRPOStats
from fastgrpo.models import tiny_editor
from fastgrpo.models.lora import read_lora
from fastgrpo.train.config.sections import OptimConfig
from fastgrpo.train.errors import TrainingError
from fastgrpo.train.parallel.distributed import DistContext
from fastgrpo.train.policy import Policy


def make_policy(rank: int = 4, **optim) -> Policy:
    model = tiny_editor.build_tiny_editor()
    torch.manual_seed(0)
    params = model.add_lora(rank=rank, alpha=rank)
    return Policy(model, params, OptimConfig(**optim), DistContext(), log=lambda _m: None)


def fake_backward(policy: Policy, scale: float = 1.0) -> GRPOStats:
    """Gradients on every LoRA weight and the statistics an update would return."""
    for i, p in enumerate(policy.params):
        p.grad = torch.full_like(p, scale * (i + 1) * 1e-3)
    return GRPOStats(torch.arange(len(GRPOStats.NAMES), dtype=torch.float32))


def weights(policy: Policy) -> list[torch.Tensor]:
    return [p.detach().clone() for p in policy.params]


def test_a_finite_update_steps_adamw_and_reports_once():
    policy = make_policy(lr=1e-2, grad_clip=1e9)
    before = weights(policy)
    out = policy.step(fake_backward(policy), iteration=1)
    assert list(out) == [*GRPOStats.NAMES, "grad_norm"]
    assert out["loss"] == 0.0 and out["ratio_max"] == len(GRPOStats.NAMES) - 1
    expected_norm = math.sqrt(sum(float(p.grad.square().sum()) for p in policy.params))
    assert out["grad_norm"] == pytest.approx(expected_norm, rel=1e-5)
    assert all(not torch.equal(a, p) for a, p in zip(before, policy.params, strict=True))
    assert policy.nonfinite_in_row == policy.skipped_total == 0


def test_non_finite_updates_are_skipped_counted_and_stop_the_run_at_the_limit():
    policy = make_policy(nonfinite_limit=2)
    before = weights(policy)
    policy.step(fake_backward(policy, scale=math.nan), iteration=3)
    assert all(torch.equal(a, p) for a, p in zip(before, policy.params, strict=True))
    assert all(p.grad is None for p in policy.params)  # the poisoned gradient is dropped
    assert (policy.nonfinite_in_row, policy.skipped_total) == (1, 1)
    policy.step(fake_backward(policy), iteration=4)  # a finite one resets the streak, not the total
    assert (policy.nonfinite_in_row, policy.skipped_total) == (0, 1)
    policy.step(fake_backward(policy, scale=math.inf), iteration=5)
    with pytest.raises(TrainingError, match=r"2 updates in a row .* iteration 6\); .*Lower optim.lr"):
        policy.step(fake_backward(policy, scale=math.nan), iteration=6)


def test_the_ema_follows_the_weights_and_stands_in_for_them_only_inside_ema_weights():
    policy = make_policy(lr=1e-2, ema_decay=0.5)
    start = weights(policy)
    policy.step(fake_backward(policy), iteration=1)
    live = weights(policy)
    for e, a, b in zip(policy.ema, start, live, strict=True):
        torch.testing.assert_close(e, 0.5 * a + 0.5 * b)
    with policy.ema_weights():
        assert all(torch.equal(p, e) for p, e in zip(policy.params, policy.ema, strict=True))
    assert all(torch.equal(p, v) for p, v in zip(policy.params, live, strict=True))


def test_the_written_lora_is_the_ema(tmp_path):
    policy = make_policy(lr=1e-2, ema_decay=0.5)
    policy.step(fake_backward(policy), iteration=1)
    policy.lora_writer()(tmp_path / "lora")
    written, config = read_lora(tmp_path / "lora")
    names = list(policy.model.lora_state_dict())
    assert sorted(written) == sorted(names) and config["r"] == 4
    assert all(torch.equal(written[n], e) for n, e in zip(names, policy.ema, strict=True))
    assert any(not torch.equal(written[n], p) for n, p in zip(names, policy.params, strict=True))


def test_state_dict_round_trip_restores_everything_and_refuses_another_adapter():
    policy = make_policy(lr=1e-2, ema_decay=0.9, warmup_steps=3)
    policy.step(fake_backward(policy), iteration=1)
    policy.step(fake_backward(policy, scale=math.nan), iteration=2)
    state = policy.state_dict()
    fresh = make_policy(lr=1e-2, ema_decay=0.9, warmup_steps=3)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(policy.params, fresh.params, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(policy.ema, fresh.ema, strict=True))
    a, b = policy.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    assert fresh.lr == policy.lr and (fresh.nonfinite_in_row, fresh.skipped_total) == (1, 1)
    # the same next step on both (within the last bits: CPU kernels round the vectorised body and the tail of a
    # tensor differently, and the restored moments lie at other addresses)
    policy.step(fake_backward(policy), iteration=3)
    fresh.step(fake_backward(fresh), iteration=3)
    for a, b in zip(policy.params, fresh.params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="does not fit"):
        make_policy(rank=2).load_state_dict(state)


def test_an_empty_parameter_list_is_refused():
    model = tiny_editor.build_tiny_editor()
    with pytest.raises(ValueError, match="params is empty"):
        Policy(model, [], OptimConfig(), DistContext())
