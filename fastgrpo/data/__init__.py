"""Edit data sets: records, public layouts, safe image decoding, resolution buckets, the group sampler.

The public names below are imported lazily (on first attribute access), so that ``import fastgrpo.data.synthetic``
does not pull in PIL or ``torch.utils.data``. Typical use::

    from fastgrpo.data import EditDataset, GroupBatchSampler, ResolutionBuckets

    dataset = EditDataset.from_path("magicbrush/data", ResolutionBuckets.square(512))
    sampler = GroupBatchSampler(dataset.bucket_ids, group_size=8, groups_per_rank=4, world_size=W, rank=r)
    for indices in sampler:  # one bucket per batch, every group on one rank
        samples = dataset.__getitems__(indices)  # EditSample list; G copies of a condition decoded once
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EditRecord": "records",
    "Problem": "records",
    "BadInputError": "records",
    "REASONS": "records",
    "ArrowImage": "lazy_images",
    "ColumnMap": "formats",
    "PRESETS": "formats",
    "get_preset": "formats",
    "detect_preset": "formats",
    "LoadedRecords": "loaders",
    "load_records": "loaders",
    "DecodeConfig": "images",
    "Resolution": "buckets",
    "ResolutionBuckets": "buckets",
    "BadInputPolicy": "badinput",
    "TooManyBadInputsError": "badinput",
    "EditDataset": "dataset",
    "EditSample": "dataset",
    "GroupBatchSampler": "sampler",
    "CheckReport": "check",
    "check_dataset": "check",
    "SyntheticRecords": "synthetic_records",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastgrpo.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fastgrpo.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
