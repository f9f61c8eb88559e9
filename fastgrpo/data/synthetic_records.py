"""The built-in synthetic shapes task as :class:`~fastgrpo.data.records.EditRecord` objects.

:class:`SyntheticRecords` is a lazy, indexable sequence: record ``i`` is generated from ``(seed, i)`` when asked for
and not stored, so a data set of any size costs no memory. Images and masks are in-memory arrays (``uint8
[S, S, 3]``, ``bool [S, S]``), the task type is the edit operation, and ``metadata`` holds the structured
``EditSpec`` (``"spec"``) and the scene (``"scene"``) that rule rewards check. Use it like any other record source::

    records = SyntheticRecords(SyntheticEditTask(size=32, seed=0), count=4096)
    dataset = EditDataset(records, ResolutionBuckets.square(32), scan=False)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from fastgrpo.data.records import EditRecord
from fastgrpo.data.synthetic import SyntheticEdit, SyntheticEditTask

__all__ = ["SyntheticRecords", "record_from_synthetic"]


def record_from_synthetic(edit: SyntheticEdit) -> EditRecord:
    """The :class:`EditRecord` of one synthetic sample (source, instruction, mask, target, op, spec)."""
    return EditRecord(
        id=edit.id,
        source=edit.source,
        instruction=edit.instruction,
        mask=edit.mask,
        target=edit.target,
        task=edit.spec.op,
        origin=edit.id,
        metadata={"spec": edit.spec, "scene": edit.scene},
    )


class SyntheticRecords(Sequence[EditRecord]):
    """``count`` records of a :class:`SyntheticEditTask`, generated on access.

    Raises:
        ValueError: ``count`` is not a positive int.
    """

    def __init__(self, task: SyntheticEditTask, count: int) -> None:
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive number of records, got {count!r}")
        self.task, self.count = task, count

    def __len__(self) -> int:
        return self.count

    @overload
    def __getitem__(self, index: int) -> EditRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[EditRecord]: ...
    def __getitem__(self, index: int | slice) -> EditRecord | list[EditRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} synthetic records")
        return record_from_synthetic(self.task.sample(index % self.count))
