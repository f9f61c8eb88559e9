"""Atomic writes (file and directory) and the messages of failed writes."""

from __future__ import annotations

import errno

import pytest
import torch

from fastgrpo.train.storage import files

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _failing_save(obj, handle, *args, **kwargs):
    handle.write(b"half a file")
    raise ENOSPC


def test_atomic_file_writes_keep_the_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    files.atomic_write_bytes(target, b"old")
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(OSError, match="No space left"):
        files.atomic_torch_save({"x": 1}, target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["file.bin"]
    files.atomic_torch_save({"x": torch.ones(2)}, target)
    assert torch.equal(torch.load(target)["x"], torch.ones(2))
    files.fsync_dir(tmp_path)
    files.fsync_dir(tmp_path / "does-not-exist")  # best effort: no error


def test_atomic_directory_replaces_the_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "lora"
    with files.atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(OSError, match="No space"), files.atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise ENOSPC
    assert (target / "a.txt").read_text() == "first"  # untouched by the failed replacement
    with files.atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced as a whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]  # no .tmp / .old left behind


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, "free disk space there, lower logging.keep_checkpoints, or set logging.output_dir"),
        (errno.EROFS, "make it writable"),
        (errno.ENOTDIR, "a file is in the way of the folder"),
        (errno.EIO, "check the disk and the path"),
    ],
)
def test_failed_writes_name_the_path_the_reason_and_the_fix(tmp_path, code, expected):
    message = files.describe_os_error(OSError(code, "why"), tmp_path / "x", "write")
    assert message.startswith(f"could not write {tmp_path / 'x'}: why; ") and expected in message


def test_the_os_error_is_found_behind_a_wrapping_error():
    try:
        try:
            raise ENOSPC
        except OSError as inner:
            raise RuntimeError("PytorchStreamWriter failed writing file") from inner
    except RuntimeError as outer:
        assert files.os_error_in(outer) is ENOSPC
    assert files.os_error_in(ValueError("no os error")) is None
