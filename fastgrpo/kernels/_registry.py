"""Registration of Triton-backed operators with ``torch.library`` (so ``torch.compile`` traces through them).

Each operator is defined once as a plain Python implementation that allocates its outputs and launches Triton
kernels through a ``launch(kernel)`` hook. Where ``torch.library.triton_op`` exists (and
``FASTGRPO_CUSTOM_OPS`` is not 0) the implementation is registered as ``fastgrpo::<name>`` with its kernels
wrapped by ``wrap_triton``; elsewhere it runs directly and autograd goes through ``torch.autograd.Function``.
Registration is lazy: it happens at the first Triton call, never at import.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from fastgrpo import _env


def _identity(kernel: Any) -> Any:
    return kernel


@functools.cache
def triton_op_api() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``(triton_op, wrap_triton)`` from ``torch.library``, or None where this torch lacks them."""
    try:
        from torch.library import triton_op, wrap_triton
    except ImportError:
        return None
    return triton_op, wrap_triton


def custom_ops_enabled() -> bool:
    """Whether Triton operators go through ``torch.library`` (API present and not disabled by env)."""
    return triton_op_api() is not None and _env.use_custom_ops()


def launcher(registered: bool) -> Callable[[Any], Any]:
    """The hook through which implementations launch kernels: :func:`wrapped` when registered, else identity."""
    return wrapped if (registered and triton_op_api() is not None) else _identity


class _SkipLaunch:
    """Stands in for an interpreted kernel while tensors are fake (shape propagation only)."""

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _fake_mode_active() -> bool:
    from torch._guards import detect_fake_mode

    return detect_fake_mode() is not None


def wrapped(kernel: Any) -> Any:
    """``wrap_triton(kernel)``, except under fake tensors with Triton's CPU interpreter, where nothing launches.

    ``wrap_triton`` hands interpreted kernels back unwrapped, and the interpreter cannot run on fake tensors;
    their outputs are allocated by the implementation itself, so skipping the launch loses nothing.
    """
    api = triton_op_api()
    assert api is not None
    if _env.triton_interpret() and _fake_mode_active():
        return _SkipLaunch()
    return api[1](kernel)
