"""The group sampler: G repeats, groups intact, one bucket per batch, identical across ranks, exact resume."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest

from fastgrpo.data.sampler import GroupBatchSampler

BUCKETS = np.array([i % 3 for i in range(61)] + [3] * 5)  # three big buckets and one too small for a batch


def ranks(world_size, **kwargs):
    kwargs = {"group_size": 4, "groups_per_rank": 2, "seed": 7, **kwargs}
    return [GroupBatchSampler(BUCKETS, world_size=world_size, rank=r, **kwargs) for r in range(world_size)]


def groups_of(batch, group_size):
    assert len(batch) % group_size == 0
    return [batch[i : i + group_size] for i in range(0, len(batch), group_size)]


def test_every_batch_is_whole_groups_of_g_copies_from_one_bucket():
    (sampler,) = ranks(1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sum(n // 2 for n in Counter(BUCKETS.tolist()).values())
    for batch in batches:
        assert len(batch) == sampler.batch_size == 8
        for group in groups_of(batch, 4):
            assert len(set(group)) == 1  # G adjacent copies of one condition
        assert len({int(BUCKETS[i]) for i in batch}) == 1  # never two resolutions in a batch


def test_ranks_agree_and_split_each_global_batch_without_loss_or_duplication():
    samplers = ranks(3)
    per_rank = [s.epoch_batches(0) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1
    seen = Counter()
    for step_batches in zip(*per_rank, strict=True):
        conditions = [set(b) for b in step_batches]
        assert all(len(c) == 2 for c in conditions)
        assert not set.intersection(*conditions)  # each group lives on exactly one rank
        assert len({int(BUCKETS[i]) for b in step_batches for i in b}) == 1  # the global batch: one bucket
        seen.update(i for b in step_batches for i in b)
    assert set(seen.values()) == {4}  # every condition used this epoch appears exactly G times
    used_per_bucket = Counter(int(BUCKETS[i]) for i in seen)
    for bucket, total in Counter(BUCKETS.tolist()).items():
        assert total - used_per_bucket[bucket] < 6  # at most one incomplete global batch dropped per bucket


def test_spread_placement_splits_groups_across_ranks():
    samplers = ranks(4, placement="spread", group_size=8, groups_per_rank=1)
    for step_batches in zip(*(s.epoch_batches(1) for s in samplers), strict=True):
        assert all(len(b) == 8 for b in step_batches)
        union = Counter(i for b in step_batches for i in b)
        assert len(union) == 4 and set(union.values()) == {8}  # the global batch, each condition G times
        for batch in step_batches:
            assert Counter(batch) == dict.fromkeys(union, 2)  # G / W = 2 copies of every group per rank


def test_order_is_seeded_per_epoch():
    a, b = ranks(1)[0], ranks(1)[0]
    assert a.epoch_batches(0) == b.epoch_batches(0)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert ranks(1, seed=8)[0].epoch_batches(0) != a.epoch_batches(0)
    fixed = ranks(1, shuffle=False)[0]
    assert fixed.epoch_batches(0) == fixed.epoch_batches(5)


def test_iteration_moves_through_epochs_and_set_epoch_keeps_a_resumed_position():
    (sampler,) = ranks(1)
    first, second = list(sampler), list(sampler)
    assert first == sampler.epoch_batches(0) and second == sampler.epoch_batches(1)
    assert sampler.epoch == 2 and sampler.position == 0
    sampler.set_epoch(0)
    assert sampler.step == 0
    next(iter(sampler))
    sampler.set_epoch(0)  # already inside epoch 0: no rewind
    assert sampler.step == 1


@pytest.mark.parametrize("stop", [0, 5, 13, 40])
def test_resume_continues_with_exactly_the_next_batch(stop):
    def stream(sampler):
        while True:
            yield from sampler

    reference = list(itertools.islice(stream(ranks(2)[1]), 60))
    interrupted = ranks(2)[1]
    head = list(itertools.islice(stream(interrupted), stop))
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a JSON checkpoint
    resumed = ranks(2)[1]
    resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])  # what a training loop does on restart
    tail = list(itertools.islice(stream(resumed), 60 - stop))
    assert head + tail == reference
    assert resumed.batch_at(0) == reference[0]


def test_state_for_a_prefetching_loader_and_mismatched_settings():
    (sampler,) = ranks(1)
    it = iter(sampler)
    for _ in range(6):  # a DataLoader with workers pulls ahead of the trainer
        next(it)
    state = sampler.state_dict(step=2)  # the trainer consumed two
    assert (state["step"], state["epoch"], state["position"]) == (2, 0, 2)
    other = ranks(2)[0]
    with pytest.raises(ValueError, match="world_size=1, this run has world_size=2"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="group_size=4, this run has group_size=8"):
        ranks(1, group_size=8)[0].load_state_dict(state)
    with pytest.raises(ValueError, match="no 'step'"):
        sampler.load_state_dict({})


def test_drop_last_false_fills_the_last_batch_of_each_bucket():
    sampler = GroupBatchSampler([0] * 5, group_size=2, groups_per_rank=2, drop_last=False, shuffle=False)
    assert sampler.epoch_batches(0) == [[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 0, 0]]
    assert len(GroupBatchSampler(7, group_size=1, groups_per_rank=3)) == 2  # an int = conditions of one bucket


def test_bad_arguments_say_what_to_pass():
    with pytest.raises(ValueError, match=r"bucket sizes \{0: 3\}.*lower groups_per_rank"):
        GroupBatchSampler([0, 0, 0], group_size=4, groups_per_rank=2, world_size=2)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        GroupBatchSampler(8, group_size=0, groups_per_rank=1)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\)"):
        GroupBatchSampler(8, group_size=2, groups_per_rank=1, world_size=2, rank=2)
    with pytest.raises(ValueError, match="placement must be"):
        GroupBatchSampler(8, group_size=2, groups_per_rank=1, placement="diagonal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buckets must be"):
        GroupBatchSampler([0.5, 1.0], group_size=2, groups_per_rank=1)
    with pytest.raises(ValueError, match="seed must be"):
        GroupBatchSampler(8, group_size=2, groups_per_rank=1, seed=-1)
