"""Data as people download it: folders with side files, ImgEdit's training and multi-turn parquet, duplicate ids."""

from __future__ import annotations

import logging

import edit_fixtures as fx
import pytest

from fastgrpo.data.buckets import ResolutionBuckets
from fastgrpo.data.check import check_dataset, format_report
from fastgrpo.data.dataset import EditDataset
from fastgrpo.data.loaders import load_records
from fastgrpo.train.cli import main

LOADERS = "fastgrpo.data.loaders"


@pytest.mark.parametrize("preset", ["auto", "flow_grpo"])
def test_counting_edit_reads_its_splits_and_skips_the_side_files(tmp_path, caplog, preset):
    fx.counting_edit(tmp_path)
    with caplog.at_level(logging.INFO, logger=LOADERS):
        loaded = load_records(tmp_path, preset=preset)
    # the train split only (load_dataset's file-name rules): the test split is not trained on
    assert loaded.presets == {"train_metadata.jsonl": "flow_grpo"}
    assert len(loaded.records) == 4 and not loaded.problems  # output.jsonl's rows are not read twice
    assert len({r.instruction + r.source for r in loaded.records}) == 4
    assert set(loaded.skipped) == {"metadata.jsonl", "output.jsonl", "test_metadata.jsonl"}
    assert loaded.skipped["test_metadata.jsonl"].startswith("it holds the test split, not train")
    assert loaded.skipped["output.jsonl"].startswith("its rows fit the flow_grpo layout, but it stands beside the")
    assert "Flow-GRPO split files train_metadata.jsonl, which" in loaded.skipped["output.jsonl"]
    lines = [r.getMessage() for r in caplog.records if r.name == LOADERS]
    assert len(lines) == 3 and all("skipped" in line for line in lines)
    meta = next(line for line in lines if line.startswith("metadata.jsonl"))
    assert "'include'" in meta and "'t2i_prompt'" in meta and "'tag'" in meta  # names the file and its columns
    if preset == "flow_grpo":
        assert "lack the flow_grpo layout's source ['image', 'ctrl_image']" in meta
    else:
        assert "match no editing layout" in meta
    test = load_records(tmp_path, preset=preset, split="test")
    assert test.presets == {"test_metadata.jsonl": "flow_grpo"} and len(test.records) == 2
    with pytest.raises(ValueError, match=r"has no split 'dev'; its splits are test, train"):
        load_records(tmp_path, preset=preset, split="dev")
    # a side file given by itself is read
    assert len(load_records(tmp_path / "output.jsonl").records) == 6


@pytest.mark.parametrize("preset", ["auto", "fastgrpo"])
def test_a_file_that_fits_no_layout_is_skipped_and_one_that_fits_is_read(tmp_path, caplog, preset):
    fx.native(tmp_path, count=2)
    fx.write_jsonl(tmp_path / "notes.jsonl", [{"note": "made with script v2", "author": "me"}])
    with caplog.at_level(logging.INFO, logger=LOADERS):
        loaded = load_records(tmp_path, preset=preset)
    assert loaded.presets == {"edits.jsonl": "fastgrpo"} and len(loaded.records) == 2 and not loaded.problems
    assert list(loaded.skipped) == ["notes.jsonl"] and "['author', 'note']" in loaded.skipped["notes.jsonl"]
    assert "notes.jsonl: skipped, its columns ['author', 'note']" in caplog.text


def test_an_error_only_when_no_file_fits(tmp_path):
    fx.write_jsonl(tmp_path / "a.jsonl", [{"note": "x"}])
    fx.write_jsonl(tmp_path / "b.jsonl", [{"prompt": "y", "caption": "z"}])
    (tmp_path / "c.jsonl").write_text("")
    with pytest.raises(ValueError) as info:
        load_records(tmp_path)
    message = str(info.value)
    assert message.startswith(f"no data file at {tmp_path} can be read: a.jsonl: its columns ['note'] match no")
    assert "b.jsonl: its columns ['caption', 'prompt']" in message and "c.jsonl: it holds no rows" in message
    assert "pass --preset and, if needed, an explicit column mapping" in message
    with pytest.raises(ValueError, match=r"b\.jsonl: its columns \['caption', 'prompt'\] lack the magicbrush"):
        load_records(tmp_path / "b.jsonl", preset="magicbrush")


def test_imgedit_training_parquet(tmp_path):
    fx.imgedit_train(tmp_path)
    loaded = load_records(tmp_path / "Parquet", root=tmp_path)  # data.root: where the archives were extracted
    assert loaded.presets == {"remove_part5.parquet": "imgedit_train"} and not loaded.problems
    r = loaded.records[0]
    folder = "results_remove_laion_part5/00094_00030_000304740"
    assert (r.source, r.references, r.target) == (f"{folder}/original.png", (), f"{folder}/result.png")
    assert r.task == "remove" and r.id == "remove_part5.parquet:0" and r.instruction.startswith("Remove the group")
    dataset = EditDataset.from_path(tmp_path / "Parquet", ResolutionBuckets.square(16), root=tmp_path)
    assert len(dataset) == 3 and dataset[2].source.shape == (16, 16, 3)


