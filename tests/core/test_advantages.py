"""Group-relative advantages against a plain per-group Python loop, plus NaN, constant-group and error cases."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgrpo.core.advantages import (
    AdvantageResult,
    GroupKey,
    dense_group_ids,
    gather_rewards,
    group_advantages,
    rank_slice,
)

NAN = float("nan")


def reference(
    rewards: list[float],
    ids: list[int],
    num_groups: int,
    std_mode: str = "group",
    clip: float | None = 5.0,
    eps: float = 1e-4,
) -> tuple[list[float], list[bool]]:
    """Straightforward loop: population std over finite rewards; constant/small groups and failures get 0."""
    finite = [math.isfinite(r) for r in rewards]
    all_finite = [r for r, ok in zip(rewards, finite, strict=True) if ok]
    global_std = statistics.pstdev(all_finite) if all_finite else 0.0
    advantages, live = [], []
    for r, g, ok in zip(rewards, ids, finite, strict=True):
        members = [x for x, h, f in zip(rewards, ids, finite, strict=True) if h == g and f]
        constant = len(members) < 2 or max(members) == min(members)
        if not ok or constant:
            advantages.append(0.0)
            live.append(False)
            continue
        std = statistics.pstdev(members) if std_mode == "group" else global_std
        a = (r - statistics.fmean(members)) / (std + eps)
        advantages.append(a if clip is None else max(-clip, min(clip, a)))
        live.append(True)
    return advantages, live


def run(rewards: list[float], ids: list[int], num_groups: int | None = None, **kwargs) -> AdvantageResult:
    num_groups = max(ids) + 1 if num_groups is None else num_groups
    return group_advantages(torch.tensor(rewards), torch.tensor(ids, dtype=torch.int64), num_groups, **kwargs)


def test_worked_example() -> None:
    out = run([1.0, 0.0, NAN, 2.0, 2.0, 3.0], [0, 0, 0, 1, 1, 2])
    assert out.advantages.tolist() == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001, 0, 0, 0, 0], abs=1e-6)
    torch.testing.assert_close(out.rewards, torch.tensor([1.0, 0.0, NAN, 2.0, 2.0, 3.0]), equal_nan=True)
    assert out.group_mean.tolist() == [0.5, 2.0, 3.0]
    assert out.group_std.tolist() == [0.5, 0.0, 0.0]
    assert out.group_count.tolist() == [2, 2, 1]
    assert out.constant_groups.tolist() == [False, True, True]
    assert out.num_constant_groups.dtype == torch.int64 and int(out.num_constant_groups) == 2
    assert out.advantages.dtype == torch.float32


rewards_strategy = st.one_of(
    st.sampled_from([0.0, 0.25, 1.0, NAN]),  # ties and failures are common in real rewards
    st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=32),
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    data=st.lists(st.tuples(rewards_strategy, st.integers(0, 5)), min_size=1, max_size=40),
    std_mode=st.sampled_from(["group", "global"]),
    clip=st.sampled_from([None, 5.0, 0.5]),
    eps=st.sampled_from([1e-4, 0.0, 0.1]),
)
def test_matches_loop_reference(data: list[tuple[float, int]], std_mode: str, clip: float | None, eps: float) -> None:
    rewards = [r for r, _ in data]
    ids = [g for _, g in data]
    num_groups = max(ids) + 2  # one group without members
    expected, live = reference(rewards, ids, num_groups, std_mode, clip, eps)
    out = run(rewards, ids, num_groups, std_mode=std_mode, clip=clip, eps=eps)
    # float32 output; with eps = 0 tiny nonzero spreads give large ratios, hence the relative part
    torch.testing.assert_close(out.advantages, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert all(a == 0 for a, signal in zip(out.advantages.tolist(), live, strict=True) if not signal)
    assert bool(torch.isfinite(out.advantages).all())


def test_nan_rewards_are_left_out_of_the_statistics() -> None:
    out = run([1.0, NAN, 3.0, NAN], [0, 0, 0, 0])
    assert out.group_mean.tolist() == [2.0]
    assert out.group_count.tolist() == [2]
    assert out.advantages[1] == 0 and out.advantages[3] == 0 and out.advantages[0] < 0 < out.advantages[2]


def test_infinite_rewards_count_as_failures() -> None:
    out = run([1.0, float("inf"), 3.0, -float("inf")], [0, 0, 0, 0])
    assert out.group_mean.tolist() == [2.0]
    assert out.advantages[1] == 0 and out.advantages[3] == 0
    assert bool(torch.isfinite(out.advantages).all())


def test_poisoned_inputs_leak_no_nan() -> None:
    rewards = [NAN, NAN, float("inf"), 1e30, -1e30, 5.0, 5.0, NAN]
    out = run(rewards, [0, 0, 1, 1, 1, 2, 2, 3], eps=0.0)
    for tensor in (out.advantages, out.group_mean, out.group_std):
        assert bool(torch.isfinite(tensor).all()), tensor
    assert out.constant_groups.tolist() == [True, False, True, True]
    assert out.advantages[3] == pytest.approx(1.0) and out.advantages[4] == pytest.approx(-1.0)


def test_constant_and_small_groups_give_zero() -> None:
    out = run([0.7, 0.7, 0.7, 0.2, NAN, NAN], [0, 0, 0, 1, 2, 2])
    assert out.advantages.tolist() == [0.0] * 6
    assert out.constant_groups.tolist() == [True, True, True]
    assert int(out.num_constant_groups) == 3


def test_global_std_divides_by_the_batch_std() -> None:
    rewards = [0.0, 1.0, 10.0, 30.0, 4.0, 4.0]
    out = run(rewards, [0, 0, 1, 1, 2, 2], std_mode="global", clip=None)
    std = statistics.pstdev(rewards)
    assert out.group_std.tolist() == pytest.approx([std] * 3)
    expected = [-0.5 / std, 0.5 / std, -10 / std, 10 / std, 0.0, 0.0]
    assert out.advantages.tolist() == pytest.approx(expected, rel=1e-4)


def test_clipping() -> None:
    rewards = [0.0] * 99 + [1.0]  # the outlier's advantage is sqrt(99) ≈ 9.9
    clipped = run(rewards, [0] * 100)
    assert float(clipped.advantages.max()) == 5.0
    free = run(rewards, [0] * 100, clip=None)
    std = statistics.pstdev(rewards)
    assert float(free.advantages.max()) == pytest.approx(0.99 / (std + 1e-4), rel=1e-6)
    tight = run(rewards, [0] * 100, clip=0.05)
    assert float(tight.advantages.abs().max()) == pytest.approx(0.05)


def test_deterministic_and_order_invariant() -> None:
    generator = torch.Generator().manual_seed(0)
    rewards = torch.rand(256, generator=generator)
    ids = torch.randint(0, 32, (256,), generator=generator)
    first = group_advantages(rewards, ids, 32).advantages
    assert torch.equal(first, group_advantages(rewards, ids, 32).advantages)
    perm = torch.randperm(256, generator=generator)
    permuted = group_advantages(rewards[perm], ids[perm], 32).advantages
    torch.testing.assert_close(permuted, first[perm])


def test_runs_without_reading_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Meta tensors have no data: any .item()/.tolist()/branch on a value would raise, so this proves the
    function is free of host syncs (it may run inside a CUDA graph)."""
    monkeypatch.delenv("FASTGRPO_CHECK_VALUES", raising=False)  # the opt-in value check does read
    rewards = torch.empty(12, device="meta")
    ids = torch.empty(12, dtype=torch.int64, device="meta")
    for mode in ("group", "global"):
        out = group_advantages(rewards, ids, 4, std_mode=mode)
        assert out.advantages.shape == (12,) and out.group_std.shape == (4,)
        assert out.num_constant_groups.shape == ()


