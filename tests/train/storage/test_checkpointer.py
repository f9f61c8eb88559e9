"""The component checkpointer: every stateful part saved under its name and restored; a checkpoint that lacks a
part or does not fit it is refused with a message naming the checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch

from fastgrpo.train.storage.checkpointer import Checkpointer
from fastgrpo.train.storage.checkpoints import CheckpointError, CheckpointManager
from fastgrpo.train.storage.state_files import load_state


class Part:
    """A component whose state is one tensor; ``strict`` refuses a state of another shape."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["value"].shape != self.value.shape:
            raise ValueError(f"shape {tuple(state['value'].shape)} does not fit {tuple(self.value.shape)}")
        self.value = state["value"].clone()


def checkpointer(tmp_path, shared: dict, per_rank: dict) -> Checkpointer:
    return Checkpointer(CheckpointManager(tmp_path), shared=shared, per_rank=per_rank, config={"run": "x"})


def test_components_are_saved_under_their_names_and_restored(tmp_path):
    a, b, r = Part(torch.arange(3.0)), Part(torch.ones(2)), Part(torch.tensor([7]))
    written = []
    path = checkpointer(tmp_path, {"a": a, "b": b}, {"rng": r}).save(4, extra_writer=lambda d: written.append(d))
    shared = load_state(path / "shared.safetensors")
    assert set(shared) == {"a", "b", "config"} and shared["config"] == {"run": "x"}
    assert load_state(path / "rank-00000.safetensors") == {"rng": {"value": torch.tensor([7])}}
    assert len(written) == 1
    fresh = [Part(torch.zeros(3)), Part(torch.zeros(2)), Part(torch.zeros(1, dtype=torch.int64))]
    loaded = checkpointer(tmp_path, {"a": fresh[0], "b": fresh[1]}, {"rng": fresh[2]}).restore_latest()
    assert loaded is not None and loaded.step == 4
    assert torch.equal(fresh[0].value, a.value) and torch.equal(fresh[1].value, b.value)
    assert torch.equal(fresh[2].value, r.value)


def test_nothing_to_restore_changes_nothing(tmp_path):
    part = Part(torch.ones(2))
    assert checkpointer(tmp_path, {"a": part}, {}).restore_latest() is None
    assert torch.equal(part.value, torch.ones(2))


def test_a_missing_or_unfitting_component_is_refused_naming_the_checkpoint(tmp_path):
    path = checkpointer(tmp_path, {"a": Part(torch.ones(2))}, {}).save(1)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} has no state for \['b'\]"):
        checkpointer(tmp_path, {"a": Part(torch.ones(2)), "b": Part(torch.ones(1))}, {}).restore_latest()
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} does not fit this run \(a: shape \(2,\)"):
        checkpointer(tmp_path, {"a": Part(torch.ones(5))}, {}).restore_latest()


def test_component_names_must_be_distinct_and_not_config(tmp_path):
    with pytest.raises(ValueError, match="taken"):
        checkpointer(tmp_path, {"config": Part(torch.ones(1))}, {})
    with pytest.raises(ValueError, match="taken"):
        checkpointer(tmp_path, {"a": Part(torch.ones(1))}, {"a": Part(torch.ones(1))})
