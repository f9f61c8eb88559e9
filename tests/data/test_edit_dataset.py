"""The dataset end to end: bucketed samples, batches, every bad input skipped and counted, the threshold stop."""

from __future__ import annotations

import logging

import edit_fixtures as fx
import numpy as np
import pytest
from torch.utils.data import DataLoader

import fastgrpo.data.scan as scan_module
from fastgrpo.data.badinput import BadInputPolicy, TooManyBadInputsError
from fastgrpo.data.buckets import Resolution, ResolutionBuckets
from fastgrpo.data.dataset import EditDataset
from fastgrpo.data.loaders import load_records
from fastgrpo.data.sampler import GroupBatchSampler
from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.data.synthetic_records import SyntheticRecords

BUCKETS = ResolutionBuckets(((16, 16), (24, 16)), multiple=8)
LENIENT = BadInputPolicy(max_bad_fraction=1.0)


def test_samples_are_bucketed_and_batches_keep_groups_together(tmp_path):
    dataset = EditDataset.from_path(fx.native(tmp_path, count=8), BUCKETS)
    assert len(dataset) == 8 and dataset.bucket_ids.tolist() == [0, 1] * 4
    assert dataset.bucket_counts() == {Resolution(16, 16): 4, Resolution(24, 16): 4}
    sample = dataset[1]
    assert sample.source.shape == (16, 24, 3) and sample.mask.shape == (16, 24) and sample.mask[:, :12].all()
    assert sample.original_size == (24, 16) and sample.replaced is None
    sampler = GroupBatchSampler(dataset.bucket_ids, group_size=3, groups_per_rank=2, seed=1)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=list, num_workers=2)  # worker processes
    batches = list(loader)
    assert len(batches) == 4
    for batch in batches:
        assert len(batch) == 6 and len({s.resolution for s in batch}) == 1
        w, h = batch[0].resolution
        assert all(s.source.shape == (h, w, 3) and s.source.dtype == np.uint8 for s in batch)
        assert all(s.mask is not None and s.mask.shape == (h, w) for s in batch)
        keys = [s.record.group_key for s in batch]
        assert keys[0] == keys[1] == keys[2] != keys[3] == keys[4] == keys[5]
        assert batch[0].record.instruction == keys[0].instruction
        assert batch[0].record.task in ("add", "remove") and batch[0].record.input_caption == "before"
        assert all(s.target is None and s.replaced is None for s in batch)


def test_g_copies_are_decoded_once(tmp_path, monkeypatch):
    dataset = EditDataset.from_path(fx.native(tmp_path, count=2), BUCKETS)
    calls = []
    original = dataset._decode
    monkeypatch.setattr(dataset, "_decode", lambda i: calls.append(i) or original(i))
    samples = dataset.__getitems__([0, 0, 0, 1, 1, 1])
    assert calls == [0, 1] and samples[0] is samples[2]


