"""Registration of Triton-backed operators with ``torch.library`` (so ``torch.compile`` traces through them).

Each operator is defined once as a plain Python implementation that allocates its outputs and launches Triton
kernels through a ``launch(kernel)`` hook. Where ``torch.library.triton_op`` exists and Triton is installed, the
implementation is registered as ``fastgrpo::<name>`` with its kernels wrapped by ``wrap_triton``, and calls go
through it unless ``FASTGRPO_CUSTOM_OPS=0``; elsewhere it runs directly and autograd goes through
``torch.autograd.Function``. Registration happens when ``fastgrpo.kernels`` is imported (it loads Triton's
runtime, about 0.1 s), because an operator cannot be registered while ``torch.compile`` traces its first call.
The kernel modules themselves are imported at the first launch.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any

from fastgrpo import _env


@functools.cache
def triton_op_api() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``(triton_op, wrap_triton)`` from ``torch.library``, or None where this torch lacks them or Triton is absent."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        from torch.library import triton_op, wrap_triton
    except ImportError:
        return None
    return triton_op, wrap_triton


def custom_ops_enabled() -> bool:
    """Whether calls go through the registered operators (when they exist): not disabled by the environment."""
    return _env.use_custom_ops()


def direct(kernel: Any) -> Any:
    """The launch hook of the plain path: the kernel itself."""
    return kernel


class _SkipLaunch:
    """Stands in for a kernel in fake (shape-only) implementations: indexing and calling do nothing."""

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _skip(kernel: Any) -> Any:
    return _SkipLaunch()


def define_op(name: str, impl: Callable[..., Any], schema: str) -> Any | None:
    """Register ``impl(*args, launch=...)`` as the operator ``name``; None where the API or Triton is missing.

    Compiled Triton: a ``triton_op`` (``torch.compile`` sees the kernels). Under ``TRITON_INTERPRET=1`` the
    interpreter cannot run inside a traced graph, so the operator is an opaque ``custom_op`` whose fake
    implementation allocates the outputs without launching anything; either way no graph break.
    """
    api = triton_op_api()
    if api is None:
        return None
    if _env.triton_interpret():
        import torch

        op = torch.library.custom_op(name, lambda *a: impl(*a, launch=direct), mutates_args=(), schema=schema)
        op.register_fake(lambda *a: impl(*a, launch=_skip))
        return op
    return api[0](name, lambda *a: impl(*a, launch=api[1]), mutates_args=(), schema=schema)
