"""The group-aware distributed batch sampler: ``G`` repeats per condition, one resolution per batch, exact resume.

Per optimisation step every rank draws ``P`` conditions ("groups") and repeats each ``G`` times; the ``P · W``
conditions of all ``W`` ranks form one *global batch*. The schedule of an epoch is a pure function of
``(seed, epoch)`` and the data set's bucket ids, computed identically on every rank (no communication):

1. permute the condition indices with ``numpy.random.default_rng([seed, epoch])``;
2. split the permutation by resolution bucket (keeping the permuted order) and cut each bucket into global
   batches of ``P · W`` conditions, so a global batch never mixes resolutions; a bucket's remainder is dropped
   (``drop_last``, a different remainder every epoch) or filled up with its first conditions;
3. permute the order of the global batches (so buckets interleave);
4. hand rank ``r`` its share: with ``placement="rank"`` conditions ``[r·P, (r+1)·P)`` of the global batch, each
   repeated ``G`` times, so every group lives on one rank (statistics can be local, and each condition is
   encoded once); with ``placement="spread"`` sample ``j`` of the repeated global batch goes to rank ``j mod W``,
   so each group is spread over the ranks (statistics need the cross-rank gather of SPEC S3).

Within a rank's batch, copies of a condition are adjacent (``[c0]*G + [c1]*G + ...`` for ``"rank"``), so the batch
reshapes to ``[P, G]``. The position is a single counter, ``step`` = batches handed out since epoch 0: the
checkpoint stores :meth:`state_dict`, and :meth:`load_state_dict` continues with exactly the next batch. Because the
schedule does not depend on the rank, the state is the same on every rank and rank 0 may save it alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from torch.utils.data import Sampler

__all__ = ["GroupBatchSampler"]

Placement = Literal["rank", "spread"]
_FINGERPRINT_KEYS = (
    "num_conditions",
    "buckets_hash",
    "group_size",
    "groups_per_rank",
    "world_size",
    "seed",
    "shuffle",
    "drop_last",
    "placement",
)


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class GroupBatchSampler(Sampler[list[int]]):
    """Batches of condition indices for one rank, ``G`` copies per condition, one bucket per batch.

    Args:
        buckets: bucket id (``int >= 0``) of every condition, e.g. ``EditDataset.bucket_ids``; or the number of
            conditions when all share one resolution.
        group_size: ``G``, samples per condition (>= 1).
        groups_per_rank: ``P``, conditions per rank per batch (>= 1); a rank's batch has ``P · G`` indices.
        world_size: ``W``, number of ranks (pass ``torch.distributed.get_world_size()``; default 1).
        rank: this rank, ``0 <= rank < W``.
        seed: seed of the epoch permutations (int >= 0); the same on every rank.
        shuffle: permute conditions and batch order each epoch (off: file order, bucket by bucket).
        drop_last: drop each bucket's last incomplete global batch (a different one each epoch); off: fill it
            up with the bucket's first conditions, which then appear twice in that epoch.
        placement: ``"rank"`` (each group on one rank) or ``"spread"`` (each group spread over the ranks).

    Raises:
        ValueError: a bad argument, or a data set too small for even one global batch of ``P · W`` conditions in
            any bucket (with ``drop_last``); the message gives the bucket sizes.

    Example::

        sampler = GroupBatchSampler(dataset.bucket_ids, group_size=8, groups_per_rank=4, world_size=W, rank=r)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=list, num_workers=4)  # lists of EditSample
        for epoch in range(epochs):
            sampler.set_epoch(epoch)  # no-op when resuming inside this epoch
            for batch in loader: ...
    """

    def __init__(
        self,
        buckets: Sequence[int] | np.ndarray | int,
        *,
        group_size: int,
        groups_per_rank: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        placement: Placement = "rank",
    ) -> None:
        ids = np.zeros(_positive("buckets", buckets), np.int64) if isinstance(buckets, int) else np.asarray(buckets)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu" or (ids < 0).any():
            raise ValueError("buckets must be a non-empty 1-D sequence of ints >= 0 (one bucket id per condition)")
        self.bucket_ids = ids.astype(np.int64)
        self.group_size = _positive("group_size", group_size)
        self.groups_per_rank = _positive("groups_per_rank", groups_per_rank)
        self.world_size = _positive("world_size", world_size)
        if not isinstance(rank, int | np.integer) or not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {rank!r}")
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if placement not in ("rank", "spread"):
            raise ValueError(f"placement must be 'rank' or 'spread', got {placement!r}")
        self.rank, self.seed, self.shuffle, self.drop_last = int(rank), int(seed), bool(shuffle), bool(drop_last)
        self.placement: Placement = placement
        self._members = {int(b): np.flatnonzero(self.bucket_ids == b) for b in np.unique(self.bucket_ids)}
        per_batch = self.conditions_per_global_batch
        counts = {b: len(m) for b, m in self._members.items()}
        full = {b: n // per_batch if self.drop_last else -(-n // per_batch) for b, n in counts.items()}
        self._num_batches = sum(full.values())
        if self._num_batches == 0:
            raise ValueError(
                f"no bucket holds groups_per_rank * world_size = {per_batch} conditions (bucket sizes {counts}); "
                "lower groups_per_rank, use fewer resolution buckets, or pass drop_last=False"
            )
        self._step = 0
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def conditions_per_global_batch(self) -> int:
        """``P · W``: distinct conditions per step over all ranks."""
        return self.groups_per_rank * self.world_size

    @property
    def batch_size(self) -> int:
        """``P · G``: indices in one rank's batch."""
        return self.groups_per_rank * self.group_size

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank and in every epoch)."""
        return self._num_batches

    @property
    def step(self) -> int:
        """Batches handed out since the start of epoch 0."""
        return self._step

    @property
    def epoch(self) -> int:
        """The epoch of the next batch."""
        return self._step // self._num_batches

    @property
    def position(self) -> int:
        """Index of the next batch within its epoch."""
        return self._step % self._num_batches

    def _schedule(self, epoch: int) -> np.ndarray:
        """``int64 [len(self), P · W]``: the conditions of every global batch of ``epoch``."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.bucket_ids)) if self.shuffle else np.arange(len(self.bucket_ids))
        per_batch = self.conditions_per_global_batch
        chunks = []
        for bucket in sorted(self._members):
            members = order[self.bucket_ids[order] == bucket]
            n = len(members) // per_batch if self.drop_last else -(-len(members) // per_batch)
            if n:
                chunks.append(np.resize(members, n * per_batch).reshape(n, per_batch))
        schedule = np.concatenate(chunks)
        if self.shuffle:
            schedule = schedule[rng.permutation(len(schedule))]
        self._cached = (epoch, schedule)
        return schedule

    def batch_at(self, step: int) -> list[int]:
        """This rank's batch number ``step`` (counted from epoch 0), without moving the sampler."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, position = divmod(step, self._num_batches)
        conditions = self._schedule(epoch)[position]
        if self.placement == "rank":
            mine = conditions[self.rank * self.groups_per_rank : (self.rank + 1) * self.groups_per_rank]
            return np.repeat(mine, self.group_size).tolist()
        return np.repeat(conditions, self.group_size)[self.rank :: self.world_size].tolist()

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All of this rank's batches of ``epoch``, in order (for inspection and tests)."""
        start = epoch * self._num_batches
        return [self.batch_at(start + i) for i in range(self._num_batches)]

    def __iter__(self) -> Iterator[list[int]]:
        """The remaining batches of the current epoch; the next ``iter()`` starts the following epoch."""
        end = (self.epoch + 1) * self._num_batches
        while self._step < end:
            batch = self.batch_at(self._step)
            self._step += 1  # counted when handed out: a checkpoint taken now resumes after this batch
            yield batch

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch``, unless the sampler is already inside it (a resumed run keeps its
        position when the training loop calls ``set_epoch`` for the current epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self._step = epoch * self._num_batches

    def _fingerprint(self) -> dict[str, Any]:
        digest = hashlib.blake2b(self.bucket_ids.tobytes(), digest_size=8).hexdigest()
        return {
            "num_conditions": len(self.bucket_ids),
            "buckets_hash": digest,
            "group_size": self.group_size,
            "groups_per_rank": self.groups_per_rank,
            "world_size": self.world_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "placement": self.placement,
        }

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """The position (and what it is valid for), JSON-serialisable.

        Args:
            step: batches actually *consumed* by the trainer, when that differs from the batches handed out (a
                ``DataLoader`` with workers prefetches ``num_workers * prefetch_factor`` batches ahead of the
                trainer: pass the trainer's own count then). Default: batches handed out.
        """
        step = self._step if step is None else int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, position = divmod(step, self._num_batches)
        return {"step": step, "epoch": epoch, "position": position, **self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next batch is the one after the saved position.

        Raises:
            ValueError: the state was written for a different data set or sampler configuration (the message
                names the differing setting: an exact resume needs the same ones).
        """
        if "step" not in state:
            raise ValueError("sampler state has no 'step'; pass the dict returned by GroupBatchSampler.state_dict()")
        mine = self._fingerprint()
        for key in _FINGERPRINT_KEYS:
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]!r}, this run has {key}={mine[key]!r}; an exact "
                    "resume needs the same data set and sampler settings (or start the sampler afresh)"
                )
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"sampler state has step={step}; it must be >= 0")
        self._step = step
