"""``fastgrpo data check PATH``: validate a data set and summarise it, before a GPU run depends on it.

It loads every row with the same loaders and presets as training, checks every image of every record (every input
image, mask, target) with the same limits, by default decoding every pixel (``--quick``: headers only, as training's
start-up scan does), and reports counts, layouts, the files skipped (and why), image sizes, formats and modes,
input images per record, masks/targets/captions present and the masks stretched to their image's size, task types,
record ids used more than once, and each problem with its record and reason. The exit status is 0 when the bad
fraction is within ``--max-bad-fraction`` (the threshold training would apply), 1 when it is not or nothing is
usable, 2 when the data cannot be read at all.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from fastgrpo.data.badinput import BadInputPolicy, BadInputTracker
from fastgrpo.data.buckets import ResolutionBuckets, parse_resolutions
from fastgrpo.data.images import DecodeConfig
from fastgrpo.data.loaders import load_records
from fastgrpo.data.records import REASONS, EditRecord, Problem
from fastgrpo.data.scan import RecordScan, scan_records

__all__ = ["CheckReport", "check_dataset", "format_report", "run_check"]


@dataclass
class CheckReport:
    """What ``data check`` found. Counters are keyed by text (``"512x512"``, ``"PNG"``, ``"RGB"``, a reason)."""

    path: str
    root: str
    files: list[str]
    presets: dict[str, str]
    rows: int
    usable: int
    groups: int
    problems: list[Problem]
    max_bad_fraction: float
    verified: bool
    resolutions: Counter[str] = field(default_factory=Counter)
    formats: Counter[str] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    tasks: Counter[str] = field(default_factory=Counter)
    buckets: Counter[str] = field(default_factory=Counter)
    with_mask: int = 0
    with_target: int = 0
    with_captions: int = 0
    #: usable records by their number of input images (source + references)
    inputs: Counter[int] = field(default_factory=Counter)
    #: usable records whose mask differs in size from their image (stretched to it, nearest neighbour)
    masks_resized: int = 0
    #: file -> why it was not read (see :attr:`~fastgrpo.data.loaders.LoadedRecords.skipped`)
    skipped: dict[str, str] = field(default_factory=dict)
    #: records whose id an earlier record already has (in file order), and the first such ids
    duplicate_ids: int = 0
    duplicate_examples: list[str] = field(default_factory=list)

    @property
    def bad(self) -> int:
        return len(self.problems)

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.rows if self.rows else 0.0

    @property
    def passed(self) -> bool:
        """Usable records exist and the bad fraction is within the threshold."""
        return self.usable > 0 and self.bad <= BadInputPolicy(self.max_bad_fraction).allowed(self.rows)

    def reasons(self) -> Counter[str]:
        return Counter(p.reason for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``--json``)."""
        return {
            "path": self.path,
            "root": self.root,
            "files": self.files,
            "presets": self.presets,
            "rows": self.rows,
            "usable": self.usable,
            "bad": self.bad,
            "bad_fraction": self.bad_fraction,
            "max_bad_fraction": self.max_bad_fraction,
            "passed": self.passed,
            "verified": self.verified,
            "groups": self.groups,
            "with_mask": self.with_mask,
            "with_target": self.with_target,
            "with_captions": self.with_captions,
            "inputs_per_record": {str(n): c for n, c in sorted(self.inputs.items())},
            "masks_resized": self.masks_resized,
            "skipped_files": self.skipped,
            "duplicate_ids": self.duplicate_ids,
            "duplicate_examples": self.duplicate_examples,
            "resolutions": dict(self.resolutions.most_common()),
            "formats": dict(self.formats),
            "modes": dict(self.modes),
            "tasks": dict(self.tasks.most_common()),
            "buckets": dict(self.buckets),
            "reasons": dict(self.reasons()),
            "problems": [vars(p) for p in self.problems],
        }


def check_dataset(
    path: str | os.PathLike[str],
    *,
    preset: str = "auto",
    root: str | os.PathLike[str] | None = None,
    max_bad_fraction: float = 0.05,
    verify: bool = True,
    decode: DecodeConfig | None = None,
    buckets: ResolutionBuckets | None = None,
    workers: int = 8,
    split: str | None = None,
) -> CheckReport:
    """Check every record at ``path``; never stops early (the threshold only sets :attr:`CheckReport.passed`).

    Args:
        path, preset, root, split: as for :func:`~fastgrpo.data.loaders.load_records`.
        max_bad_fraction: the threshold to judge against.
        verify: decode every pixel (default) rather than reading headers only.
        decode: image limits (default :class:`DecodeConfig`).
        buckets: also count records per bucket of these resolutions.
        workers: threads checking images.

    Raises:
        ValueError: the data cannot be read (missing path, unknown preset, unreadable file).
    """
    policy = BadInputPolicy(max_bad_fraction)
    loaded = load_records(path, preset=preset, root=root, split=split)
    tracker = BadInputTracker(loaded.total, policy, raise_on_excess=False, log=False)
    for problem in loaded.problems:
        tracker.add(problem)
    report = CheckReport(
        path=str(path),
        root=str(loaded.root),
        files=[str(f) for f in loaded.files],
        presets=loaded.presets,
        rows=loaded.total,
        usable=0,
        groups=0,
        problems=tracker.problems,
        max_bad_fraction=max_bad_fraction,
        verified=verify,
        skipped=dict(loaded.skipped),
    )
    report.duplicate_ids, report.duplicate_examples = _duplicates(loaded.records)
    groups = set()
    config = decode or DecodeConfig()
    for result in scan_records(loaded.records, loaded.root, config, targets=True, verify=verify, workers=workers):
        if result.problem is not None:
            tracker.add(result.problem)
            continue
        record = loaded.records[result.index]
        groups.add(record.group_key)
        _tally(report, record, result, buckets)
    report.groups = len(groups)
    return report


