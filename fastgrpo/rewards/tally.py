"""The reduction of scored reward batches: per-sample totals, per-name means and failure counts over ranks.

One :class:`RewardTally` collects the :class:`~fastgrpo.rewards.composite.CompositeResult` of every batch of one
training iteration or one evaluation, in order, and answers what the trainer and the evaluation report:

- :meth:`RewardTally.totals`: the ``[N]`` float32 weighted reward of every sample (NaN where not scored), what the
  GRPO advantages are computed from;
- :meth:`RewardTally.means`, :meth:`RewardTally.sums`, :meth:`RewardTally.counts`: per name (``"total"``, each
  component and each ``{component}.{term}`` sub-term) the mean, sum and number of the finite values;
- :meth:`RewardTally.failed`: per name, the samples without a finite value;
- :meth:`RewardTally.all_reduce`: the sums and counts summed over ranks in one collective (the totals and the
  failure counts stay this rank's).

A non-finite value (NaN, ±inf) counts as "not scored": it is left out of the sums and counts (SPEC S3). A batch
whose evaluation failed as a whole is added as ``None``: its samples are NaN in :meth:`RewardTally.totals` and
count as failed for every name.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fastgrpo.rewards.composite import CompositeResult

__all__ = ["RewardTally"]


class RewardTally:
    """Scored batches of one iteration or one evaluation, reduced to totals, means and failure counts.

    Every batch added must carry the same names (one reward config); on several ranks every rank must hold the
    same names, that is, have scored at least one batch, before :meth:`all_reduce`.

    Example::

        tally = RewardTally()
        for future in futures:  # one per chunk of `chunk` samples
            try:
                result = future.result()
            except Exception:
                result = None  # the whole chunk is left out
            tally.add(result, chunk)
        rewards = tally.totals()  # float32 [N] on the CPU, NaN for the failed chunk
        if dist.active:
            tally.all_reduce(lambda t: dist.all_reduce_sum(t.to(dist.device)).cpu())
        tally.means()  # {"total": ..., "judge": ..., "judge.preservation": ..., ...}: over every rank
        tally.failed()  # {"total": 8, "judge": 8, ...}: this rank's samples without a finite value, per name
    """

    def __init__(self) -> None:
        self._totals: list[torch.Tensor] = []
        self._batches: list[dict[str, torch.Tensor] | int] = []  # per batch: its values by name, or its size
        self._sums: dict[str, float] = {}
        self._squares: dict[str, float] = {}  # sums of squares of the finite values (standard errors)
        self._counts: dict[str, float] = {}
        self._nonfinite: dict[str, int] = {}  # non-finite values of the scored batches
        self._lost = 0  # samples of the failed batches
        self._samples = 0
        self._reduced = False

    def add(self, result: CompositeResult | None, size: int) -> None:
        """Add one batch of ``size`` samples: its scored ``result``, or ``None`` if the whole batch failed.

        For a result, per name (``"total"`` = ``result.total()`` and every entry of ``result.breakdown.components``,
        ``[size]`` floating tensors on any one device) the finite values are summed in the value's own dtype on its
        device, then added to a Python float, and the finite values counted. ``None`` adds ``size`` NaN to
        :meth:`totals` and nothing to the sums and counts. One host read per call (plus the copy of the totals).

        Raises:
            ValueError: ``size`` is not an integer >= 1, ``result`` is neither a ``CompositeResult`` nor ``None``,
                its batch size is not ``size``, or its names differ from those of the batches added before.
            RuntimeError: called after :meth:`all_reduce`.
        """
        if self._reduced:
            raise RuntimeError("RewardTally.add after all_reduce; start a new RewardTally for the next batches")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an integer >= 1 (the samples of the batch), got {size!r}")
        if result is None:
            self._totals.append(torch.full((size,), math.nan, dtype=torch.float32))
            self._batches.append(size)
            self._lost += size
            self._samples += size
            return
        if not isinstance(result, CompositeResult):
            raise ValueError(f"result must be a CompositeResult or None (a failed batch), got {type(result).__name__}")
        if result.breakdown.batch_size != size:
            raise ValueError(f"result holds {result.breakdown.batch_size} samples but size is {size}; pass its size")
        total = result.total()
        values = {"total": total, **result.breakdown.components}
        if self._sums and set(values) != set(self._sums):
            raise ValueError(
                f"this batch has the reward names {sorted(values)} but earlier batches had {sorted(self._sums)}; "
                "tally the batches of one reward config"
            )
        self._totals.append(total.float().cpu())
        self._batches.append({name: value.float().cpu() for name, value in values.items()})
        sums, counts, squares = [], [], []
        for value in values.values():
            finite = torch.isfinite(value)
            clean = torch.where(finite, value, 0.0)
            sums.append(clean.sum().double())  # float64 holds every float32 sum exactly
            counts.append(finite.sum().double())
            squares.append(clean.double().square().sum())
        read = torch.stack(sums + counts + squares).tolist()
        k = len(values)
        for position, name in enumerate(values):
            count = read[k + position]
            self._sums[name] = self._sums.get(name, 0.0) + read[position]
            self._squares[name] = self._squares.get(name, 0.0) + read[2 * k + position]
            self._counts[name] = self._counts.get(name, 0.0) + count
            self._nonfinite[name] = self._nonfinite.get(name, 0) + size - int(count)
        self._samples += size

    @property
    def names(self) -> list[str]:
        """The names seen so far, sorted (empty until a batch was scored)."""
        return sorted(self._sums)

    @property
    def size(self) -> int:
        """Samples added on this rank (scored or not): the length of :meth:`totals`."""
        return self._samples

    def totals(self) -> torch.Tensor:
        """``[N]`` float32 on the CPU: ``result.total()`` of every batch in the order added, NaN for the samples of
        a failed batch (``N`` = the samples added on this rank; :meth:`all_reduce` does not change it). Empty
        (``[0]``) before the first :meth:`add`."""
        if not self._totals:
            return torch.empty(0, dtype=torch.float32)
        return torch.cat(self._totals)

    def sums(self) -> dict[str, float]:
        """Name -> sum of the finite values (in the reward's units)."""
        return dict(self._sums)

    def counts(self) -> dict[str, float]:
        """Name -> number of finite values (a whole float)."""
        return dict(self._counts)

    def means(self) -> dict[str, float]:
        """Name -> mean of the finite values (``sum / count``); NaN for a name without any finite value."""
        return {name: self._sums[name] / self._counts[name] if self._counts[name] else math.nan for name in self.names}

    def stderrs(self) -> dict[str, float]:
        """Name -> standard error of the mean of the finite values, ``sqrt(var / count)`` with the population
        variance (the spread of a held-out score: what a change of the mean must exceed to be more than noise);
        NaN for fewer than two values."""
        out = {}
        for name in self.names:
            n = self._counts[name]
            if n < 2:
                out[name] = math.nan
                continue
            mean = self._sums[name] / n
            out[name] = math.sqrt(max(self._squares[name] / n - mean * mean, 0.0) / n)
        return out

    def values(self, name: str) -> torch.Tensor:
        """``[N]`` float32 on the CPU: the per-sample values of ``name`` on this rank, in the order added (NaN where
        not scored, and for every sample of a failed batch); ``KeyError`` for a name no batch had."""
        if name not in self._sums:
            raise KeyError(f"no batch had the reward {name!r}; the names are {self.names}")
        parts = [b[name] if isinstance(b, dict) else torch.full((b,), math.nan) for b in self._batches]
        return torch.cat(parts) if parts else torch.empty(0)

    def failed(self) -> dict[str, int]:
        """Name -> this rank's samples without a finite value: the non-finite values of its scored batches plus
        every sample of its failed batches (which count for every name, including names first seen after them).
        :meth:`all_reduce` does not change it."""
        return {name: self._nonfinite[name] + self._lost for name in self.names}

    def all_reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the sums and counts by their sums over ranks, in place (once); :meth:`totals`, :meth:`failed`
        and :attr:`size` stay this rank's.

        ``reduce_sum`` gets one float64 CPU tensor ``[2 · K]``, ``[sums..., counts...]`` over the ``K`` sorted
        names, and returns the tensor of its sums over ranks, of the same shape (any device), e.g.
        ``lambda t: dist.all_reduce_sum(t.to(dist.device)).cpu()``. Every rank must call it, with the same names.

        Raises:
            ValueError: no batch was scored on this rank (no names to reduce: the ranks' tensors would not match),
                or ``reduce_sum`` returned another shape.
            RuntimeError: called a second time.
        """
        if self._reduced:
            raise RuntimeError("RewardTally.all_reduce was already called; the sums are already over every rank")
        names = self.names
        if not names:
            raise ValueError(
                "RewardTally.all_reduce on a rank without a scored batch: every rank must score at least one batch "
                "so that all ranks reduce the same names"
            )
        packed = torch.tensor([self._sums[n] for n in names] + [self._counts[n] for n in names], dtype=torch.float64)
        reduced = reduce_sum(packed)
        if not isinstance(reduced, torch.Tensor) or tuple(reduced.shape) != tuple(packed.shape):
            raise ValueError(
                f"reduce_sum must return a tensor of shape {tuple(packed.shape)}, got {getattr(reduced, 'shape', None)}"
            )
        values = reduced.detach().to("cpu", torch.float64).tolist()
        self._sums = dict(zip(names, values[: len(names)], strict=True))
        self._counts = dict(zip(names, values[len(names) :], strict=True))
        # the squares in a second reduction, so that the sums' reduction (and the means) stay as they always were
        squares = reduce_sum(torch.tensor([self._squares[n] for n in names], dtype=torch.float64))
        self._squares = dict(zip(names, squares.detach().to("cpu", torch.float64).tolist(), strict=True))
        self._reduced = True
