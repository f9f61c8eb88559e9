"""A batch of edit samples as tensors, and the ``collate_fn`` that builds it.

Images stay ``uint8`` until they are on the device (4x less host-to-device traffic than float32; the model adapter
scales them to its range), channels-first: ``[B, 3, H, W]``. ``EditBatch`` implements ``pin_memory()``, so a
``DataLoader(pin_memory=True)`` pins it, and ``to(device, non_blocking=True)`` then copies asynchronously.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fastgrpo.core.advantages import GroupKey, dense_group_ids
from fastgrpo.data.buckets import Resolution
from fastgrpo.data.dataset import EditSample
from fastgrpo.data.records import Problem

__all__ = ["EditBatch", "collate_samples"]


@dataclass(eq=False)
class EditBatch:
    """``B`` samples of one resolution ``H x W``.

    Attributes:
        source: ``uint8 [B, 3, H, W]`` source images.
        mask: ``bool [B, H, W]`` regions meant to change (all ``False`` in rows without a mask), or ``None`` when
            no sample has one.
        has_mask: ``bool [B]``.
        target: ``uint8 [B, 3, H, W]`` target images (zeros where missing), or ``None`` when no sample has one.
        has_target: ``bool [B]``.
        indices: ``int64 [B]`` dataset index of each sample.
        group_ids: ``int64 [B]`` dense group of each sample within this batch (first appearance order);
            ``group_keys[g]`` is group ``g``'s :class:`~fastgrpo.core.advantages.GroupKey`.
        first_of_group: ``int64 [U]`` row of each group's first sample: ``source[first_of_group]`` holds every
            distinct condition once (encode those, then index with ``group_ids``).
        instructions, ids, input_captions, output_captions, tasks, metadata: per-sample lists of length ``B``.
        problems: records that were bad at decode time and replaced in this batch.
    """

    source: torch.Tensor
    mask: torch.Tensor | None
    has_mask: torch.Tensor
    target: torch.Tensor | None
    has_target: torch.Tensor
    indices: torch.Tensor
    group_ids: torch.Tensor
    first_of_group: torch.Tensor
    group_keys: list[GroupKey]
    instructions: list[str]
    ids: list[str]
    input_captions: list[str | None] = field(default_factory=list)
    output_captions: list[str | None] = field(default_factory=list)
    tasks: list[str | None] = field(default_factory=list)
    metadata: list[Mapping[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return self.source.shape[0]

    @property
    def resolution(self) -> Resolution:
        """``(width, height)`` of every image in the batch."""
        return Resolution(self.source.shape[3], self.source.shape[2])

    def _map_tensors(self, fn: Any) -> EditBatch:
        changes = {
            name: fn(getattr(self, name))
            for name in ("source", "mask", "has_mask", "target", "has_target", "indices", "group_ids", "first_of_group")
            if getattr(self, name) is not None
        }
        return replace(self, **changes)

    def pin_memory(self) -> EditBatch:
        """A copy whose tensors are in pinned host memory (``DataLoader(pin_memory=True)`` calls this)."""
        return self._map_tensors(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> EditBatch:
        """A copy with every tensor on ``device`` (asynchronous from pinned memory with ``non_blocking``)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))


def _stack_optional(arrays: Sequence[np.ndarray | None], shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    if all(a is None for a in arrays):
        return None
    out = np.zeros((len(arrays), *shape), dtype=dtype)
    for i, a in enumerate(arrays):
        if a is not None:
            out[i] = a
    return out


def collate_samples(samples: Sequence[EditSample]) -> EditBatch:
    """Stack samples of one resolution into an :class:`EditBatch` (the ``collate_fn`` of a ``DataLoader``).

    Raises:
        ValueError: ``samples`` is empty, or mixes resolutions (batch with
            :class:`~fastgrpo.data.sampler.GroupBatchSampler` over ``dataset.bucket_ids``).
    """
    if not samples:
        raise ValueError("collate_samples got no samples; a batch needs at least one")
    resolutions = {s.resolution for s in samples}
    if len(resolutions) != 1:
        raise ValueError(
            f"batch mixes resolutions {sorted(str(r) for r in resolutions)}; build batches with "
            "GroupBatchSampler(dataset.bucket_ids, ...) so that each batch holds one bucket"
        )
    (res,) = resolutions
    hw = (res.height, res.width)
    source = torch.from_numpy(np.stack([s.source for s in samples])).permute(0, 3, 1, 2).contiguous()
    masks = _stack_optional([s.mask for s in samples], hw, np.dtype(bool))
    targets = _stack_optional([s.target for s in samples], (*hw, 3), np.dtype(np.uint8))
    keys = [s.record.group_key for s in samples]
    group_ids, group_keys = dense_group_ids(keys)
    first = [keys.index(k) for k in group_keys]
    replaced = {id(s.replaced): s.replaced for s in samples if s.replaced is not None}
    return EditBatch(
        source=source,
        mask=torch.from_numpy(masks) if masks is not None else None,
        has_mask=torch.tensor([s.mask is not None for s in samples]),
        target=torch.from_numpy(targets).permute(0, 3, 1, 2).contiguous() if targets is not None else None,
        has_target=torch.tensor([s.target is not None for s in samples]),
        indices=torch.tensor([s.index for s in samples], dtype=torch.int64),
        group_ids=group_ids,
        first_of_group=torch.tensor(first, dtype=torch.int64),
        group_keys=group_keys,
        instructions=[s.record.instruction for s in samples],
        ids=[s.record.id for s in samples],
        input_captions=[s.record.input_caption for s in samples],
        output_captions=[s.record.output_caption for s in samples],
        tasks=[s.record.task for s in samples],
        metadata=[dict(s.record.metadata) for s in samples],
        problems=list(replaced.values()),
    )
