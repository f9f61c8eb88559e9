"""The loop's counters and random generators: the failed-reward streak, the RNG round trip, keyed seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fastgrpo.train.errors import TrainingError
from fastgrpo.train.state import RNGState, TrainState, mix_seed


def test_only_iterations_whose_rewards_all_failed_count_towards_the_limit():
    state = TrainState(step=6)
    state.note_rewards(3, 8, limit=2)  # some rewards failed: not a failing iteration
    assert state.reward_failures_in_row == 0
    state.note_rewards(8, 8, limit=2)
    state.note_rewards(0, 8, limit=2)  # a good iteration resets the streak
    state.note_rewards(8, 8, limit=2)
    with pytest.raises(TrainingError, match=r"every reward failed in 2 iterations in a row \(last: 7\)"):
        state.note_rewards(8, 8, limit=2)


def test_state_dict_round_trip():
    state = TrainState(step=12, reward_failures_in_row=2)
    fresh = TrainState()
    fresh.load_state_dict(state.state_dict())
    assert fresh == state


def test_the_random_generators_continue_where_they_were_saved():
    rng = RNGState(torch.device("cpu"))
    saved = rng.state_dict()
    first = (torch.rand(3), np.random.rand(3), random.random())
    rng.load_state_dict(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_keyed_seeds_are_stable_distinct_and_63_bit():
    seeds = {mix_seed(0, step, chunk, salt) for step in range(50) for chunk in range(4) for salt in (1, 2)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)
    assert mix_seed(7, 3, 1) == mix_seed(7, 3, 1) != mix_seed(7, 1, 3)