def _duplicates(records: list[EditRecord], examples: int = 5) -> tuple[int, list[str]]:
    """How many records reuse an id seen earlier, and the first ``examples`` such ids."""
    seen: set[str] = set()
    count, first = 0, []
    for record in records:
        if record.id in seen:
            count += 1
            if len(first) < examples and record.id not in first:
                first.append(record.id)
        seen.add(record.id)
    return count, first


def _tally(report: CheckReport, record: EditRecord, scan: RecordScan, buckets: ResolutionBuckets | None) -> None:
    source = scan.source
    assert source is not None  # a record without problems has a source header
    report.usable += 1
    report.inputs[len(record.inputs)] += 1
    report.masks_resized += scan.mask_resized
    report.resolutions[str(source.size)] += 1
    report.formats[source.format] += 1
    report.modes[source.mode] += 1
    report.tasks[record.task or "(none)"] += 1
    report.with_mask += record.mask is not None
    report.with_target += record.target is not None
    report.with_captions += record.input_caption is not None or record.output_caption is not None
    if buckets is not None:
        report.buckets[str(buckets[buckets.assign(source.width, source.height)])] += 1


def _top(counter: Counter[str], limit: int = 8) -> str:
    items = counter.most_common(limit)
    more = len(counter) - len(items)
    return ", ".join(f"{k} {v}" for k, v in items) + (f", ... ({more} more)" if more > 0 else "") or "-"


def format_report(report: CheckReport, *, max_problems: int = 20) -> str:
    """The human-readable summary that ``data check`` prints."""
    verdict = "OK" if report.passed else "FAILED"
    files = ", ".join(f"{name} [{layout}]" for name, layout in report.presets.items())
    lines = [
        f"data check {report.path}: {verdict}",
        f"  files        {len(report.files)} ({files})",
        *[f"  skipped      {name}: {why}" for name, why in report.skipped.items()],
        f"  data root    {report.root}",
        f"  rows         {report.rows}: {report.usable} usable, {report.bad} bad ({report.bad_fraction:.1%}; "
        f"limit {report.max_bad_fraction:.1%})",
        f"  conditions   {report.groups} distinct (source image, instruction)",
        f"  images       {'decoded in full' if report.verified else 'headers only (--quick)'}",
        f"  sizes (WxH)  {_top(report.resolutions)}",
        f"  formats      {_top(report.formats)}; modes {_top(report.modes)}",
        f"  inputs       per record: {', '.join(f'{n} x {c}' for n, c in sorted(report.inputs.items())) or '-'}",
        f"  masks        {report.with_mask} of {report.usable} (masks resized: {report.masks_resized}); "
        f"targets {report.with_target}; captions {report.with_captions}",
        f"  tasks        {_top(report.tasks)}",
    ]
    if report.buckets:
        lines.append(f"  buckets      {_top(report.buckets, 16)}")
    if report.duplicate_ids:
        lines.append(
            f"  duplicate ids {report.duplicate_ids} records reuse an earlier record's id (first: "
            f"{', '.join(repr(i) for i in report.duplicate_examples)}); ids name records in problems and reports"
        )
    if report.problems:
        lines.append(f"  problems     {_top(report.reasons(), 20)}")
        for problem in report.problems[:max_problems]:
            lines.append(f"    [{problem.reason}] {problem}")
        if report.bad > max_problems:
            lines.append(f"    ... {report.bad - max_problems} more (--json lists all)")
        for reason in sorted(report.reasons()):
            lines.append(f"  {reason}: {REASONS[reason]}")
    if not report.passed:
        lines.append(
            "  to fix: repair or re-encode the records listed above, or drop them from the data set; check --root "
            "if image paths are missing; --max-bad-fraction (data.max_bad_fraction) raises the limit"
            if report.usable
            else "  to fix: no record is usable: check the data root (--root) and the column layout (--preset)"
        )
    return "\n".join(lines)


def run_check(
    path: str,
    *,
    preset: str = "auto",
    root: str | None = None,
    max_bad_fraction: float = 0.05,
    as_json: bool = False,
    quick: bool = False,
    buckets: str | None = None,
    out: TextIO | None = None,
    split: str | None = None,
) -> int:
    """The ``fastgrpo data check`` command: print the report, return the exit status (0 ok, 1 too many bad
    records, 2 unreadable data or a bad argument)."""
    out = out or sys.stdout
    try:
        parsed = ResolutionBuckets(parse_resolutions(buckets)) if buckets else None
        report = check_dataset(
            path,
            preset=preset,
            root=root,
            max_bad_fraction=max_bad_fraction,
            verify=not quick,
            buckets=parsed,
            split=split,
        )
    except ValueError as error:
        print(f"fastgrpo data check: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report), file=out)
    return 0 if report.passed else 1
