"""Records and layouts: every public preset read from a fixture written in its layout, bad rows counted."""

from __future__ import annotations

import json
import pickle

import edit_fixtures as fx
import numpy as np
import pytest

from fastgrpo.core.advantages import GroupKey
from fastgrpo.data.formats import PRESETS, detect_preset, get_preset
from fastgrpo.data.loaders import find_data_files, load_records
from fastgrpo.data.records import EditRecord


def test_record_validates_and_names_the_fix():
    with pytest.raises(ValueError, match="no instruction"):
        EditRecord(id="a", source="x.png", instruction="   ")
    with pytest.raises(ValueError, match="id must be"):
        EditRecord(id="", source="x.png", instruction="edit")
    with pytest.raises(ValueError, match=r"EditRecord\.source is a int"):
        EditRecord(id="a", source=3, instruction="edit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"EditRecord\.mask is a list"):
        EditRecord(id="a", source="x.png", instruction="edit", mask=[1])  # type: ignore[arg-type]


def test_group_key_is_source_image_plus_instruction():
    by_path = EditRecord(id="r1", source="img/a.png", instruction="make it red")
    assert by_path.group_key == GroupKey("img/a.png", "make it red")
    by_bytes = EditRecord(id="r2", source=b"\x89PNG", instruction="make it red")
    assert by_bytes.group_key == GroupKey("r2", "make it red")


def test_record_pickles_with_read_only_metadata():
    record = EditRecord(id="a", source=np.zeros((2, 2, 3), np.uint8), instruction="x", metadata={"k": [1]})
    with pytest.raises(TypeError):
        record.metadata["k"] = 2  # type: ignore[index]
    again = pickle.loads(pickle.dumps(record))
    assert again.metadata == {"k": [1]} and again.id == "a" and np.array_equal(again.source, record.source)


def test_magicbrush_parquet(tmp_path):
    fx.magicbrush(tmp_path)
    loaded = load_records(tmp_path)  # the Hugging Face folder layout: data/train-*.parquet
    assert loaded.presets == {"data/train-00000-of-00001.parquet": "magicbrush"} and not loaded.problems
    first = loaded.records[0]
    assert first.id == "327726-1" and first.instruction.startswith("put a hat")
    assert isinstance(first.source, bytes) and isinstance(first.mask, bytes) and isinstance(first.target, bytes)
    assert first.source == fx.png(24, 16, seed=1) and first.origin.endswith(":row 0")
    assert loaded.root == tmp_path  # a folder: the root is the folder itself


def test_emu_edit_parquet(tmp_path):
    loaded = load_records(fx.emu_edit(tmp_path))
    assert loaded.presets == {"test.parquet": "emu_edit"}
    r = loaded.records[2]
    assert (r.id, r.task, r.input_caption, r.output_caption) == (
        "2",
        "background",
        "a lake under a blue sky",
        "a lake under a pink sky",
    )
    assert r.metadata == {"split": "test"} and r.target is None


def test_gedit_bench_reads_only_the_needed_image_column_and_filters_language(tmp_path):
    path = fx.gedit_bench(tmp_path)
    loaded = load_records(path)
    assert loaded.presets == {"gedit.parquet": "gedit_bench"} and len(loaded.records) == 3
    r = loaded.records[0]
    assert r.source == fx.png(16, 16, seed=0)  # input_image, not input_image_raw
    assert (r.id, r.task, r.metadata["instruction_language"]) == ("k0", "color_alter", "en")
    english = load_records(path, where={"instruction_language": "en"})
    assert [r.id for r in english.records] == ["k0", "k2"] and english.total == 2


def test_instructpix2pix_parquet(tmp_path):
    loaded = load_records(fx.instructpix2pix(tmp_path))
    assert loaded.presets == {"ip2p.parquet": "instructpix2pix"}
    r = loaded.records[1]
    assert (r.instruction, r.input_caption, r.output_caption) == (
        "turn it into a tiger",
        "a photo of a cat",
        "a photo of a tiger",
    )
    assert r.id == "ip2p.parquet:1" and r.target == fx.png(16, 16, seed=51)


def test_imgedit_jsonl_and_json(tmp_path):
    loaded = load_records(fx.imgedit_jsonl(tmp_path))
    assert loaded.presets == {"imgedit.jsonl": "imgedit"}
    assert [(r.id, r.source, r.task) for r in loaded.records] == [
        ("1082", "animal/000342021.jpg", "adjust"),
        ("2001", "style/000001.png", "style"),
    ]
    bench = load_records(fx.imgedit_json(tmp_path / "bench"))
    (r,) = bench.records
    assert (r.id, r.source, r.instruction, r.origin) == (
        "1082",
        "animal/000342021.jpg",
        "remove the cat",
        "basic_edit.json:key 1082",
    )


def test_flow_grpo_jsonl(tmp_path):
    loaded = load_records(fx.flow_grpo(tmp_path))
    assert loaded.presets == {"train_metadata.jsonl": "flow_grpo"}
    r = loaded.records[2]
    assert (r.source, r.instruction, r.task, r.id) == (
        "images/2.png",
        "remove one cat",
        "counting",
        "train_metadata.jsonl:3",
    )
    assert r.metadata["include"] == [{"class": "cat", "count": 2}] and r.metadata["t2i_prompt"]


def test_native_layout_and_explicit_overrides(tmp_path):
    loaded = load_records(fx.native(tmp_path))
    assert loaded.presets == {"edits.jsonl": "fastgrpo"} and len(loaded.records) == 4
    assert loaded.records[1].mask == "mask/1.png" and loaded.records[1].task == "add"
    # A custom layout: explicit columns on top of a preset; an empty name drops a field.
    rows = [{"img": "img/0.png", "edit": "make it pop", "m": "mask/0.png"}]
    path = fx.write_jsonl(tmp_path / "custom.jsonl", rows)
    custom = load_records(path, preset="fastgrpo", columns={"source": "img", "instruction": "edit", "mask": "m"})
    assert custom.records[0].source == "img/0.png" and custom.records[0].mask == "mask/0.png"
    dropped = load_records(path, columns={"source": "img", "instruction": "edit", "mask": ""})
    assert dropped.records[0].mask is None


def test_bad_rows_are_counted_with_their_origin(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"id": "good", "source": "a.png", "instruction": "edit"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": "no-instr", "source": "a.png"}),
        json.dumps({"id": "blank", "source": "a.png", "instruction": "  \t"}),
        json.dumps({"id": "no-image", "instruction": "edit"}),
        json.dumps({"id": "weird", "source": 7, "instruction": "edit"}),
        json.dumps({"id": "listy", "source": "a.png", "instruction": ["a", "b"]}),
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
    loaded = load_records(path, preset="fastgrpo")
    assert [r.id for r in loaded.records] == ["good"]
    got = [(p.record, p.origin, p.reason) for p in loaded.problems]
    assert got == [
        ("mixed.jsonl:2", "mixed.jsonl:line 2", "bad_row"),
        ("mixed.jsonl:3", "mixed.jsonl:line 3", "bad_row"),
        ("no-instr", "mixed.jsonl:line 4", "missing_instruction"),
        ("blank", "mixed.jsonl:line 5", "missing_instruction"),
        ("no-image", "mixed.jsonl:line 6", "missing_image"),
        ("weird", "mixed.jsonl:line 7", "bad_row"),
        ("listy", "mixed.jsonl:line 8", "bad_row"),
    ]
    assert loaded.total == 8


def test_detection_and_lookup_errors_say_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="no preset matches the columns"):
        detect_preset(["foo", "bar"])
    with pytest.raises(ValueError, match="unknown data preset 'nope'"):
        get_preset("nope")
    assert get_preset("GEdit-Bench") is PRESETS["gedit_bench"]
    with pytest.raises(ValueError, match="unknown record field"):
        PRESETS["fastgrpo"].override({"sauce": "x"})
    with pytest.raises(ValueError, match="does not exist"):
        find_data_files(tmp_path / "missing.jsonl")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a data file"):
        find_data_files(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="holds no"):
        find_data_files(tmp_path)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        load_records(tmp_path / "broken.parquet")


def test_folder_reads_every_data_file_with_its_own_layout(tmp_path):
    fx.flow_grpo(tmp_path)
    fx.emu_edit(tmp_path).rename(tmp_path / "emu.parquet")  # a name without a split: read with the train split
    (tmp_path / ".cache").mkdir()
    fx.write_jsonl(tmp_path / ".cache" / "ignored.jsonl", [{"prompt": "x", "image": "y"}])
    loaded = load_records(tmp_path)
    assert loaded.presets == {"emu.parquet": "emu_edit", "train_metadata.jsonl": "flow_grpo"}
    assert len(loaded.records) == 6