def test_imgedit_multiturn_parquet_gives_one_record_per_turn(tmp_path):
    fx.imgedit_multiturn(tmp_path)
    loaded = load_records(tmp_path / "Parquet", root=tmp_path)
    assert loaded.presets == {"version_backtracking_part0.parquet": "imgedit_multiturn"} and not loaded.problems
    name = "version_backtracking_part0.parquet"
    assert [r.id for r in loaded.records] == [f"{name}:{row}-{turn}" for row in (0, 1) for turn in (1, 2, 3)]
    second = loaded.records[1]
    folder = "results_version_backtracking_part0/00031_00020_000209650"
    assert (second.source, second.target) == (f"{folder}/origin_1.png", f"{folder}/result_1.png")
    assert second.instruction == "replace the vest with a jacket" and second.origin == f"{name}:row 0 turn 2"
    assert second.task == "version_backtracking" and second.metadata == {"turn": 2}
    dataset = EditDataset.from_path(tmp_path / "Parquet", ResolutionBuckets.square(16), root=tmp_path)
    assert len(dataset) == 6


def test_a_turn_without_its_own_input_edits_the_previous_output(tmp_path):
    rows = [
        {
            "dialogue": "d7",
            "data": [
                {"input_images": ["t/in.png"], "output_images": ["t/out1.png"], "prompt": "add a hat"},
                {"input_images": [], "output_images": ["t/out2.png"], "prompt": "make the hat red"},
                {"output_images": ["t/out3.png"], "prompt": ""},
            ],
        },
        {"dialogue": "d8", "data": []},
    ]
    path = fx.write_jsonl(tmp_path / "turns.jsonl", rows)
    loaded = load_records(path, preset="imgedit_multiturn", columns={"id": "dialogue"})
    assert [(r.id, r.source) for r in loaded.records] == [("d7-1", "t/in.png"), ("d7-2", "t/out1.png")]
    assert [(p.record, p.origin, p.reason) for p in loaded.problems] == [
        ("d7-3", "turns.jsonl:line 1 turn 3", "missing_instruction"),
        ("turns.jsonl:2", "turns.jsonl:line 2", "bad_row"),
    ]
    assert loaded.total == 4  # each turn counts as a row


def test_data_check_reports_duplicate_ids_and_skipped_files(tmp_path, capsys):
    first = fx.native(tmp_path, count=3)
    (tmp_path / "more.jsonl").write_text("".join(first.read_text().splitlines(keepends=True)[:2]))  # n0, n1 again
    fx.write_jsonl(tmp_path / "readme.jsonl", [{"about": "two copies"}])
    report = check_dataset(tmp_path)
    assert report.passed and report.usable == 5
    assert (report.duplicate_ids, report.duplicate_examples) == (2, ["n0", "n1"])
    assert report.skipped == {"readme.jsonl": "its columns ['about'] match no editing layout"}
    assert main(["data", "check", str(tmp_path)]) == 0  # not an error
    out = capsys.readouterr().out
    assert "  duplicate ids 2 records reuse an earlier record's id (first: 'n0', 'n1')" in out
    assert "  skipped      readme.jsonl: its columns ['about'] match no editing layout" in out
    assert "duplicate ids" not in format_report(check_dataset(first))


def test_a_parquet_folder_with_hub_split_files_reads_one_split(tmp_path, caplog):
    """MagicBrush as the hub stores it: ``data/train-0000k-of-0000n.parquet`` and ``data/dev-...`` (train 8807 rows,
    dev 528, per its dataset card)."""
    import pyarrow.parquet as pq

    train_file = fx.magicbrush(tmp_path / "mb")  # mb/data/train-00000-of-00001.parquet, 2 rows
    pq.write_table(pq.read_table(train_file).slice(0, 1), train_file.parent / "dev-00000-of-00001.parquet")
    with caplog.at_level(logging.INFO, logger=LOADERS):
        train = load_records(tmp_path / "mb")
    assert len(train.records) == 2 and list(train.presets) == ["data/train-00000-of-00001.parquet"]
    assert "data/dev-00000-of-00001.parquet: skipped, it holds the dev split, not train" in caplog.text
    dev = load_records(tmp_path / "mb", split="dev")
    assert len(dev.records) == 1 and list(dev.skipped) == ["data/train-00000-of-00001.parquet"]
    # a folder without split names is one split: every file is read, and split=train names it
    plain = tmp_path / "plain"
    plain.mkdir()
    for k in range(2):
        pq.write_table(pq.read_table(train_file), plain / f"part-{k}.parquet")
    assert len(load_records(plain).records) == len(load_records(plain, split="train").records) == 4
    with pytest.raises(ValueError, match=r"has no split 'dev'; its splits are train"):
        load_records(plain, split="dev")
