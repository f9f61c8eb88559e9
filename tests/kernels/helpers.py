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


def replay_sde_graph(step, state: torch.Tensor, offset: int, replays: int) -> list[torch.Tensor]:
    """Capture ``step()`` (returns ``(x_next, logp)``) in a CUDA graph after a warm-up on a side stream, set the
    generator ``state`` to ``(seed, offset)`` and replay ``replays`` times; returns a copy of each replay's x_next."""
    static = {}

    def run() -> None:
        static["out"] = step()

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # warm-up (compiles or loads the kernels) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    state[1].fill_(offset)
    draws = []
    for _ in range(replays):
        graph.replay()
        draws.append(static["out"][0].clone())
    torch.cuda.synchronize()
    return draws
