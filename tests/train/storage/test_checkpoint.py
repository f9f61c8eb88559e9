"""The checkpoint manager: bit-exact round trips, pruning, interrupted writes, disk-full failures, several ranks."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fastgrpo.train.storage import checkpoints as ckpt
from fastgrpo.train.storage.checkpoints import CheckpointError, CheckpointManager, LoadedCheckpoint

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _state(value: float = 1.0) -> tuple[dict, dict]:
    """A small ``(shared, per_rank)`` pair marked with ``value``."""
    return {"weights": torch.full((3,), value), "step_value": value}, {"rng": torch.tensor([int(value)])}


def _save(manager: CheckpointManager, step: int, **kwargs) -> Path:
    shared, per_rank = _state(float(step))
    return manager.save(step, shared, per_rank, **kwargs)


def _assert_same(a, b) -> None:
    """Recursive bit-exact equality of nested containers of tensors, arrays and Python values."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_is_bit_exact(tmp_path):
    param = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.randn(4, 3)
    optimizer.step()
    shared = {
        "model": {"lora_A": torch.randn(2, 5, dtype=torch.bfloat16), "nested": {"b": torch.arange(7)}},
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "name": "run",
    }
    per_rank = {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "position": 12345}
    manager = CheckpointManager(tmp_path / "ckpt")
    path = manager.save(100, shared, per_rank)

    assert path == tmp_path / "ckpt" / "step-00000100"
    loaded = manager.load()
    assert isinstance(loaded, LoadedCheckpoint)
    assert (loaded.path, loaded.step) == (path, 100)
    _assert_same(loaded.shared, shared)
    _assert_same(loaded.rank_state, per_rank)
    optimizer.load_state_dict(loaded.shared["optimizer"])  # usable as an optimiser state
    marker = json.loads((path / "COMPLETE").read_text())
    assert marker["step"] == 100 and marker["world_size"] == 1
    assert marker["files"] == {name: (path / name).stat().st_size for name in ("rank-00000.pt", "shared.pt")}
    assert not list((tmp_path / "ckpt").glob(".*"))  # nothing temporary left


def test_empty_directory_has_no_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path / "missing")
    assert manager.complete() == [] and manager.latest() is None and manager.load() is None
    assert manager.clean_incomplete() == []


