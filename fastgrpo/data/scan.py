"""Probing records before training: every image header checked, every record's bucket known, in parallel.

A scan reads each referenced image's header (size, mode, format; a few KB per file, no pixel decoding) unless
``verify`` asks for a full decode. It is what lets the dataset assign resolution buckets up front (the sampler
needs them before the first batch) and count bad inputs against the threshold before any GPU time is spent.
Header reads are I/O-bound, so they run on a thread pool, in chunks, so that a run that is going to stop does so
after at most one chunk past the threshold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastgrpo.data.images import DecodeConfig, ImageHeader, probe_image
from fastgrpo.data.records import BadInputError, EditRecord, Problem

__all__ = ["RecordScan", "scan_record", "scan_records"]

_CHUNK = 256


@dataclass(frozen=True)
class RecordScan:
    """What a scan found for one record: the headers of its images, or the problem that makes it unusable.

    Attributes:
        index: position of the record in the scanned sequence.
        source: the source image's header (``None`` when the record is bad).
        mask: the mask's header, ``None`` when there is no mask (or the record is bad).
        target: the target's header, ``None`` when there is none or targets were not scanned.
        problem: the first problem found, or ``None`` for a usable record.
    """

    index: int
    source: ImageHeader | None
    mask: ImageHeader | None = None
    target: ImageHeader | None = None
    problem: Problem | None = None


def _problem(record: EditRecord, error: BadInputError, field: str) -> Problem:
    return Problem(record.id, record.origin, error.reason, error.message, field)


def scan_record(
    record: EditRecord,
    index: int,
    root: str | Path | None,
    config: DecodeConfig,
    *,
    targets: bool = False,
    verify: bool = False,
) -> RecordScan:
    """Check one record's images (source, mask, and the target if ``targets``); never raises for bad input."""
    headers: dict[str, ImageHeader | None] = {"source": None, "mask": None, "target": None}
    for field in ("source", "mask", "target"):
        ref = getattr(record, field)
        if ref is None or (field == "target" and not targets):
            continue
        try:
            headers[field] = probe_image(ref, root, config, field=field, verify=verify)
        except BadInputError as error:
            return RecordScan(index, None, problem=_problem(record, error, field))
    source, mask = headers["source"], headers["mask"]
    if mask is not None and source is not None and mask.size != source.size:
        error = BadInputError(
            "mask_mismatch", f"mask image is {mask.size}, the source image is {source.size}; masks must match"
        )
        return RecordScan(index, None, problem=_problem(record, error, "mask"))
    return RecordScan(index, source, mask, headers["target"])


def scan_records(
    records: Sequence[EditRecord],
    root: str | Path | None,
    config: DecodeConfig,
    *,
    targets: bool = False,
    verify: bool = False,
    workers: int = 8,
) -> Iterator[RecordScan]:
    """Scan ``records`` with ``workers`` threads; yields one :class:`RecordScan` per record, in order.

    Stopping the iteration early (a ``break``, or an exception in the consumer) cancels the pending chunks.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1 threads, got {workers}")
    if workers == 1:
        for i in range(len(records)):
            yield scan_record(records[i], i, root, config, targets=targets, verify=verify)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastgrpo-scan")
    try:
        for start in range(0, len(records), _CHUNK):
            stop = min(start + _CHUNK, len(records))
            futures = [
                pool.submit(scan_record, records[i], i, root, config, targets=targets, verify=verify)
                for i in range(start, stop)
            ]
            for future in futures:
                yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