def test_every_bad_input_is_skipped_with_a_counted_warning(tmp_path, caplog):
    files = {name: data for name, (data, _) in fx.bad_images().items()}
    files["good.png"] = fx.png(16, 16)
    files["small_mask.png"] = fx.mask_png(8, 8)
    fx.write_files(tmp_path / "root", files)
    (tmp_path / "outside.png").write_bytes(fx.png())
    (tmp_path / "root" / "link_out.png").symlink_to(tmp_path / "outside.png")
    rows = [{"id": name, "source": name, "instruction": "edit"} for name in fx.bad_images()]
    rows += [
        {"id": "missing", "source": "nope.png", "instruction": "edit"},
        {"id": "escape", "source": "../outside.png", "instruction": "edit"},
        {"id": "absolute", "source": str(tmp_path / "root" / "good.png"), "instruction": "edit"},
        {"id": "symlink", "source": "link_out.png", "instruction": "edit"},
        {"id": "no-instruction", "source": "good.png", "instruction": ""},
        {"id": "bad-mask", "source": "good.png", "mask": "garbage.png", "instruction": "edit"},
        {"id": "small-mask", "source": "good.png", "mask": "small_mask.png", "instruction": "edit"},  # resized
        {"id": "good", "source": "good.png", "instruction": "edit"},
    ]
    path = fx.write_jsonl(tmp_path / "root" / "data.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="fastgrpo.data"):
        dataset = EditDataset.from_path(path, BUCKETS, policy=LENIENT, verify=True, workers=2)
    assert [dataset.record(i).id for i in range(len(dataset))] == ["small-mask", "good"]
    reasons = {p.record: p.reason for p in dataset.problems}
    expected = {name: reason for name, (_, reason) in fx.bad_images().items()}
    expected["no-instruction"] = "missing_instruction"
    expected.update(missing="missing_file", escape="outside_root", absolute="outside_root", symlink="outside_root")
    expected["bad-mask"] = "corrupt_image"  # a mask that does not decode is still a bad record
    assert reasons == expected
    assert next(p.field for p in dataset.problems if p.record == "bad-mask") == "mask"
    # Every skip is logged with the record, its origin, its reason and the running count.
    assert "skipped record 'bomb.png' (data.jsonl:line 5)" in caplog.text
    assert "[outside_root; bad input" in caplog.text and "of 16 records" in caplog.text
    # The default header-only scan lets truncated files through; they are caught when decoded (next test).
    header_only = EditDataset.from_path(path, BUCKETS, policy=LENIENT, workers=2)
    assert sorted(header_only.record(i).id for i in range(len(header_only))) == [
        "good",
        "small-mask",
        "truncated.jpg",
        "truncated.png",
    ]


def test_truncation_found_at_decode_time_replaces_the_group_within_its_bucket(tmp_path, caplog):
    path = fx.native(tmp_path, count=6)
    dataset = EditDataset.from_path(path, BUCKETS, policy=LENIENT)
    good = (tmp_path / "img" / "2.png").read_bytes()
    (tmp_path / "img" / "2.png").write_bytes(good[: len(good) // 2])  # damaged after the scan
    with caplog.at_level(logging.WARNING, logger="fastgrpo.data"):
        samples = dataset.__getitems__([2, 2, 0, 0])
    assert [s.record.id for s in samples] == ["n4", "n4", "n0", "n0"]  # the next record of the same bucket
    problem = samples[0].replaced
    assert problem.reason == "truncated_image" and problem.record == "n2" and samples[2].replaced is None
    assert {s.resolution for s in samples} == {(16, 16)}
    assert dataset[2].replaced.field == "source" and len(dataset.problems) == 1  # counted once
    assert "skipped record 'n2'" in caplog.text


def test_too_many_bad_inputs_stop_the_run_with_a_clear_message(tmp_path):
    fx.write_files(tmp_path, {"good.png": fx.png()})
    rows = [{"id": f"m{i}", "source": f"gone{i}.png", "instruction": "edit"} for i in range(3)]
    rows += [{"id": f"g{i}", "source": "good.png", "instruction": "edit"} for i in range(17)]
    path = fx.write_jsonl(tmp_path / "data.jsonl", rows)
    EditDataset.from_path(path, BUCKETS, policy=BadInputPolicy(max_bad_fraction=0.15))  # 3/20 = 15%: allowed
    with pytest.raises(TooManyBadInputsError) as info:
        EditDataset.from_path(path, BUCKETS, policy=BadInputPolicy(max_bad_fraction=0.1))
    message = str(info.value)
    assert "3 of 20 (15.0%) is more than max_bad_fraction=0.1 (2 allowed)" in message
    assert "missing_file 3" in message and "record 'm0' (data.jsonl:line 1)" in message
    assert "--root" in message and "fastgrpo data check" in message
    assert isinstance(info.value, ValueError) and info.value.counts == {"missing_file": 3}


def test_the_stop_comes_early_on_a_wrong_root(tmp_path, monkeypatch):
    rows = [{"id": f"r{i}", "source": f"img/{i}.png", "instruction": "edit"} for i in range(2000)]
    path = fx.write_jsonl(tmp_path / "data.jsonl", rows)
    scanned = []
    original = scan_module.scan_record
    monkeypatch.setattr(scan_module, "scan_record", lambda *a, **k: scanned.append(1) or original(*a, **k))
    with pytest.raises(TooManyBadInputsError, match="missing_file"):
        EditDataset.from_path(path, BUCKETS, workers=2)
    assert len(scanned) < 600  # stopped after passing 5% of 2000, within a chunk or two, not after all 2000


def test_decode_time_failures_count_against_the_threshold(tmp_path):
    path = fx.native(tmp_path, count=4)
    dataset = EditDataset.from_path(path, BUCKETS, policy=BadInputPolicy(max_bad_fraction=0.25))
    (tmp_path / "img" / "0.png").write_bytes(b"garbage")
    assert dataset[0].record.id == "n2"  # 1 of 4 bad: tolerated, replaced
    (tmp_path / "img" / "1.png").write_bytes(b"garbage")
    with pytest.raises(TooManyBadInputsError, match="2 of 4"):
        dataset[1]


def test_targets_and_in_memory_records(tmp_path):
    loaded = load_records(fx.magicbrush(tmp_path))
    dataset = EditDataset(loaded.records, ResolutionBuckets.square(16), load_targets=True)
    sample = dataset[0]
    assert sample.target.shape == (16, 16, 3) and sample.mask.shape == (16, 16)
    assert dataset[1].target.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="no root was given"):
        EditDataset(load_records(fx.native(tmp_path / "n")).records, BUCKETS)
    with pytest.raises(ValueError, match="scan=False needs a single resolution bucket"):
        EditDataset(loaded.records, BUCKETS, scan=False)


def test_the_synthetic_task_through_the_same_record_type():
    task = SyntheticEditTask(size=32, seed=3)
    records = SyntheticRecords(task, count=16)
    dataset = EditDataset(records, ResolutionBuckets.square(32), scan=False, load_targets=True)
    sample, expected = dataset[5], task.sample(5)
    assert np.array_equal(sample.source, expected.source) and np.array_equal(sample.mask, expected.mask)
    assert np.array_equal(sample.target, expected.target) and sample.record.task == expected.spec.op
    assert sample.record.metadata["spec"] == expected.spec
    assert sample.record.group_key.source_id == expected.id
    sampler = GroupBatchSampler(dataset.bucket_ids, group_size=4, groups_per_rank=2)
    batch = dataset.__getitems__(next(iter(sampler)))
    assert len(batch) == 8 and all(s.source.shape == (32, 32, 3) for s in batch)
    assert batch[0].record.metadata["spec"].op in ("recolour", "move", "remove", "add")
    scanned = EditDataset(records, ResolutionBuckets.square(16))  # scanning arrays works too, and resizes
    assert scanned[0].source.shape == (16, 16, 3)


def test_masks_of_another_size_are_stretched_counted_and_logged_once(tmp_path, caplog):
    path = fx.magicbrush(tmp_path, mask_size=(48, 32))  # twice the size of their 24x16 images
    with caplog.at_level(logging.INFO, logger="fastgrpo.data"):
        dataset = EditDataset.from_path(path, ResolutionBuckets.square(16))
    assert len(dataset) == 2 and not dataset.problems and dataset.masks_resized == 2
    lines = [r.getMessage() for r in caplog.records if "masks differ in size" in r.getMessage()]
    assert lines == ["2 masks differ in size from their image and are stretched to it (nearest neighbour)"]
    resized = dataset[0].mask
    same = EditDataset.from_path(fx.magicbrush(tmp_path / "same"), ResolutionBuckets.square(16))
    assert same.masks_resized == 0 and np.array_equal(resized, same[0].mask)  # the same region after stretching
