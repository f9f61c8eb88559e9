"""``fastgrpo data check PATH``: summary, problems, exit status, JSON, presets and roots, usage errors."""

from __future__ import annotations

import json

import edit_fixtures as fx
import pytest

from fastgrpo.data.check import check_dataset
from fastgrpo.train.cli import main


def damaged(tmp_path):
    """The native fixture (4 records) plus 1 truncated image and 1 row without an instruction: 2 of 6 bad."""
    path = fx.native(tmp_path, count=4)
    good = fx.png(20, 20)
    fx.write_files(tmp_path, {"img/cut.png": good[: len(good) // 2]})
    extra = [
        {"id": "cut", "source": "img/cut.png", "instruction": "edit"},
        {"id": "mute", "source": "img/0.png", "instruction": ""},
    ]
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in extra)
    return path


def test_clean_data_set_summary(tmp_path, capsys):
    path = fx.native(tmp_path, count=4)
    assert main(["data", "check", str(path), "--buckets", "16x16,32x16"]) == 0
    out = capsys.readouterr().out
    assert "data check" in out and ": OK" in out
    assert "edits.jsonl [fastgrpo]" in out and "4 usable, 0 bad" in out
    assert "sizes (WxH)  20x20 2, 24x16 2" in out and "masks        4 of 4" in out
    assert "PNG 4" in out and "tasks        remove 2, add 2" in out and "buckets      16x16 2, 32x16 2" in out


def test_problems_are_listed_and_decide_the_exit_status(tmp_path, capsys):
    path = damaged(tmp_path)
    assert main(["data", "check", str(path)]) == 1  # 2 of 6 is more than the default 5%
    out = capsys.readouterr().out
    assert ": FAILED" in out and "4 usable, 2 bad (33.3%; limit 5.0%)" in out
    assert "[truncated_image] record 'cut' (edits.jsonl:line 5)" in out
    assert "[missing_instruction] record 'mute' (edits.jsonl:line 6)" in out
    assert "truncated_image: the file ends before the image data does" in out
    assert main(["data", "check", str(path), "--max-bad-fraction", "0.5"]) == 0
    capsys.readouterr()
    # --quick reads headers only: the truncated file is not found.
    assert main(["data", "check", str(path), "--quick", "--max-bad-fraction", "0.2"]) == 0
    assert "1 bad" in capsys.readouterr().out


def test_json_report(tmp_path, capsys):
    assert main(["data", "check", str(damaged(tmp_path)), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["rows"], report["usable"], report["bad"], report["passed"]) == (6, 4, 2, False)
    assert report["reasons"] == {"missing_instruction": 1, "truncated_image": 1}
    assert report["problems"][0]["record"] == "mute" and report["with_mask"] == 4
    assert report["resolutions"] == {"20x20": 2, "24x16": 2}


def test_preset_and_root_options(tmp_path, capsys):
    fx.magicbrush(tmp_path / "mb")
    assert main(["data", "check", str(tmp_path / "mb"), "--preset", "magicbrush"]) == 0
    assert "2 usable" in capsys.readouterr().out
    data = fx.flow_grpo(tmp_path / "fg")
    moved = tmp_path / "meta" / "train_metadata.jsonl"
    moved.parent.mkdir()
    data.rename(moved)
    assert main(["data", "check", str(moved)]) == 1  # images are not next to the file any more
    assert "missing_file 3" in capsys.readouterr().out
    assert main(["data", "check", str(moved), "--root", str(tmp_path / "fg")]) == 0


def test_usage_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nothing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    path = fx.native(tmp_path)
    assert main(["data", "check", str(path), "--preset", "nope"]) == 2
    assert "unknown data preset" in capsys.readouterr().err
    assert main(["data", "check", str(path), "--max-bad-fraction", "5"]) == 2
    assert "max_bad_fraction must be a fraction" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["data"])
    assert info.value.code == 2


def test_masks_of_another_size_are_reported_not_refused(tmp_path, capsys):
    fx.magicbrush(tmp_path, mask_size=(12, 8))
    assert main(["data", "check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 usable, 0 bad" in out and "masks        2 of 2 (masks resized: 2)" in out
    report = check_dataset(tmp_path)
    assert report.masks_resized == 2 and report.to_dict()["masks_resized"] == 2
    assert check_dataset(fx.magicbrush(tmp_path / "same")).masks_resized == 0


def test_check_dataset_api(tmp_path):
    report = check_dataset(fx.emu_edit(tmp_path))
    assert report.passed and report.usable == 3 and report.groups == 3  # same instruction, three images
    assert report.formats == {"JPEG": 3} and report.with_captions == 3 and report.tasks == {"background": 3}
