"""Hugging Face data sets: save_to_disk folders, .arrow files, split choice, hf:// ids from a local cache only.

Fixtures are written with the ``datasets`` library itself, in the layouts of the public releases:

- GEdit-Bench (``stepfun-ai/GEdit-Bench``): published as Arrow files (the hub page says "Formats: arrow"), one
  ``train`` split of 606 rows. Its card lists no features (the README holds only the licence), so the column names
  here are the ones the ``gedit_bench`` preset reads, not confirmed from the card.
- MagicBrush (``osunlp/MagicBrush``): the card's ``dataset_info`` lists ``img_id`` (string), ``turn_index``
  (int32), ``source_img``, ``mask_img`` (image), ``instruction`` (string), ``target_img`` (image) and the splits
  ``train`` (8807 rows) and ``dev`` (528); the hub stores them as ``data/<split>-NNNNN-of-NNNNN-*.parquet``.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import socket
import tempfile
import tracemalloc
from pathlib import Path

import datasets
import edit_fixtures as fx
import huggingface_hub.constants as hub_constants
import numpy as np
import pyarrow as pa
import pytest

from fastgrpo.data import hf_datasets
from fastgrpo.data.badinput import BadInputPolicy
from fastgrpo.data.buckets import ResolutionBuckets
from fastgrpo.data.check import check_dataset
from fastgrpo.data.dataset import EditDataset
from fastgrpo.data.formats import detect_preset
from fastgrpo.data.hf_datasets import hf_rows, is_hf_dataset, open_hf_split
from fastgrpo.data.images import DecodeConfig, decode_image, decode_mask
from fastgrpo.data.lazy_images import ArrowImage
from fastgrpo.data.loaders import load_records
from fastgrpo.data.records import BadInputError
from fastgrpo.train.cli import main
from fastgrpo.train.conditions import DatasetSource
from fastgrpo.train.config.sections import DataConfig

GEDIT_FEATURES = datasets.Features(
    {
        "task_type": datasets.Value("string"),
        "key": datasets.Value("string"),
        "instruction": datasets.Value("string"),
        "instruction_language": datasets.Value("string"),
        "input_image": datasets.Image(),
        "input_image_raw": datasets.Image(),
        "Intersection_exist": datasets.Value("bool"),
    }
)
MAGICBRUSH_FEATURES = datasets.Features(
    {
        "img_id": datasets.Value("string"),
        "turn_index": datasets.Value("int32"),
        "source_img": datasets.Image(),
        "mask_img": datasets.Image(),
        "instruction": datasets.Value("string"),
        "target_img": datasets.Image(),
    }
)
SHA = "0123456789abcdef0123456789abcdef01234567"


def struct(data: bytes, name: str | None = None) -> dict:
    return {"bytes": data, "path": name}


def gedit(count: int = 3, source: dict[int, bytes] | None = None):
    """GEdit-Bench rows: ``input_image`` 16x16, ``input_image_raw`` 40x40; ``source`` replaces some inputs."""
    source = source or {}
    langs = ["en", "cn"]
    return datasets.Dataset.from_dict(
        {
            "task_type": ["color_alter"] * count,
            "key": [f"k{i}" for i in range(count)],
            "instruction": ["把杯子变成红色" if i % 2 else "make the cup red" for i in range(count)],
            "instruction_language": [langs[i % 2] for i in range(count)],
            "input_image": [struct(source.get(i, fx.png(16, 16, seed=i))) for i in range(count)],
            "input_image_raw": [struct(fx.png(40, 40, seed=100 + i)) for i in range(count)],
            "Intersection_exist": [True] * count,
        },
        features=GEDIT_FEATURES,
    )


def magicbrush(split: str, count: int):
    offset = 0 if split == "train" else 100
    return datasets.Dataset.from_dict(
        {
            "img_id": [str(327726 + offset + i // 2) for i in range(count)],
            "turn_index": [1 + i % 2 for i in range(count)],
            "source_img": [struct(fx.png(24, 16, seed=offset + i), "in.png") for i in range(count)],
            "mask_img": [struct(fx.mask_png(24, 16), "mask.png") for _ in range(count)],
            "instruction": [f"{split}: put a hat on the dog, turn {1 + i % 2}" for i in range(count)],
            "target_img": [struct(fx.png(24, 16, seed=50 + offset + i), "out.png") for i in range(count)],
        },
        features=MAGICBRUSH_FEATURES,
    )


def magicbrush_dict() -> datasets.DatasetDict:
    return datasets.DatasetDict({"train": magicbrush("train", 4), "dev": magicbrush("dev", 2)})


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to resolve or reach a host is recorded and refused."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Empty Hugging Face caches under a temporary HF_HOME (the libraries read the variables at import)."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def test_save_to_disk_dataset_dict_reads_rows_not_sidecars(tmp_path, monkeypatch):
    folder = tmp_path / "downloads" / "gedit"
    datasets.DatasetDict({"train": gedit()}).save_to_disk(str(folder))
    assert {p.name for p in folder.rglob("*.json")} == {"dataset_dict.json", "state.json", "dataset_info.json"}
    loaded = load_records(folder)
    assert loaded.presets == {"train/data-00000-of-00001.arrow": "gedit_bench"} and not loaded.problems
    assert loaded.total == 3 and [f.name for f in loaded.files] == ["data-00000-of-00001.arrow"]
    first = loaded.records[0]
    assert isinstance(first.source, ArrowImage) and first.source.column == "input_image"  # not input_image_raw
    assert first.source.read() == fx.png(16, 16, seed=0)
    assert (first.id, first.task, first.origin) == ("k0", "color_alter", "train/data-00000-of-00001.arrow:row 0")
    assert dict(first.metadata) == {"instruction_language": "en", "Intersection_exist": True}
    assert loaded.root == folder
    english = load_records(folder, where={"instruction_language": "en"})
    assert [r.id for r in english.records] == ["k0", "k2"]
    monkeypatch.chdir(tmp_path)
    assert load_records("downloads/gedit").presets == loaded.presets  # a relative path names the files the same
    parent = load_records(tmp_path / "downloads")  # the folder above: its Arrow files, still not the sidecars
    assert parent.presets == {"gedit/train/data-00000-of-00001.arrow": "gedit_bench"} and parent.total == 3


def test_single_dataset_folder_numbers_rows_per_arrow_file(tmp_path):
    folder = tmp_path / "gedit_train"
    gedit(4).save_to_disk(str(folder), num_shards=2)
    loaded = load_records(folder)
    assert list(loaded.presets) == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    assert [r.id for r in loaded.records] == ["k0", "k1", "k2", "k3"]
    assert loaded.records[2].origin == "data-00001-of-00002.arrow:row 0"
    with pytest.raises(ValueError, match="holds one unnamed split, not 'dev'"):
        load_records(folder, split="dev")


def arrow_copy(dataset: datasets.Dataset, target: Path) -> Path:
    """``dataset`` as one Arrow file (an Arrow stream, as ``save_to_disk`` writes it) at ``target``."""
    with tempfile.TemporaryDirectory() as scratch:
        dataset.save_to_disk(scratch)
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(Path(scratch) / "data-00000-of-00001.arrow", target))


def test_folder_of_arrow_files_named_by_split(tmp_path):
    saved = tmp_path / "saved"
    magicbrush_dict().save_to_disk(str(saved), num_shards={"train": 2, "dev": 1})
    repo = tmp_path / "magicbrush"
    (repo / "data").mkdir(parents=True)
    for shard in sorted((saved / "train").glob("data-*.arrow")):  # data-00000-of-00002 -> train-00000-of-00002
        shutil.copyfile(shard, repo / "data" / f"train-{shard.stem[5:]}.arrow")
    shutil.copyfile(saved / "dev" / "data-00000-of-00001.arrow", repo / "data" / "dev-00000-of-00001.arrow")
    (repo / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n")
    assert is_hf_dataset(repo)
    train = load_records(repo)
    assert list(train.presets) == ["data/train-00000-of-00002.arrow", "data/train-00001-of-00002.arrow"]
    assert set(train.presets.values()) == {"magicbrush"} and len(train.records) == 4
    assert train.records[0].id == "327726-1" and train.records[0].mask.read() == fx.mask_png(24, 16)
    dev = load_records(repo, split="dev")
    assert [r.id for r in dev.records] == ["327826-1", "327826-2"] and dev.records[0].instruction.startswith("dev:")


def test_single_arrow_file_and_leftover_cache_files(tmp_path):
    file = arrow_copy(gedit(), tmp_path / "flat" / "gedit.arrow")
    arrow_copy(gedit(5), tmp_path / "flat" / "cache-0a1b2c3d4e5f6a7b.arrow")  # a map() result: not data
    one = load_records(file)
    assert one.presets == {"gedit.arrow": "gedit_bench"} and one.total == 3 and one.root == file.parent
    assert one.records[1].origin == "gedit.arrow:row 1"
    folder = load_records(tmp_path / "flat")
    assert folder.presets == {"gedit.arrow": "gedit_bench"} and folder.total == 3
    with pytest.raises(ValueError, match="single Arrow file"):
        load_records(file, split="train")


def test_split_choice_and_the_unknown_split_error(tmp_path):
    folder = tmp_path / "mb"
    magicbrush_dict().save_to_disk(str(folder))
    assert {r.origin.split("/")[0] for r in load_records(folder).records} == {"train"}
    assert len(load_records(folder, split="dev").records) == 2
    with pytest.raises(ValueError, match=r"has no split 'test'; its splits are train, dev"):
        load_records(folder, split="test")
    no_train = tmp_path / "no_train"
    datasets.DatasetDict({"dev": magicbrush("dev", 2), "test": magicbrush("dev", 1)}).save_to_disk(str(no_train))
    with pytest.raises(ValueError, match=r"has the splits dev, test and none is called 'train'"):
        load_records(no_train)
    only_dev = tmp_path / "only_dev"
    datasets.DatasetDict({"dev": magicbrush("dev", 2)}).save_to_disk(str(only_dev))
    assert len(load_records(only_dev).records) == 2


def test_only_the_needed_columns_are_converted_and_datasets_never_decodes(tmp_path, monkeypatch):
    folder = tmp_path / "gedit"
    datasets.DatasetDict({"train": gedit()}).save_to_disk(str(folder))

    def refuse(self, value, token_per_repo_id=None):
        raise AssertionError("datasets decoded an image")

    monkeypatch.setattr(datasets.Image, "decode_example", refuse)
    opened = open_hf_split(folder)
    layout = detect_preset(opened.column_names)
    keys = {frozenset(row) for _, _, row in hf_rows(opened, layout, opened.column_names, [])}
    assert layout.name == "gedit_bench"
    assert keys == {
        frozenset({"key", "task_type", "instruction", "instruction_language", "input_image", "Intersection_exist"})
    }
    assert len(load_records(folder).records) == 3  # the loader's path, with decoding refused


def test_a_corrupt_image_cell_is_a_counted_bad_record(tmp_path):
    good = fx.png(64, 64, seed=2)
    folder = tmp_path / "gedit"
    broken = {1: good[: len(good) // 2], 2: b"this is not an image at all" * 4}
    datasets.DatasetDict({"train": gedit(4, source=broken)}).save_to_disk(str(folder))
    report = check_dataset(folder)
    assert (report.rows, report.usable) == (4, 2)
    got = sorted((p.record, p.origin, p.reason) for p in report.problems)
    assert got == [
        ("k1", "train/data-00000-of-00001.arrow:row 1", "truncated_image"),
        ("k2", "train/data-00000-of-00001.arrow:row 2", "corrupt_image"),
    ]
    # loading reads no image bytes, so the damage shows where the images are read: the header scan finds the
    # garbage, the truncated file (its header intact) fails when decoded and is replaced like a damaged file
    loaded = load_records(folder)
    assert len(loaded.records) == 4 and not loaded.problems
    dataset = EditDataset(loaded.records, ResolutionBuckets.square(16), policy=BadInputPolicy(0.5))
    assert [(p.record, p.reason, p.field) for p in dataset.problems] == [("k2", "corrupt_image", "source")]
    assert [dataset.record(i).id for i in range(len(dataset))] == ["k0", "k1", "k3"]
    sample = dataset[1]
    assert sample.record.id == "k3" and sample.replaced is not None and sample.replaced.reason == "truncated_image"
    assert "Arrow column 'input_image'" in sample.replaced.message


def test_records_of_an_arrow_data_set_refer_to_its_cells_and_decode_like_the_bytes(tmp_path, monkeypatch):
    folder = tmp_path / "mb"
    magicbrush_dict().save_to_disk(str(folder))
    monkeypatch.setattr(hf_datasets, "BATCH_ROWS", 3)  # rows 0-2 and 3: a second batch
    loaded = load_records(folder)
    refs = [ref for r in loaded.records for ref in r.images().values()]
    assert len(refs) == 12 and all(isinstance(ref, ArrowImage) for ref in refs)  # source, mask, target: no bytes
    first = loaded.records[0]
    assert (first.source.column, first.mask.column, first.target.column) == ("source_img", "mask_img", "target_img")
    assert first.source_id == first.id == "327726-1" and first.group_key.source_id == "327726-1"
    assert repr(first.source) == "ArrowImage(column='source_img', row=0)"
    buckets = ResolutionBuckets.square(16)  # 24x16 images: centre-cropped and resized, masks too
    lazy = EditDataset(loaded.records, buckets, root=loaded.root, load_targets=True)
    config, out = DecodeConfig(), buckets[0]
    for i in range(4):
        sample = lazy[i]
        source, header, _ = decode_image(fx.png(24, 16, seed=i), None, config, out=out)
        target = decode_image(fx.png(24, 16, seed=50 + i), None, config, out=out)[0]
        mask = decode_mask(fx.mask_png(24, 16), None, config, source=header, out=out)
        assert sample.replaced is None and sample.original_size == (24, 16)
        assert np.array_equal(sample.source, source) and np.array_equal(sample.target, target)
        assert np.array_equal(sample.mask, mask) and mask.any() and not mask.all()


def with_cells(path: Path, cells: list[object]) -> Path:
    """An Arrow file of GEdit-Bench rows whose ``input_image`` cells are ``cells``, as written (no embedding)."""
    count = len(cells)
    rows = gedit(count).to_dict()
    rows["input_image"] = cells
    table = datasets.Dataset.from_dict(rows, features=GEDIT_FEATURES).data.table
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def test_an_image_cell_gives_a_reference_a_path_or_no_image(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(fx.png(16, 16, seed=7))
    cells = [struct(fx.png(16, 16, seed=0)), {"bytes": None, "path": "images/a.png"}, None, struct(b"")]
    loaded = load_records(with_cells(tmp_path / "g.arrow", cells))
    by_id = {r.id: r.source for r in loaded.records}
    assert isinstance(by_id["k0"], ArrowImage) and by_id["k1"] == "images/a.png"  # a path alone is a path
    assert [(p.record, p.reason) for p in loaded.problems] == [("k2", "missing_image")]  # neither: no image
    policy = BadInputPolicy(0.5)
    dataset = EditDataset(
        loaded.records, ResolutionBuckets.square(16), root=loaded.root, skipped=loaded.problems, policy=policy
    )
    assert [(p.record, p.reason) for p in dataset.problems] == [("k2", "missing_image"), ("k3", "empty_file")]
    assert np.array_equal(dataset[1].source, decode_image(fx.png(16, 16, seed=7), None, DecodeConfig())[0])
    # read at decode time by the same rules (a reference made by hand to a cell of any kind)
    table = datasets.Dataset.from_file(str(tmp_path / "g.arrow")).data
    assert [ArrowImage(table, row, "input_image").read() for row in range(4)] == [
        fx.png(16, 16, seed=0),
        "images/a.png",
        None,
        b"",
    ]
    with pytest.raises(BadInputError, match=r"source image \(Arrow column 'input_image'\) is empty"):
        decode_image(ArrowImage(table, 2, "input_image"), tmp_path, DecodeConfig())


def test_records_pickle_without_their_image_bytes(tmp_path):
    folder = tmp_path / "gedit"
    big = {i: fx.png(128, 128, seed=i) for i in range(8)}  # noise: PNG keeps 3 bytes a pixel
    datasets.DatasetDict({"train": gedit(8, source=big)}).save_to_disk(str(folder))
    records = load_records(folder).records
    data = pickle.dumps(records)
    assert len(data) < sum(map(len, big.values())) // 20  # file path and row numbers, not the images
    back = pickle.loads(data)
    assert back[3].id == "k3" and back[3].source.row == 3 and back[3].source.table is back[0].source.table
    assert isinstance(back[0].source.table, datasets.table.MemoryMappedTable)
    assert back[0].source.table.path == records[0].source.table.path
    config = DecodeConfig()
    for i in (0, 7):
        assert np.array_equal(decode_image(back[i].source, None, config)[0], decode_image(big[i], None, config)[0])
    one = pickle.loads(pickle.dumps(records[5]))  # a single record, as a DataLoader worker might get it
    assert one.source.read() == big[5] and dict(one.metadata) == dict(records[5].metadata)
    dataset = EditDataset(records, ResolutionBuckets.square(64))  # a DataLoader worker started with spawn
    copy = pickle.loads(pickle.dumps(dataset))
    assert np.array_equal(copy[2].source, dataset[2].source)


def test_loading_reads_no_image_bytes(tmp_path, monkeypatch):
    folder = tmp_path / "gedit"
    big = {i: fx.png(256, 256, seed=i) for i in range(16)}  # noise: 3 MB of PNG files, one batch of rows
    datasets.DatasetDict({"train": gedit(16, source=big)}).save_to_disk(str(folder))
    load_records(folder)  # imports and caches out of the measurement
    tracemalloc.start()
    try:
        loaded = load_records(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(loaded.records) == 16 and peak < sum(map(len, big.values())) // 10  # no image passed through memory

    def refuse(self):
        raise AssertionError(f"{self!r} was read")

    monkeypatch.setattr(ArrowImage, "read", refuse)
    assert len(load_records(folder).records) == 16
    with pytest.raises(AssertionError, match=r"ArrowImage\(column='input_image', row=0\) was read"):
        EditDataset(load_records(folder).records, ResolutionBuckets.square(64))  # the scan is the first to read


def test_a_part_with_an_indices_mapping_is_refused(tmp_path):
    folder = tmp_path / "gedit"
    datasets.DatasetDict({"train": gedit()}).save_to_disk(str(folder))
    opened = open_hf_split(folder)
    label, part = opened.parts[0]
    shuffled = dataclasses.replace(opened, parts=((label, part.select([2, 0, 1])),))
    layout = detect_preset(opened.column_names)
    with pytest.raises(ValueError, match=r"is a selection of rows .* write it out with save_to_disk"):
        list(hf_rows(shuffled, layout, opened.column_names, []))


def test_data_check_on_a_save_to_disk_folder(tmp_path, capsys):
    folder = tmp_path / "mb"
    magicbrush_dict().save_to_disk(str(folder))
    assert main(["data", "check", str(folder)]) == 0
    out = capsys.readouterr().out
    assert ": OK" in out and "train/data-00000-of-00001.arrow [magicbrush]" in out and "4 usable, 0 bad" in out
    assert main(["data", "check", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rows"], report["usable"], report["with_mask"], report["with_target"]) == (4, 4, 4, 4)
    assert report["formats"] == {"PNG": 4} and report["presets"] == {"train/data-00000-of-00001.arrow": "magicbrush"}
    assert main(["data", "check", str(folder), "--split", "dev"]) == 0
    assert "dev/data-00000-of-00001.arrow [magicbrush]" in capsys.readouterr().out
    assert main(["data", "check", str(folder), "--split", "test"]) == 2
    assert "its splits are train, dev" in capsys.readouterr().err


def build_datasets_cache(tmp_path: Path, name: str, dataset: datasets.DatasetDict) -> Path:
    """The Arrow cache entry an earlier ``load_dataset(name)`` leaves, written by the library's own builder."""
    repo = tmp_path / "source" / name.split("/")[1]
    for split, part in dataset.items():
        part.to_parquet(str(repo / "data" / f"{split}-00000-of-00001.parquet"))
    builder = datasets.load_dataset_builder(str(repo))
    owner = name.split("/")[0]
    entry = Path(datasets.config.HF_DATASETS_CACHE) / f"{owner}___{builder.dataset_name}" / "default" / "0.0.0" / SHA
    builder.download_and_prepare(output_dir=str(entry))
    shutil.rmtree(repo)  # only the cache is left
    return entry