def test_extra_writer_files_are_inside_and_listed(tmp_path):
    def write_lora(directory: Path) -> None:
        (directory / "lora").mkdir()
        (directory / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"x" * 37)

    path = _save(CheckpointManager(tmp_path), 5, extra_writer=write_lora)
    assert (path / "lora" / "pytorch_lora_weights.safetensors").read_bytes() == b"x" * 37
    files = json.loads((path / "COMPLETE").read_text())["files"]
    assert files["lora/pytorch_lora_weights.safetensors"] == 37
    # A truncated extra file makes the checkpoint incomplete too.
    (path / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    assert CheckpointManager(tmp_path).latest() is None


def test_keep_prunes_the_oldest(tmp_path):
    manager = CheckpointManager(tmp_path / "two", keep=2)
    for step in (1, 2, 3, 4):
        _save(manager, step)
    assert [p.name for p in manager.complete()] == ["step-00000003", "step-00000004"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["step-00000003", "step-00000004"]

    everything = CheckpointManager(tmp_path / "all", keep=None)
    for step in (1, 2, 3, 4):
        _save(everything, step)
    assert [p.name for p in everything.complete()] == [f"step-{s:08d}" for s in (1, 2, 3, 4)]


def test_steps_beyond_eight_digits_sort_numerically(tmp_path):
    manager = CheckpointManager(tmp_path, keep=None)
    for step in (10**8, 99_999_999, 5):
        _save(manager, step)
    assert [p.name for p in manager.complete()] == ["step-00000005", "step-99999999", "step-100000000"]
    assert manager.load().step == 10**8


def _leftover_tmp(root: Path) -> None:
    tmp = root / ".tmp-step-00000002"
    tmp.mkdir()
    (tmp / "rank-00000.pt").write_bytes(b"partial")


def _leftover_without_marker(root: Path) -> None:
    step = root / "step-00000002"
    step.mkdir()
    (step / "shared.pt").write_bytes(b"partial")


def _leftover_truncated(root: Path) -> None:
    path = _save(CheckpointManager(root, keep=None), 2)
    data = (path / "rank-00000.pt").read_bytes()
    (path / "rank-00000.pt").write_bytes(data[: len(data) // 2])


def _leftover_bad_json(root: Path) -> None:
    path = _save(CheckpointManager(root, keep=None), 2)
    (path / "COMPLETE").write_text('{"step": 2, "world_')


LEFTOVERS = {
    "tmp_dir": _leftover_tmp,
    "no_marker": _leftover_without_marker,
    "truncated_rank_file": _leftover_truncated,
    "invalid_json_marker": _leftover_bad_json,
}


@pytest.mark.parametrize("make_leftover", LEFTOVERS.values(), ids=LEFTOVERS.keys())
def test_interrupted_writes_are_ignored_and_cleaned(tmp_path, caplog, make_leftover):
    manager = CheckpointManager(tmp_path, keep=None)
    first = _save(manager, 1)
    make_leftover(tmp_path)

    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        reader = CheckpointManager(tmp_path, keep=None)
        assert reader.latest() == first
        loaded = reader.load()
    assert loaded.path == first and loaded.step == 1 and torch.equal(loaded.shared["weights"], torch.ones(3))
    if make_leftover is not _leftover_tmp:
        assert "ignoring incomplete checkpoint" in caplog.text and "interrupted while being written" in caplog.text

    removed = reader.clean_incomplete()
    assert [p.name for p in removed] == [".tmp-step-00000002" if make_leftover is _leftover_tmp else "step-00000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]


@pytest.mark.parametrize("make_leftover", LEFTOVERS.values(), ids=LEFTOVERS.keys())
def test_a_newer_save_prunes_leftovers(tmp_path, make_leftover):
    manager = CheckpointManager(tmp_path, keep=None)
    _save(manager, 1)
    make_leftover(tmp_path)
    newest = _save(manager, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000003"]
    assert manager.load().path == newest


def test_loading_an_incomplete_checkpoint_explains(tmp_path):
    manager = CheckpointManager(tmp_path)
    first = _save(manager, 1)
    _leftover_without_marker(tmp_path)
    with pytest.raises(CheckpointError) as info:
        manager.load(tmp_path / "step-00000002")
    message = str(info.value)
    assert "step-00000002" in message and "no COMPLETE marker" in message
    assert f"newest complete checkpoint {first} is intact" in message
    with pytest.raises(CheckpointError, match="no such directory"):
        manager.load(str(tmp_path / "step-00000009"))


def _failing_after(calls: int, error: BaseException):
    """A ``torch.save`` that works ``calls`` times, then writes some bytes and raises ``error``."""
    real_save = torch.save
    count = {"n": 0}

    def save(obj, handle, *args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            handle.write(b"half a file")
            raise error
        return real_save(obj, handle, *args, **kwargs)

    return save


def _torch_wrapped_enospc() -> RuntimeError:
    """How torch's writer reports a failed write: a RuntimeError raised while handling the OSError."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
        except RuntimeError as wrapped:
            wrapped.__context__ = ENOSPC
            return wrapped


@pytest.mark.parametrize("calls", [0, 1], ids=["rank_file", "shared_file"])
@pytest.mark.parametrize("error", [ENOSPC, _torch_wrapped_enospc()], ids=["oserror", "torch_runtime_error"])
def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, calls, error):
    manager = CheckpointManager(tmp_path, keep=1)
    first = _save(manager, 1)
    monkeypatch.setattr(torch, "save", _failing_after(calls, error))
    with pytest.raises(CheckpointError) as info:
        _save(manager, 2)
    monkeypatch.undo()
    message = str(info.value)
    assert "step-00000002" in message and "No space left on device" in message
    assert str(first) in message and "intact" in message and "free disk space" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]  # no tmp dir, no temp file
    assert manager.load().path == first


def test_permission_error_in_extra_writer(tmp_path):
    def denied(directory: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(directory / "lora"))

    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match="Permission denied") as info:
        _save(manager, 1, extra_writer=denied)
    assert "No complete checkpoint exists yet" in str(info.value) and "permissions" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_propagate_unchanged_and_clean_up(tmp_path):
    def broken(directory: Path) -> None:
        raise ValueError("bad extra")

    manager = CheckpointManager(tmp_path)
    with pytest.raises(ValueError, match="bad extra"):
        _save(manager, 1, extra_writer=broken)
    assert list(tmp_path.iterdir()) == []


def test_saving_the_same_step_twice_replaces_it(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(7, {"v": torch.zeros(2)}, {"r": 0})
    manager.save(7, {"v": torch.ones(2)}, {"r": 1})
    loaded = manager.load()
    assert loaded.step == 7 and torch.equal(loaded.shared["v"], torch.ones(2)) and loaded.rank_state == {"r": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000007"]


def test_failed_replacement_restores_the_old_copy(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    manager.save(7, {"v": torch.zeros(2)}, {"r": 0})

    def no_space(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "atomic_write_bytes", no_space)  # the COMPLETE marker cannot be written
    with pytest.raises(CheckpointError, match="No space left on device"):
        manager.save(7, {"v": torch.ones(2)}, {"r": 1})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000007"]
    assert torch.equal(manager.load().shared["v"], torch.zeros(2))


def test_clean_incomplete_restores_an_interrupted_replacement(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = _save(manager, 4)
    path.rename(tmp_path / ".old-step-00000004")  # killed after moving the old copy aside...
    _leftover_without_marker(tmp_path)
    (tmp_path / "step-00000002").rename(path)  # ...and before the new copy got its marker
    assert manager.latest() is None
    assert manager.clean_incomplete() == [path]
    assert manager.load().step == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004"]


def test_two_ranks_in_one_process(tmp_path):
    rank0 = CheckpointManager(tmp_path, rank=0, world_size=2)
    rank1 = CheckpointManager(tmp_path, rank=1, world_size=2)
    shared = {"model": torch.randn(3)}
    states = [{"rng": torch.get_rng_state(), "rank": 0}, {"rng": torch.randn(5), "rank": 1}]

    # The order real barriers enforce: rank 0 prepares, both ranks write, rank 0 finishes.
    rank0._begin(9)
    rank1._write_rank(9, states[1])
    rank0._write_rank(9, states[0])
    path = rank0._finish(9, shared, None)

    assert json.loads((path / "COMPLETE").read_text())["world_size"] == 2
    for manager, state in zip((rank0, rank1), states, strict=True):
        loaded = manager.load()
        assert loaded.path == path
        _assert_same(loaded.shared, shared)
        _assert_same(loaded.rank_state, state)
    with pytest.raises(CheckpointError, match="written by 2 ranks, this run has 1; resume with the same number"):
        CheckpointManager(tmp_path).load()


def test_a_rank_that_did_not_write_fails_the_save(tmp_path):
    rank0 = CheckpointManager(tmp_path, rank=0, world_size=2)
    with pytest.raises(CheckpointError, match=r"rank\(s\) \[1\] did not write"):
        _save(rank0, 1)  # no rank 1 in this process
    assert list(tmp_path.iterdir()) == []
    rank1 = CheckpointManager(tmp_path, rank=1, world_size=2)
    with pytest.raises(CheckpointError, match="rank 0 failed to prepare it"):
        _save(rank1, 1)


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        CheckpointManager(tmp_path, keep=0)
    with pytest.raises(ValueError, match="rank must be in"):
        CheckpointManager(tmp_path, rank=2, world_size=2)
    with pytest.raises(ValueError, match="non-negative int"):
        _save(CheckpointManager(tmp_path), -1)
    assert _save(CheckpointManager(tmp_path), np.int64(3)).name == "step-00000003"
