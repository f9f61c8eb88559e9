"""Shared helpers for the kernel tests: NaN-poisoned allocations and self-calibrating tolerances."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_real_empty = torch.empty


def _poisoned_empty(*args, **kwargs):
    out = _real_empty(*args, **kwargs)
    if out.dtype.is_floating_point:
        out.fill_(float("nan"))
    elif out.dtype != torch.bool:
        out.fill_(-(2**30))
    return out


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Every ``torch.empty`` inside the block is filled with NaN, so an element a kernel forgets shows up."""
    torch.empty = _poisoned_empty  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.empty = _real_empty  # type: ignore[assignment]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_close_calibrated(
    kernel: torch.Tensor, baseline: torch.Tensor, ref64: torch.Tensor, atol: float, name: str = ""
) -> None:
    """``err(kernel, ref64) <= 2 * err(baseline, ref64) + atol``, baseline being torch in the same dtype."""
    assert torch.isfinite(kernel).all(), f"{name}: non-finite values in the kernel output"
    err_k, err_b = max_err(kernel, ref64), max_err(baseline, ref64)
    assert err_k <= 2 * err_b + atol, f"{name}: kernel error {err_k:.3e} vs torch {err_b:.3e} (+{atol:.1e})"
