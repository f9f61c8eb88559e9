"""Ideal memory traffic of a benchmarked provider: the bytes its calls must read and write at the least.

A provider is a sequence of calls (``Call``: the named tensors a call reads, those it writes, and the inputs it
returns gradients for). Each call is counted as one perfect pass: every input read once and every output written
once, intermediates inside a call free. So a fused kernel and an eager chain that materialises float32 means
between its calls differ by exactly those materialised tensors, and GB/s = ideal bytes / measured time says how
well each provider's own calls use the memory system.

Backward of a call (when ``grad_of`` is non-empty): its inputs are read again, the gradient of each of its
``grad_outputs`` is read, the gradient of each ``grad_of`` input is written; an input that receives gradients
from ``k > 1`` calls costs ``k - 1`` extra accumulations (two reads, one write each).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Call:
    """One call of a provider, in terms of tensor names whose sizes (bytes) a ``Mapping`` gives."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    grad_of: tuple[str, ...] = ()  # inputs whose gradient the backward of this call writes
    grad_outputs: tuple[str, ...] = ()  # outputs whose incoming gradient the backward reads


def _total(names: Sequence[str], sizes: Mapping[str, int]) -> int:
    missing = [n for n in names if n not in sizes]
    if missing:
        raise KeyError(f"no size for tensors {missing}; add them to the case's size table")
    return sum(sizes[n] for n in names)


def ideal_bytes(calls: Sequence[Call], sizes: Mapping[str, int], backward: bool) -> int:
    """Bytes the ``calls`` move at the least, forward only or forward plus backward (see module doc)."""
    total = sum(_total(c.reads, sizes) + _total(c.writes, sizes) for c in calls)
    if not backward:
        return total
    grad_sources: Counter[str] = Counter()
    for c in calls:
        if c.grad_of:
            total += _total(c.reads, sizes) + _total(c.grad_outputs, sizes) + _total(c.grad_of, sizes)
            grad_sources.update(c.grad_of)
    total += sum(3 * sizes[name] * (k - 1) for name, k in grad_sources.items())
    return total
