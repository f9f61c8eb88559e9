"""Rollout and RewardBreakdown: shape/dtype validation, moves, selection and the weighted reward total."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fastgrpo.core.containers import RewardBreakdown, Rollout

NAN = float("nan")
B, T, LATENT = 4, 3, (2, 5)


def make_rollout(batch: int = B, device: str = "cpu", seed: int = 0) -> Rollout:
    generator = torch.Generator().manual_seed(seed)
    rollout = Rollout(
        latents=torch.randn(batch, T + 1, *LATENT, generator=generator).to(torch.bfloat16),
        log_probs=torch.randn(batch, T, generator=generator),
        times=torch.tensor([1.0, 0.6, 0.3, 0.0]),
        group_ids=torch.arange(batch, dtype=torch.int64) // 2,
        rewards=torch.rand(batch, generator=generator),
        sde_steps=(0, 1),
    )
    return rollout.to(device)


def test_valid_rollout_and_accessors() -> None:
    rollout = make_rollout().validate()
    assert (rollout.batch_size, rollout.num_steps, rollout.latent_shape) == (B, T, torch.Size(LATENT))
    assert rollout.device == torch.device("cpu")
    x_t, x_next = rollout.step(1)
    assert torch.equal(x_t, rollout.latents[:, 1]) and torch.equal(x_next, rollout.latents[:, 2])
    assert x_t.data_ptr() == rollout.latents[:, 1].data_ptr()  # a view, no copy
    assert rollout.trained == rollout.sde_steps == (0, 1)  # every SDE step is trained by default
    assert replace(rollout, trained=[1]).validate().trained == (1,)
    for k in (-1, T):
        with pytest.raises(ValueError, match="step index"):
            rollout.step(k)


BAD_FIELDS = [
    ("latents", torch.zeros(B, T + 1)),  # no latent dims
    ("latents", torch.zeros(B, T + 1, 2, dtype=torch.int64)),
    ("latents", torch.zeros(B, 1, 2)),  # T = 0
    ("log_probs", torch.zeros(B, T + 1)),
    ("log_probs", torch.zeros(B, T, dtype=torch.bfloat16)),
    ("times", torch.zeros(T)),
    ("times", torch.zeros(T + 1, dtype=torch.float64)),
    ("sde_steps", (0, T)),  # outside the rollout
    ("sde_steps", (1, 0)),  # not ascending
    ("trained", (2,)),  # an ODE step: no log-probability to train on
    ("trained", (0, 0)),
    ("group_ids", torch.zeros(B, dtype=torch.int32)),
    ("rewards", torch.zeros(B + 1)),
    ("advantages", torch.zeros(B, 1)),
    ("advantages", [0.0] * B),
    ("rewards", torch.zeros(B, device="meta")),  # another device
]


@pytest.mark.parametrize(("name", "value"), BAD_FIELDS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_FIELDS)])
def test_validate_names_the_bad_field(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"Rollout.{name}"):
        replace(make_rollout(), **{name: value}).validate()


def test_validate_reads_no_values() -> None:
    """On meta tensors (no data) validation still works: it only looks at shapes, dtypes and devices."""
    rollout = make_rollout(device="meta")
    rollout.advantages = torch.empty(B, device="meta")
    assert rollout.validate().device.type == "meta"


def test_to_select_and_cat() -> None:
    rollout = make_rollout()
    rollout.advantages = torch.linspace(-1, 1, B)
    moved = rollout.to("cpu")
    assert moved is not rollout and moved.latents.dtype == torch.bfloat16
    assert torch.equal(moved.advantages, rollout.advantages)

    head = rollout.select(slice(0, 2)).validate()
    assert head.batch_size == 2 and torch.equal(head.times, rollout.times)
    picked = rollout.select(torch.tensor([3, 0])).validate()
    assert torch.equal(picked.rewards, rollout.rewards[[3, 0]])
    assert torch.equal(picked.latents, rollout.latents[[3, 0]])

    both = Rollout.cat([head, rollout.select(slice(2, None))]).validate()
    for name in ("latents", "log_probs", "group_ids", "rewards", "advantages"):
        assert torch.equal(getattr(both, name), getattr(rollout, name)), name
    without = Rollout.cat([make_rollout(seed=1), head])
    assert without.advantages is None and without.batch_size == B + 2


def test_cat_refuses_other_schedules() -> None:
    other = replace(make_rollout(), times=torch.tensor([1.0, 0.5, 0.2, 0.0]))
    with pytest.raises(ValueError, match="schedule"):
        Rollout.cat([make_rollout(), other])
    with pytest.raises(ValueError, match="schedule"):
        Rollout.cat([make_rollout(), replace(make_rollout(), trained=(1, 0))])
    with pytest.raises(ValueError, match="incompatible"):
        Rollout.cat([make_rollout(), replace(make_rollout(), latents=make_rollout().latents.float())])
    with pytest.raises(ValueError, match="empty"):
        Rollout.cat([])


def breakdown(**weights: float) -> RewardBreakdown:
    components = {
        "judge": torch.tensor([0.8, NAN, 0.5, 0.1]),
        "clip": torch.tensor([0.3, 0.2, NAN, 0.4], dtype=torch.float64),
        "fidelity": torch.tensor([1.0, 0.0, 0.5, 0.25]),
    }
    return RewardBreakdown(components, weights or {"judge": 0.7, "clip": 0.3, "fidelity": 0.0})


def test_total_is_weighted_sum_propagating_nan() -> None:
    total = breakdown().total()
    assert total.dtype == torch.float32 and total.shape == (4,)
    expected = [0.7 * 0.8 + 0.3 * 0.3, NAN, NAN, 0.7 * 0.1 + 0.3 * 0.4]
    torch.testing.assert_close(total, torch.tensor(expected), equal_nan=True)


def test_zero_weight_component_is_logged_but_not_summed() -> None:
    parts = breakdown(judge=0.0, clip=0.0, fidelity=2.0)
    parts.components["judge"] = torch.full((4,), NAN)
    assert parts.total().tolist() == [2.0, 0.0, 1.0, 0.5]


def test_reward_breakdown_to_and_from_mapping() -> None:
    built = RewardBreakdown.from_mapping(breakdown().components, {"judge": 1, "clip": 0.5, "fidelity": 0})
    moved = built.to("cpu")
    assert moved.weights == built.weights and moved.batch_size == 4
    torch.testing.assert_close(moved.total(), built.total(), equal_nan=True)


@pytest.mark.parametrize(
    ("components", "weights", "match"),
    [
        ({}, {}, "components is empty"),
        ({"a": torch.zeros(2)}, {}, r"lacks a weight for components \['a'\]"),
        ({"a": torch.zeros(2)}, {"a": 1.0, "b": 1.0}, r"unknown components \['b'\]"),
        ({"a": torch.zeros(2)}, {"a": NAN}, r"weights\['a'\]"),
        ({"a": torch.zeros(2)}, {"a": True}, r"weights\['a'\]"),
        ({"a": torch.zeros(2)}, {"a": 0.0}, "all zero"),
        ({"a": torch.zeros(2, 1)}, {"a": 1.0}, r"components\['a'\]"),
        ({"a": torch.zeros(2, dtype=torch.int64)}, {"a": 1.0}, r"components\['a'\]"),
        ({"a": torch.zeros(2), "b": torch.zeros(3)}, {"a": 1.0, "b": 1.0}, r"components\['b'\]"),
        ({"total": torch.zeros(2)}, {"total": 1.0}, "'total'"),
    ],
)
def test_reward_breakdown_validation(components: dict, weights: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RewardBreakdown(components, weights).validate()
