"""The checkpoint manager: bit-exact round trips, pruning, interrupted writes, disk-full failures, several ranks."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastgrpo.train.storage import checkpoints as ckpt
from fastgrpo.train.storage import files
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
    names = ("rank-00000.safetensors", "shared.safetensors")
    assert sorted(marker["files"]) == sorted(names)
    for name in names:
        digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
        assert marker["files"][name] == {"bytes": (path / name).stat().st_size, "sha256": digest}
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
    assert files["lora/pytorch_lora_weights.safetensors"]["bytes"] == 37
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
    (tmp / "rank-00000.safetensors").write_bytes(b"partial")


def _leftover_without_marker(root: Path) -> None:
    step = root / "step-00000002"
    step.mkdir()
    (step / "shared.safetensors").write_bytes(b"partial")


def _leftover_truncated(root: Path) -> None:
    path = _save(CheckpointManager(root, keep=None), 2)
    data = (path / "rank-00000.safetensors").read_bytes()
    (path / "rank-00000.safetensors").write_bytes(data[: len(data) // 2])


def _leftover_bad_json(root: Path) -> None:
    path = _save(CheckpointManager(root, keep=None), 2)
    (path / "COMPLETE").write_text('{"step": 2, "world_')


def _overwritten_in_place(root: Path) -> None:
    path = _save(CheckpointManager(root, keep=None), 2)
    data = bytearray((path / "shared.safetensors").read_bytes())
    data[-8:] = b"\xff" * 8  # same size, other bytes: only the checksum sees it
    (path / "shared.safetensors").write_bytes(bytes(data))


INTERRUPTED = {"tmp_dir": _leftover_tmp, "no_marker": _leftover_without_marker}
DAMAGED = {"truncated_rank_file": _leftover_truncated, "invalid_json_marker": _leftover_bad_json}
LEFTOVERS = {**INTERRUPTED, **DAMAGED}


@pytest.mark.parametrize("make_leftover", INTERRUPTED.values(), ids=INTERRUPTED.keys())
def test_interrupted_writes_are_ignored_and_removed_with_a_log_line(tmp_path, caplog, make_leftover):
    manager = CheckpointManager(tmp_path, keep=None)
    first = _save(manager, 1)
    make_leftover(tmp_path)
    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        reader = CheckpointManager(tmp_path, keep=None)
        assert reader.latest() == first
        loaded = reader.load()
        assert loaded.path == first and loaded.step == 1 and torch.equal(loaded.shared["weights"], torch.ones(3))
        if make_leftover is _leftover_without_marker:
            assert "interrupted while being written" in caplog.text
        removed = reader.clean_incomplete()
    assert [p.name for p in removed] == [".tmp-step-00000002" if make_leftover is _leftover_tmp else "step-00000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]
    assert f"removed {removed[0]}" in caplog.text


@pytest.mark.parametrize("make_leftover", [*DAMAGED.values(), _overwritten_in_place],
                         ids=[*DAMAGED.keys(), "overwritten_in_place"])  # fmt: skip
def test_a_damaged_checkpoint_is_skipped_with_a_warning_and_moved_aside_never_deleted(tmp_path, caplog, make_leftover):
    manager = CheckpointManager(tmp_path, keep=None)
    first = _save(manager, 1)
    make_leftover(tmp_path)
    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        loaded = CheckpointManager(tmp_path, keep=None).load()  # resume falls back to the newest intact one
    assert loaded.path == first and torch.equal(loaded.shared["weights"], torch.ones(3))
    if make_leftover is not _overwritten_in_place:  # found by the sizes when listing, without reading
        CheckpointManager(tmp_path, keep=None).clean_incomplete()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt-step-00000002", "step-00000001"]
    aside = tmp_path / "corrupt-step-00000002"
    assert (aside / "WHY.txt").read_text().startswith("step-00000002 was moved aside:")
    assert (aside / "shared.safetensors").is_file()  # nothing of it was deleted
    assert "step-00000002" in caplog.text and "moved it to" in caplog.text and str(aside) in caplog.text
    if make_leftover is _overwritten_in_place:
        assert "shared.safetensors does not match its checksum" in caplog.text


def test_an_explicit_load_of_a_checkpoint_changed_in_place_is_refused(tmp_path):
    manager = CheckpointManager(tmp_path, keep=None)
    first = _save(manager, 1)
    _overwritten_in_place(tmp_path)
    with pytest.raises(CheckpointError, match=r"step-00000002 cannot be trusted \(shared.safetensors does not match"):
        manager.load(tmp_path / "step-00000002")
    assert manager.latest() == tmp_path / "step-00000002"  # sizes alone cannot see it
    assert manager.load().path == first


def test_a_checkpoint_carrying_a_pickle_is_never_unpickled(tmp_path):
    """A pickle that would create a file when loaded, in place of the state file, with a matching checksum: the
    checkpoint is refused and the file is never created."""
    import pickle

    manager = CheckpointManager(tmp_path / "ckpt")
    path = _save(manager, 3)
    witness = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (witness,))

    (path / "shared.safetensors").write_bytes(pickle.dumps(Payload()))
    marker = json.loads((path / "COMPLETE").read_text())
    data = (path / "shared.safetensors").read_bytes()
    marker["files"]["shared.safetensors"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "COMPLETE").write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        manager.load()
    assert not witness.exists()


def test_a_checkpoint_of_the_old_pickle_format_is_named_as_such(tmp_path):
    step = tmp_path / "step-00000004"
    step.mkdir()
    (step / "shared.pt").write_bytes(b"pickle")
    (step / "rank-00000.pt").write_bytes(b"pickle")
    (step / "COMPLETE").write_text(json.dumps({"step": 4, "world_size": 1, "files": {"shared.pt": 6}}))
    manager = CheckpointManager(tmp_path)
    assert manager.load() is None
    manager.clean_incomplete()
    why = (tmp_path / "corrupt-step-00000004" / "WHY.txt").read_text()
    assert "older fastgrpo as pickle files" in why and "never loads" in why


@pytest.mark.parametrize("make_leftover", LEFTOVERS.values(), ids=LEFTOVERS.keys())
def test_a_newer_save_tidies_leftovers(tmp_path, make_leftover):
    manager = CheckpointManager(tmp_path, keep=None)
    _save(manager, 1)
    make_leftover(tmp_path)
    newest = _save(manager, 3)
    kept = ["step-00000001", "step-00000003"]
    if make_leftover in DAMAGED.values():
        kept.insert(0, "corrupt-step-00000002")
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
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
    """``atomic_write_bytes`` that works ``calls`` times, then writes half of the file and raises ``error``."""
    real = ckpt.atomic_write_bytes
    count = {"n": 0}

    def write(path: Path, data: bytes) -> None:
        count["n"] += 1
        if count["n"] > calls:

            def half(handle) -> None:
                handle.write(data[: len(data) // 2])
                raise error

            files.atomic_write(path, half)
        real(path, data)

    return write


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


def _safetensors_enospc() -> Exception:
    """What safetensors raises when its file cannot be written (its Rust error, not an OSError)."""
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("calls", [0, 1], ids=["rank_file", "shared_file"])
@pytest.mark.parametrize("error", [ENOSPC, _torch_wrapped_enospc()], ids=["oserror", "torch_runtime_error"])
def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, calls, error):
    manager = CheckpointManager(tmp_path, keep=1)
    first = _save(manager, 1)
    monkeypatch.setattr(ckpt, "atomic_write_bytes", _failing_after(calls, error))
    with pytest.raises(CheckpointError) as info:
        _save(manager, 2)
    monkeypatch.undo()
    message = str(info.value)
    assert "step-00000002" in message and "No space left on device" in message
    assert str(first) in message and "intact" in message and "free disk space" in message
    assert "a checkpoint takes about" in message and "MiB are free" in message
    assert "logging.keep_checkpoints" in message and "`keep`" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]  # no tmp dir, no temp file
    assert manager.load().path == first


def test_disk_full_inside_safetensors_is_recognised(tmp_path):
    """The LoRA file of a checkpoint is written by safetensors, which reports a full disk as its own error."""

    def lora_on_a_full_disk(directory: Path) -> None:
        (directory / "lora").mkdir()
        raise _safetensors_enospc()

    manager = CheckpointManager(tmp_path, keep=1)
    first = _save(manager, 1)
    with pytest.raises(CheckpointError) as info:
        _save(manager, 2, extra_writer=lora_on_a_full_disk)
    message = str(info.value)
    assert "No space left on device" in message and "free disk space" in message and str(first) in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one message, no chained traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="mounting a tmpfs needs root on Linux")
def test_a_real_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """A small tmpfs, filled for real: the second checkpoint does not fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("this machine refuses to mount a tmpfs")
    try:
        manager = CheckpointManager(mount, keep=None)
        first = manager.save(1, {"w": torch.zeros(40_000)}, {"r": 0})  # 160 kB
        with pytest.raises(CheckpointError) as info:
            manager.save(2, {"w": torch.zeros(100_000)}, {"r": 0})  # 400 kB more: does not fit
        assert "No space left on device" in str(info.value) and "MiB are free" in str(info.value)
        assert sorted(p.name for p in mount.iterdir()) == ["step-00000001"]
        assert manager.load().path == first
    finally:
        subprocess.run(["umount", str(mount)], check=False)


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

    real = ckpt.atomic_write_bytes

    def no_space(path: Path, data: bytes) -> None:
        if path.name == "COMPLETE":  # the marker cannot be written; the state files could
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", no_space)
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