def _ids(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


@pytest.mark.parametrize(
    ("rewards", "ids", "num_groups", "kwargs", "match"),
    [
        (torch.zeros(2, 2), _ids(0, 0), 1, {}, "rewards"),
        (torch.zeros(2, dtype=torch.int64), _ids(0, 0), 1, {}, "rewards"),
        (torch.zeros(0), _ids(), 1, {}, "rewards is empty"),
        (torch.zeros(2), torch.zeros(2, dtype=torch.int32), 1, {}, "group_ids"),
        (torch.zeros(2), _ids(0, 0, 0), 1, {}, "group_ids"),
        (torch.zeros(2), _ids(0, 2), 2, {}, "group_ids"),
        (torch.zeros(2), _ids(-1, 0), 2, {}, "group_ids"),
        (torch.zeros(2), _ids(0, 0), 0, {}, "num_groups"),
        (torch.zeros(2), _ids(0, 0), True, {}, "num_groups"),
        (torch.zeros(2), _ids(0, 0), 1, {"std_mode": "batch"}, "std_mode"),
        (torch.zeros(2), _ids(0, 0), 1, {"clip": 0.0}, "clip"),
        (torch.zeros(2), _ids(0, 0), 1, {"clip": float("inf")}, "clip"),
        (torch.zeros(2), _ids(0, 0), 1, {"eps": -1.0}, "eps"),
        (torch.zeros(2), _ids(0, 0), 1, {"eps": NAN}, "eps"),
    ],
)
def test_bad_input_raises_naming_the_argument(
    rewards: torch.Tensor, ids: torch.Tensor, num_groups: int, kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, ids, num_groups, **kwargs)


def test_group_key_hash_is_stable_and_unambiguous() -> None:
    key = GroupKey("magicbrush/00017", "make the sky purple")
    assert key.stable_hash == GroupKey("magicbrush/00017", "make the sky purple").stable_hash
    assert key.stable_hash == 9038964323056785405  # pinned: must not change between releases
    assert GroupKey("ab", "c").stable_hash != GroupKey("a", "bc").stable_hash
    assert -(2**63) <= key.stable_hash < 2**63
    torch.tensor([key.stable_hash], dtype=torch.int64)  # fits an int64 tensor


def test_dense_group_ids_in_order_of_first_appearance() -> None:
    a, b, c = GroupKey("x", "1"), GroupKey("y", "1"), GroupKey("x", "2")
    ids, unique = dense_group_ids([b, a, b, c, a])
    assert ids.dtype == torch.int64 and ids.tolist() == [0, 1, 0, 2, 1]
    assert unique == [b, a, c]
    with pytest.raises(ValueError, match="keys is empty"):
        dense_group_ids([])
    with pytest.raises(ValueError, match=r"keys\[1\]"):
        dense_group_ids([a, ("x", "1")])  # type: ignore[list-item]


def test_gather_without_distributed_returns_inputs() -> None:
    rewards, ids = torch.tensor([1.0, NAN]), _ids(0, 0)
    out_rewards, out_ids = gather_rewards(rewards, ids)
    assert out_rewards is rewards and out_ids is ids
    assert rank_slice(2) == slice(0, 2)
    with pytest.raises(ValueError, match="same length"):
        gather_rewards(rewards, _ids(0))


def _gather_worker(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rewards = torch.tensor([float(rank), NAN, 10.0 + rank])
        ids = _ids(0, 1, 2)
        all_rewards, all_ids = gather_rewards(rewards, ids)
        out = group_advantages(all_rewards, all_ids, 3)
        local = out.advantages[rank_slice(3)]
        torch.save({"rewards": all_rewards, "ids": all_ids, "local": local}, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def test_gather_across_two_ranks(tmp_path: Path) -> None:
    results = str(tmp_path / "out")
    mp.spawn(_gather_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    for rank in (0, 1):
        got = torch.load(f"{results}.{rank}")
        torch.testing.assert_close(got["rewards"], torch.tensor([0.0, NAN, 10.0, 1.0, NAN, 11.0]), equal_nan=True)
        assert got["ids"].tolist() == [0, 1, 2, 0, 1, 2]
        sign = -1.0 if rank == 0 else 1.0
        torch.testing.assert_close(got["local"], torch.tensor([sign, 0.0, sign]) / 1.0002, rtol=1e-5, atol=0)


def test_decoupled_advantages_weigh_every_component_by_its_own_spread() -> None:
    from fastgrpo.core.advantages import decoupled_advantages

    ids = torch.tensor([0, 0, 0, 0])
    small = torch.tensor([0.0, 0.1, 0.0, 0.1])  # a reward with a tenth...
    big = torch.tensor([0.0, 0.0, 10.0, 10.0])  # ... of the other's spread (x100 here)
    weights = {"small": 1.0, "big": 1.0}
    out = decoupled_advantages({"small": small, "big": big}, weights, ids, 1, clip=None)
    summed = group_advantages(small + big, ids, 1, clip=None).advantages
    # decoupled: the small component moves the advantage as much as the big one; summed: it barely counts
    assert float(out[1] - out[0]) == pytest.approx(float(out[2] - out[0]), rel=5e-3)  # eps of each group std
    assert float(summed[1] - summed[0]) < 0.02 * float(summed[2] - summed[0])
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-6) and float(out.std(unbiased=False)) == pytest.approx(
        1.0, rel=1e-3
    )


def test_decoupled_advantages_mask_each_component_on_its_own() -> None:
    from fastgrpo.core.advantages import decoupled_advantages

    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    a = torch.tensor([1.0, 0.0, NAN, 1.0, 0.0, 0.5])
    b = torch.tensor([NAN, NAN, NAN, 0.2, 0.2, 0.2])  # failed in group 0 (a's sample 2 as well), constant in 1
    out = decoupled_advantages({"a": a, "b": b}, {"a": 1.0, "b": 0.5}, ids, 2)
    assert out[2] == 0.0  # no finite component at all
    assert bool(torch.isfinite(out).all()) and float(out[0]) > 0 > float(out[1])
    single = decoupled_advantages({"a": a}, {"a": 1.0}, ids, 2)
    torch.testing.assert_close(out, single)  # a constant or failed component adds nothing
    with pytest.raises(ValueError, match="no weight"):
        decoupled_advantages({"a": a}, {}, ids, 2)
