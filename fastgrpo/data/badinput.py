"""Counting bad inputs, warning about each, and stopping the run when there are too many.

A few broken images in a large data set are normal and are skipped; many mean a wrong ``--root``, a wrong preset
or a damaged copy, and training on the remainder would waste a GPU run. So every skipped record is logged (the
first ``log_first`` one by one, then at every power of ten) on the ``fastgrpo.data`` logger, with its id, origin,
reason and the running count; and as soon as the bad fraction of the data set *must* exceed ``max_bad_fraction``
(``bad > max_bad_fraction * total``, decided the moment it becomes true, not after scanning everything),
:class:`TooManyBadInputsError` stops the run with a summary by reason, the first problem and the fixes.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

from fastgrpo.data.records import Problem

__all__ = ["BadInputPolicy", "BadInputTracker", "TooManyBadInputsError"]

logger = logging.getLogger("fastgrpo.data")


@dataclass(frozen=True)
class BadInputPolicy:
    """How many unusable records a run tolerates.

    Attributes:
        max_bad_fraction: largest tolerated fraction of bad records among all rows read, in ``[0, 1]``; ``0``
            stops at the first bad record, ``1`` never stops. Default 5%.
        log_first: bad records logged one by one; after these only every power-of-ten count is logged.

    Raises:
        ValueError: a fraction outside ``[0, 1]`` or a negative ``log_first``.
    """

    max_bad_fraction: float = 0.05
    log_first: int = 20

    def __post_init__(self) -> None:
        if not isinstance(self.max_bad_fraction, int | float) or not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(
                f"max_bad_fraction must be a fraction in [0, 1] (0.05 = 5%), got {self.max_bad_fraction!r}"
            )
        if not isinstance(self.log_first, int) or self.log_first < 0:
            raise ValueError(f"log_first must be an int >= 0, got {self.log_first!r}")

    def allowed(self, total: int) -> int:
        """Bad records tolerated among ``total`` (the floor of ``max_bad_fraction * total``)."""
        return math.floor(self.max_bad_fraction * total + 1e-9)


def _by_reason(counts: Counter[str]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.most_common())


class TooManyBadInputsError(ValueError):
    """The data set has more unusable records than :class:`BadInputPolicy` tolerates.

    Attributes:
        bad, total: counts of bad and of all records.
        counts: bad records per reason.
        problems: the problems seen so far (the first ones in file order when loading).
    """

    def __init__(self, bad: int, total: int, policy: BadInputPolicy, counts: Counter[str], problems: list[Problem]):
        self.bad, self.total, self.counts, self.problems = bad, total, counts, problems
        first = f" First: {problems[0]}." if problems else ""
        super().__init__(
            f"too many unusable records: {bad} of {total} ({bad / max(total, 1):.1%}) is more than "
            f"max_bad_fraction={policy.max_bad_fraction:g} ({policy.allowed(total)} allowed). "
            f"By reason: {_by_reason(counts)}.{first} Fix: check the data root (--root, the folder image paths "
            "are relative to) and the layout (--preset); `fastgrpo data check PATH` lists every problem; or raise "
            "max_bad_fraction."
        )


class BadInputTracker:
    """Counts bad records of one data set of ``total`` records and enforces a :class:`BadInputPolicy`.

    Args:
        total: records in the data set, bad ones included (every row read).
        policy: the threshold and logging policy.
        raise_on_excess: raise :class:`TooManyBadInputsError` once the threshold is passed (``data check`` turns
            this off to report everything).
        log: log skipped records on the ``fastgrpo.data`` logger (``data check`` prints its own report instead).
    """

    def __init__(
        self, total: int, policy: BadInputPolicy | None = None, *, raise_on_excess: bool = True, log: bool = True
    ) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0 records, got {total}")
        self.total = total
        self.policy = policy or BadInputPolicy()
        self.raise_on_excess, self.log = raise_on_excess, log
        self.counts: Counter[str] = Counter()
        self.problems: list[Problem] = []

    @property
    def bad(self) -> int:
        """Bad records so far."""
        return len(self.problems)

    @property
    def fraction(self) -> float:
        """``bad / total`` (0 for an empty data set)."""
        return self.bad / self.total if self.total else 0.0

    @property
    def exceeded(self) -> bool:
        """Whether the bad records are more than the policy allows."""
        return self.bad > self.policy.allowed(self.total)

    def add(self, problem: Problem) -> None:
        """Count and log one skipped record.

        Raises:
            TooManyBadInputsError: this record pushed the count past the threshold (and ``raise_on_excess``).
        """
        self.problems.append(problem)
        self.counts[problem.reason] += 1
        n = self.bad
        if self.log and (n <= self.policy.log_first or math.log10(n).is_integer()):
            logger.warning(
                "skipped %s [%s; bad input %d of %d records, limit %d]",
                problem,
                problem.reason,
                n,
                self.total,
                self.policy.allowed(self.total),
            )
        self.check()

    def check(self) -> None:
        """Raise :class:`TooManyBadInputsError` if the threshold is passed (and ``raise_on_excess``)."""
        if self.raise_on_excess and self.exceeded:
            raise TooManyBadInputsError(self.bad, self.total, self.policy, self.counts, self.problems)

    def summary(self) -> str:
        """``"3 of 120 records unusable (2.5%): missing_file 2, corrupt_image 1"``."""
        if not self.bad:
            return f"0 of {self.total} records unusable"
        return f"{self.bad} of {self.total} records unusable ({self.fraction:.1%}): {_by_reason(self.counts)}"