def test_hf_id_from_the_datasets_cache_without_network(tmp_path, hf_cache, no_network):
    build_datasets_cache(tmp_path, "stepfun-ai/GEdit-Bench", datasets.DatasetDict({"train": gedit()}))
    before = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    loaded = load_records("hf://stepfun-ai/GEdit-Bench")
    assert loaded.presets == {"hf://stepfun-ai/GEdit-Bench[train]": "gedit_bench"} and loaded.total == 3
    assert loaded.records[2].origin == "hf://stepfun-ai/GEdit-Bench[train]:row 2"
    assert loaded.records[0].source.read() == fx.png(16, 16, seed=0)
    assert no_network == [] and before == (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)


def write_hub_snapshot(name: str, revision: str = SHA) -> Path:
    """The hub download cache after ``hf download --repo-type dataset name``: refs/main -> snapshots/<commit>/."""
    repo = Path(hub_constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def test_hf_id_from_the_hub_download_cache(hf_cache, no_network):
    snapshot = write_hub_snapshot("stepfun-ai/GEdit-Bench")
    datasets.DatasetDict({"train": gedit()}).save_to_disk(str(snapshot))
    loaded = load_records("hf://stepfun-ai/GEdit-Bench")
    assert loaded.presets == {"hf://stepfun-ai/GEdit-Bench/train/data-00000-of-00001.arrow": "gedit_bench"}
    assert loaded.total == 3 and loaded.root == snapshot
    pinned = load_records(f"hf://stepfun-ai/GEdit-Bench@{SHA}")
    assert [r.id for r in pinned.records] == ["k0", "k1", "k2"]
    # a parquet snapshot, as MagicBrush is published, goes through load_dataset's one-time conversion
    mb = write_hub_snapshot("osunlp/MagicBrush")
    for split, part in magicbrush_dict().items():
        part.to_parquet(str(mb / "data" / f"{split}-00000-of-00001-0a1b2c3d.parquet"))
    dev = load_records("hf://osunlp/MagicBrush", split="dev")
    assert dev.presets == {"hf://osunlp/MagicBrush[dev]": "magicbrush"} and [r.id for r in dev.records] == [
        "327826-1",
        "327826-2",
    ]
    assert no_network == []


def test_a_hub_id_not_in_the_cache_names_the_download_command(hf_cache, no_network):
    with pytest.raises(ValueError) as info:
        load_records("hf://nobody/nothing")
    message = str(info.value)
    assert "huggingface-cli download --repo-type dataset nobody/nothing" in message
    assert str(hf_cache / "datasets") in message and str(hf_cache / "hub") in message and "HF_HOME" in message
    with pytest.raises(ValueError, match="--revision v9"):
        load_records("hf://nobody/nothing@v9")
    with pytest.raises(ValueError, match="not a hub data set id"):
        load_records("hf://just-a-name")
    assert no_network == []


def test_mixed_folders_and_splits_of_other_formats_are_refused(tmp_path):
    arrow_copy(gedit(), tmp_path / "mixed" / "a.arrow")
    fx.native(tmp_path / "mixed")
    with pytest.raises(ValueError, match=r"holds both \.arrow files"):
        load_records(tmp_path / "mixed")
    native = fx.native(tmp_path / "native")
    one_file = native if native.is_file() else next(native.glob("*.jsonl"))
    with pytest.raises(ValueError, match="is one file, read whole"):
        load_records(one_file, split="train")
    (tmp_path / "bad.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(ValueError, match="not an Arrow stream file"):
        load_records(tmp_path / "bad.arrow")


def test_data_split_reaches_the_loader(tmp_path):
    folder = tmp_path / "mb"
    magicbrush_dict().save_to_disk(str(folder))
    cfg = DataConfig(source=str(folder), split="dev", resolutions=("24x16",), multiple=8, held_out=0)
    source = DatasetSource(cfg, seed=0, conditions_per_step=1)
    assert [source.dataset.record(i).id for i in range(len(source.dataset))] == ["327826-1", "327826-2"]
    with pytest.raises(ValueError, match=r"data\.split applies to a data set"):
        DataConfig(split="train")
    with pytest.raises(ValueError, match=r"data\.split must be null or a non-empty string"):
        DataConfig(source=str(folder), split=" ")
