"""The one place that reads ``FASTGRPO_*`` environment variables (each is documented in README.md).

Values are read when a function here is called, never at import time, so that tests and launchers can set
them after ``import fastgrpo``.
"""

from __future__ import annotations

import os

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"environment variable {name}={raw!r} is not a boolean; use 1 or 0")


def check_values() -> bool:
    """``FASTGRPO_CHECK_VALUES``: validate tensor *values* (time ranges) even on CUDA tensors.

    Value checks read device memory and therefore synchronise the host with the device; by default they run
    only on CPU tensors, where they cost nothing. Set to 1 when debugging a GPU run.
    """
    return _flag("FASTGRPO_CHECK_VALUES", False)


def use_custom_ops() -> bool:
    """``FASTGRPO_CUSTOM_OPS``: route Triton kernels through ``torch.library.triton_op`` (default 1).

    Set to 0 to call the kernels directly through ``torch.autograd.Function`` (the path used automatically
    where ``torch.library.triton_op`` does not exist); ``torch.compile`` then breaks the graph at each call.
    """
    return _flag("FASTGRPO_CUSTOM_OPS", True)


def cuda_lib() -> str | None:
    """``FASTGRPO_CUDA_LIB``: path of the native kernel library (``libfastgrpo_cuda.so``) for ``backend="cuda"``.

    Unset or empty: the library is looked for in the default CMake build folder, ``build/`` at the repository root.
    """
    raw = os.environ.get("FASTGRPO_CUDA_LIB", "").strip()
    return raw or None


def triton_interpret() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``, Triton's own variable)."""
    return _flag("TRITON_INTERPRET", False)


def read_secret(variable: str) -> str | None:
    """The value of the environment variable named ``variable`` (e.g. a judge's ``api_key_env``), or None.

    For secrets such as API keys: the name comes from the config, the value is read when a client is built and is
    never logged or put into an error message by fastgrpo.
    """
    if not isinstance(variable, str) or not variable:
        raise ValueError(f"the name of an environment variable must be a non-empty string, got {variable!r}")
    return os.environ.get(variable)
