"""The map-style edit dataset: decoded, bucketed samples, bad inputs skipped and counted.

Construction scans every record's image headers (:mod:`fastgrpo.data.scan`), so bad inputs are counted and the
run stops (:class:`~fastgrpo.data.badinput.TooManyBadInputsError`) before any GPU time is spent, and every record's
resolution bucket is known for :class:`~fastgrpo.data.sampler.GroupBatchSampler`. Bad records are dropped:
dataset index ``i`` is the ``i``-th *usable* record.

Some damage shows only when the pixels are decoded (a truncated file whose header is intact, a file replaced during
the run). Such a record is counted and logged like the others, and the sample is replaced by the next usable
record of the same bucket (wrapping around), so the batch keeps its shape (a captured CUDA graph stays valid)
and its resolution; the sample says so in ``replaced``. All ``G`` copies of a condition decode the same way, so
a group is replaced as a whole. With ``DataLoader`` workers each worker counts its own decode-time failures (added
to the scan's count); each replaced sample carries its :class:`~fastgrpo.data.records.Problem` in ``replaced``.

Records with several input images: the image to edit picks the bucket (its aspect ratio), and every reference image
is resized and centre-cropped to that same bucket resolution, so that a batch holds one shape per input. The checks
and the bad-input count cover every input image: a record whose reference does not decode is a bad record like one
whose source does not. (A model that needs its references at their own sizes would need per-input buckets; no
adapter does yet.) Masks of another size than their image are stretched to it (nearest neighbour); the scan counts
them (:attr:`EditDataset.masks_resized`) and logs the count once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from fastgrpo.data.badinput import BadInputPolicy, BadInputTracker
from fastgrpo.data.buckets import Resolution, ResolutionBuckets
from fastgrpo.data.formats import ColumnMap
from fastgrpo.data.images import DecodeConfig, ImageHeader, decode_image, decode_mask
from fastgrpo.data.loaders import load_records
from fastgrpo.data.records import BadInputError, EditRecord, Problem, input_field
from fastgrpo.data.scan import scan_records

__all__ = ["EditDataset", "EditSample"]

logger = logging.getLogger("fastgrpo.data")


@dataclass(frozen=True, eq=False)
class EditSample:
    """One decoded condition at its bucket resolution.

    Attributes:
        index: dataset index of the record decoded (differs from the one asked for when ``replaced``).
        record: that record.
        source: ``uint8 [H, W, 3]`` RGB at the bucket resolution: the image to edit.
        mask: ``bool [H, W]`` region meant to change, or ``None`` when the record has no mask.
        target: ``uint8 [H, W, 3]`` or ``None`` (no target, or the dataset does not load targets).
        bucket: the resolution bucket index; ``resolution`` is its ``(width, height)``.
        original_size: the source image's own ``(width, height)``.
        crop_box: ``(left, top, right, bottom)`` of the source region kept, in original pixels.
        replaced: the problem of the record asked for, when this sample stands in for it; else ``None``.
        references: the record's reference images, each ``uint8 [H, W, 3]`` at the same bucket resolution as
            ``source`` (centre-cropped to its aspect ratio), in order; empty without references.
    """

    index: int
    record: EditRecord
    source: np.ndarray
    mask: np.ndarray | None
    target: np.ndarray | None
    bucket: int
    resolution: Resolution
    original_size: Resolution
    crop_box: tuple[float, float, float, float]
    replaced: Problem | None = None
    references: tuple[np.ndarray, ...] = ()

    @property
    def inputs(self) -> tuple[np.ndarray, ...]:
        """Every input image, in order: ``(source, *references)``."""
        return (self.source, *self.references)


def _default_workers() -> int:
    return min(16, 4 * (os.cpu_count() or 1))


class EditDataset(Dataset):
    """Records + resolution buckets + decode limits + bad-input policy = samples ready for a batch.

    Args:
        records: the conditions (from :func:`~fastgrpo.data.loaders.load_records`, the synthetic task, ...).
        buckets: the output resolutions.
        root: folder that image paths are relative to (required when a record refers to a file).
        decode: image limits and resampling.
        policy: bad-input threshold and logging.
        skipped: problems found before the records (rows the loader skipped); they count against the threshold.
        load_targets: also check and decode target images (evaluation); GRPO training does not need them.
        scan: check every record's headers now (default). ``False`` skips the scan (in-memory records, or data
            known to be clean): then all records must go to one bucket, and bad ones surface when decoded.
        verify: make the scan decode every image in full, so that damage past the header (truncated files) is
            found before training too; costs one full decode of the data set.
        workers: threads of the scan.

    Raises:
        ValueError: a path record without ``root``, or ``scan=False`` with several buckets.
        TooManyBadInputsError: more bad records than ``policy`` tolerates.
    """

    def __init__(
        self,
        records: Sequence[EditRecord],
        buckets: ResolutionBuckets,
        *,
        root: str | os.PathLike[str] | None = None,
        decode: DecodeConfig | None = None,
        policy: BadInputPolicy | None = None,
        skipped: Sequence[Problem] = (),
        load_targets: bool = False,
        scan: bool = True,
        verify: bool = False,
        workers: int | None = None,
    ) -> None:
        self.buckets, self.load_targets = buckets, load_targets
        self.root = Path(root) if root is not None else None
        self.decode = decode or DecodeConfig()
        self.tracker = BadInputTracker(len(records) + len(skipped), policy)
        #: usable records whose mask differs in size from their image (stretched to it when decoded)
        self.masks_resized = 0
        for problem in skipped:
            self.tracker.add(problem)
        refers_to_files = len(records) and any(isinstance(ref, str) for ref in records[0].inputs)
        if self.root is None and refers_to_files:  # the usual slip, caught before the scan
            raise ValueError("records refer to image files but no root was given; pass root=<the data folder>")
        if scan:
            keep, bucket_ids, sizes = self._scan(records, verify, workers or _default_workers())
        else:
            if len(buckets) != 1:
                raise ValueError(f"scan=False needs a single resolution bucket, got {buckets.describe()}")
            keep, bucket_ids, sizes = list(range(len(records))), [0] * len(records), [None] * len(records)
        self._records, self._keep = records, np.asarray(keep, dtype=np.int64)
        self.bucket_ids = np.asarray(bucket_ids, dtype=np.int64)
        self.sizes: list[Resolution | None] = sizes
        self._members = {int(b): np.flatnonzero(self.bucket_ids == b) for b in np.unique(self.bucket_ids)}
        self._bad_at_decode: dict[int, Problem] = {}
        if len(self._keep) == 0:
            raise ValueError(f"no usable records: {self.tracker.summary()}; run `fastgrpo data check` on the data")

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        buckets: ResolutionBuckets,
        *,
        preset: str | ColumnMap = "auto",
        columns: Mapping[str, str | Sequence[str]] | None = None,
        root: str | os.PathLike[str] | None = None,
        where: Mapping[str, str] | None = None,
        split: str | None = None,
        **kwargs: Any,
    ) -> EditDataset:
        """Load a data file, folder or Hugging Face data set and build the dataset; see :func:`load_records` for the
        loading arguments and the class for the rest (``decode``, ``policy``, ``load_targets``, ...)."""
        loaded = load_records(path, preset=preset, columns=columns, root=root, where=where, split=split)
        return cls(loaded.records, buckets, root=loaded.root, skipped=loaded.problems, **kwargs)

    def _scan(
        self, records: Sequence[EditRecord], verify: bool, workers: int
    ) -> tuple[list[int], list[int], list[Resolution]]:
        keep: list[int] = []
        bucket_ids: list[int] = []
        sizes: list[Resolution] = []
        started = time.perf_counter()
        scans = scan_records(records, self.root, self.decode, targets=self.load_targets, verify=verify, workers=workers)
        for result in scans:
            if result.problem is not None:
                self.tracker.add(result.problem)
                continue
            assert result.source is not None
            keep.append(result.index)
            bucket_ids.append(self.buckets.assign(result.source.width, result.source.height))
            sizes.append(result.source.size)
            self.masks_resized += result.mask_resized
        if self.masks_resized:
            logger.info(
                "%d masks differ in size from their image and are stretched to it (nearest neighbour)",
                self.masks_resized,
            )
        logger.info(
            "scanned %d records in %.1f s: %d usable; %s",
            len(records),
            time.perf_counter() - started,
            len(keep),
            self.tracker.summary(),
        )
        return keep, bucket_ids, sizes

    def __len__(self) -> int:
        return len(self._keep)

    def record(self, index: int) -> EditRecord:
        """The usable record at dataset ``index``."""
        return self._records[int(self._keep[index])]

    @property
    def problems(self) -> list[Problem]:
        """Every bad input counted so far (loading, scan, and decoding in this process)."""
        return self.tracker.problems

    def bucket_counts(self) -> dict[Resolution, int]:
        """Usable records per bucket resolution."""
        ids, counts = np.unique(self.bucket_ids, return_counts=True)
        return {self.buckets[int(i)]: int(n) for i, n in zip(ids, counts, strict=True)}

    def _decode(self, index: int) -> EditSample:
        record, bucket = self.record(index), int(self.bucket_ids[index])
        out = self.buckets[bucket]
        field = "source"
        try:
            source, header, box = decode_image(record.source, self.root, self.decode, out=out)
            references = []
            for position, ref in enumerate(record.references, start=1):
                field = input_field(position)
                references.append(decode_image(ref, self.root, self.decode, out=out, field=field)[0])
            field = "mask"
            mask = self._mask(record, header, out)
            field = "target"
            target = None
            if self.load_targets and record.target is not None:
                target = decode_image(record.target, self.root, self.decode, out=out, field="target")[0]
        except BadInputError as error:
            error.field = field
            raise
        return EditSample(index, record, source, mask, target, bucket, out, header.size, box, None, tuple(references))

    def _mask(self, record: EditRecord, header: ImageHeader, out: Resolution) -> np.ndarray | None:
        if record.mask is None:
            return None
        return decode_mask(record.mask, self.root, self.decode, source=header, out=out)

    def _note_bad(self, index: int, error: BadInputError) -> Problem:
        record = self.record(index)
        problem = Problem(record.id, record.origin, error.reason, error.message, error.field)
        self._bad_at_decode[index] = problem
        self.tracker.add(problem)
        return problem

    def __getitem__(self, index: int) -> EditSample:
        """The decoded sample at ``index``, or its same-bucket replacement when it turns out bad.

        Raises:
            IndexError: ``index`` out of range.
            TooManyBadInputsError: this failure passed the bad-input threshold.
            ValueError: every record of the bucket failed to decode.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} records")
        index = index % len(self)
        bucket = int(self.bucket_ids[index])
        members = self._members[bucket]
        start = int(np.searchsorted(members, index))
        first_problem = self._bad_at_decode.get(index)
        for offset in range(len(members)):
            candidate = int(members[(start + offset) % len(members)])
            if candidate in self._bad_at_decode:
                continue
            try:
                sample = self._decode(candidate)
            except BadInputError as error:
                problem = self._note_bad(candidate, error)
                first_problem = first_problem or problem
                continue
            if first_problem is None:
                return sample
            return replace(sample, replaced=first_problem)
        raise ValueError(
            f"every record of bucket {self.buckets[bucket]} failed to decode ({self.tracker.summary()}); "
            "run `fastgrpo data check` on the data"
        )

    def __getitems__(self, indices: Sequence[int]) -> list[EditSample]:
        """Batched fetch (used by ``DataLoader``): each distinct index is decoded once and its ``G`` copies share
        the arrays."""
        decoded: dict[int, EditSample] = {}
        for index in indices:
            if index not in decoded:
                decoded[index] = self[index]
        return [decoded[index] for index in indices]
