"""Probing records before training: every image header checked, every record's bucket known, in parallel.

A scan reads the header of each image a record refers to (every input image, the mask, the target when asked for:
size, mode, format; a few KB per file, no pixel decoding) unless ``verify`` asks for a full decode. It is what lets
the dataset assign resolution buckets up front (the sampler needs them before the first batch) and count bad inputs
against the threshold before any GPU time is spent. Header reads are I/O-bound, so they run on a thread pool, in
chunks, so that a run that is going to stop does so after at most one chunk past the threshold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastgrpo.data.images import DecodeConfig, ImageHeader, mask_resized, probe_image
from fastgrpo.data.records import BadInputError, EditRecord, Problem, input_field

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
        references: the reference images' headers, in order (empty without references, or when the record is
            bad).
    """

    index: int
    source: ImageHeader | None
    mask: ImageHeader | None = None
    target: ImageHeader | None = None
    problem: Problem | None = None
    references: tuple[ImageHeader, ...] = ()

    @property
    def mask_resized(self) -> bool:
        """The mask differs in size from the source image and will be stretched to it when decoded."""
        return self.mask is not None and self.source is not None and mask_resized(self.mask, self.source)


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
    """Check one record's images (every input image, the mask, and the target if ``targets``); never raises for
    bad input."""
    headers: dict[str, ImageHeader] = {}
    for field, ref in record.images().items():
        if field == "target" and not targets:
            continue
        try:
            headers[field] = probe_image(ref, root, config, field=field, verify=verify)
        except BadInputError as error:
            return RecordScan(index, None, problem=_problem(record, error, field))
    references = tuple(headers[input_field(i)] for i in range(1, len(record.inputs)))
    return RecordScan(index, headers["source"], headers.get("mask"), headers.get("target"), references=references)


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
