"""Records with several input images: the record type, the layouts, the checks, the dataset and the conditions."""

from __future__ import annotations

import json
import pickle

import edit_fixtures as fx
import numpy as np
import pytest

from fastgrpo.core.advantages import GroupKey
from fastgrpo.data.badinput import BadInputPolicy
from fastgrpo.data.buckets import Resolution, ResolutionBuckets
from fastgrpo.data.check import check_dataset, format_report
from fastgrpo.data.dataset import EditDataset
from fastgrpo.data.loaders import load_records
from fastgrpo.data.records import EditRecord
from fastgrpo.train.conditions import dataset_item

BUCKETS = ResolutionBuckets(((16, 16), (24, 16)), multiple=8)
LENIENT = BadInputPolicy(max_bad_fraction=1.0)


def test_a_record_holds_its_input_images_in_order():
    record = EditRecord(id="r", source="a.png", instruction="swap", references=["b.png", b"\x89PNG"])
    assert record.references == ("b.png", b"\x89PNG") and record.inputs == ("a.png", "b.png", b"\x89PNG")
    assert list(record.images()) == ["source", "reference 1", "reference 2"]
    assert record.source_id == "a.png"  # the image to edit, as before
    # references are part of the condition: the same source and instruction with another reference is another group
    assert record.group_key == GroupKey("a.png | b.png | r:reference 2", "swap")
    plain = EditRecord(id="p", source="a.png", instruction="swap", mask="m.png")
    assert plain.inputs == ("a.png",) and plain.group_key == GroupKey("a.png", "swap")
    assert list(plain.images()) == ["source", "mask"]
    again = pickle.loads(pickle.dumps(record))
    assert again.references == record.references and again.inputs == record.inputs
    with pytest.raises(ValueError, match=r"EditRecord\.references\[1\] is a int"):
        EditRecord(id="r", source="a.png", instruction="x", references=("b.png", 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"EditRecord\.references is a str; pass a tuple"):
        EditRecord(id="r", source="a.png", instruction="x", references="b.png")  # type: ignore[arg-type]


def test_flow_grpo_dual_ref_control_and_referenced_images(tmp_path):
    loaded = load_records(fx.flow_grpo_dual_ref(tmp_path))
    assert loaded.presets == {"test_metadata.jsonl": "flow_grpo"} and not loaded.problems
    r = loaded.records[0]
    assert (r.source, r.references, r.target) == ("input/00001.png", ("referenced/00001.png",), "supervise/00001.png")
    assert r.task == "dual_ref" and r.instruction.startswith("Fix the control image")


def test_list_cells_and_several_reference_columns(tmp_path):
    fx.write_files(tmp_path, {f"{n}.png": fx.png(16, 16, seed=i) for i, n in enumerate("abcde")})
    native = [{"id": "n", "source": "a.png", "references": ["b.png", "c.png"], "instruction": "combine"}]
    loaded = load_records(fx.write_jsonl(tmp_path / "native.jsonl", native))
    assert loaded.presets == {"native.jsonl": "fastgrpo"}
    assert loaded.records[0].inputs == ("a.png", "b.png", "c.png")
    # an explicit column holding a list: its first item is the image to edit, the rest references
    listed = [{"imgs": ["a.png", "b.png"], "ref_x": "d.png", "ref_y": ["e.png"], "edit": "put b into a"}]
    path = fx.write_jsonl(tmp_path / "custom.jsonl", listed)
    custom = load_records(path, preset="fastgrpo", columns={"source": "imgs", "instruction": "edit"})
    assert custom.records[0].inputs == ("a.png", "b.png")
    both = load_records(path, columns={"source": "imgs", "instruction": "edit", "references": ["ref_y", "ref_x"]})
    assert both.records[0].inputs == ("a.png", "b.png", "e.png", "d.png")  # every reference column, in order


def test_list_cells_that_cannot_be_one_record_are_counted_bad_rows(tmp_path):
    rows = [
        {"id": "two-targets", "source": "a.png", "instruction": "x", "target": ["t1.png", "t2.png"]},
        {"id": "empty-list", "source": [], "instruction": "x"},
        {"id": "hole", "source": ["a.png", ""], "instruction": "x"},
        {"id": "nested", "source": [["a.png"]], "instruction": "x"},
        {"id": "one-target", "source": ["a.png"], "instruction": "x", "target": ["t1.png"]},
    ]
    loaded = load_records(fx.write_jsonl(tmp_path / "rows.jsonl", rows), preset="fastgrpo")
    assert [(r.id, r.target) for r in loaded.records] == [("one-target", "t1.png")]
    reasons = {p.record: (p.reason, p.message) for p in loaded.problems}
    assert (
        reasons["two-targets"][0] == "bad_row"
        and "lists 2 images; a record has one target" in reasons["two-targets"][1]
    )
    assert reasons["empty-list"][0] == "missing_image"
    assert reasons["hole"][0] == "bad_row" and "empty image at item 1" in reasons["hole"][1]
    assert reasons["nested"][0] == "bad_row"


def _refs_data_set(tmp_path, count: int = 4):
    """Records of a 24x16 image to edit and a square reference (another aspect ratio)."""
    files, rows = {}, []
    for i in range(count):
        files[f"src/{i}.png"] = fx.png(24, 16, seed=i)
        files[f"ref/{i}.png"] = fx.png(30, 30, seed=10 + i)
        rows.append({"id": f"m{i}", "source": f"src/{i}.png", "references": [f"ref/{i}.png"], "instruction": "e"})
    fx.write_files(tmp_path, files)
    return fx.write_jsonl(tmp_path / "refs.jsonl", rows)


def test_the_image_to_edit_picks_the_bucket_and_references_follow_it(tmp_path):
    dataset = EditDataset.from_path(_refs_data_set(tmp_path), BUCKETS)
    assert dataset.bucket_ids.tolist() == [1, 1, 1, 1]  # 24x16 sources, whatever the square references say
    sample = dataset[0]
    assert sample.resolution == Resolution(24, 16) and sample.source.shape == (16, 24, 3)
    assert len(sample.references) == 1 and sample.references[0].shape == (16, 24, 3)
    assert sample.references[0].dtype == np.uint8 and len(sample.inputs) == 2
    assert not np.array_equal(sample.references[0], sample.source)
    item = dataset_item(sample)  # the condition the trainer encodes carries them too
    assert len(item.references) == 1 and np.array_equal(item.references[0], sample.references[0])
    assert len(item.inputs) == 2 and item.source is sample.source


def test_every_input_image_is_checked_and_counted(tmp_path):
    path = _refs_data_set(tmp_path)
    (tmp_path / "ref" / "1.png").unlink()
    (tmp_path / "ref" / "2.png").write_bytes(b"garbage")
    dataset = EditDataset.from_path(path, BUCKETS, policy=LENIENT)
    assert [dataset.record(i).id for i in range(len(dataset))] == ["m0", "m3"]
    got = {(p.record, p.reason, p.field) for p in dataset.problems}
    assert got == {("m1", "missing_file", "reference 1"), ("m2", "corrupt_image", "reference 1")}
    assert "reference 1 image 'ref/2.png'" in next(p.message for p in dataset.problems if p.record == "m2")
    # damage found only when decoding: the sample is replaced like for a bad source, naming the reference
    good = (tmp_path / "ref" / "0.png").read_bytes()
    (tmp_path / "ref" / "0.png").write_bytes(good[: len(good) // 2])
    sample = dataset[0]
    assert sample.record.id == "m3" and sample.replaced.field == "reference 1"
    assert sample.replaced.reason == "truncated_image"


def test_data_check_reports_input_images_per_record(tmp_path, capsys):
    path = _refs_data_set(tmp_path, count=3)
    with open(path, "a") as f:
        f.write(json.dumps({"id": "single", "source": "src/0.png", "instruction": "e"}) + "\n")
    report = check_dataset(path)
    assert report.inputs == {2: 3, 1: 1} and report.to_dict()["inputs_per_record"] == {"1": 1, "2": 3}
    assert "  inputs       per record: 1 x 1, 2 x 3" in format_report(report)
    (tmp_path / "ref" / "1.png").write_bytes(b"garbage")
    broken = check_dataset(path)
    assert broken.inputs == {2: 2, 1: 1} and [p.field for p in broken.problems] == ["reference 1"]
