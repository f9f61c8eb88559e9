"""Argument checks and backend selection shared by every public kernel entry point.

Errors a caller can make raise ``ValueError`` naming the argument and the fix. Value checks (time ranges) read
tensor contents, which synchronises host and device on CUDA; they run on CPU tensors always and on CUDA tensors
only when ``FASTGRPO_CHECK_VALUES=1`` and no CUDA graph is being captured; never while ``torch.compile`` traces.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from fastgrpo import _env

Backend = Literal["auto", "triton", "torch", "cuda"]
Reduction = Literal["mean", "sum"]

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TIME_DTYPES = (torch.float32, torch.float64)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return ``"triton"``, ``"torch"`` or ``"cuda"`` for ``backend`` on ``device`` (ValueError if impossible).

    ``"cuda"`` (the native library built from ``csrc/`` with CMake) is never the ``"auto"`` choice: Triton is the
    tested default, the native kernels are its yardstick and the fallback where Triton cannot compile.
    """
    if backend not in ("auto", "triton", "torch", "cuda"):
        raise ValueError(f"backend={backend!r} is not one of 'auto', 'triton', 'torch', 'cuda'")
    if backend == "torch":
        return "torch"
    if backend == "cuda":
        from fastgrpo.kernels import cuda_backend

        cuda_backend.library()  # ValueError naming the build command when it is not built
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got {device.type}; move them or pass backend='torch'")
        return "cuda"
    has_triton = importlib.util.find_spec("triton") is not None
    if backend == "auto":
        return "triton" if (device.type == "cuda" and has_triton) else "torch"
    if not has_triton:
        raise ValueError("backend='triton' needs the triton package; install it or pass backend='torch'")
    if device.type != "cuda" and not _env.triton_interpret():
        raise ValueError(
            f"backend='triton' on {device.type} tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before importing fastgrpo, move the tensors to CUDA, or pass backend='torch'"
        )
    return "triton"


def check_reduction(reduction: str) -> bool:
    """Validate ``reduction`` and return True for ``"mean"``."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is not one of 'mean', 'sum'")
    return reduction == "mean"


def check_latent(name: str, x: object, like: torch.Tensor | None = None) -> torch.Tensor:
    """Check a latent-shaped tensor ``[B, ...]`` in float32/bfloat16/float16 (and like ``like``)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [B, ...], got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} has dtype {x.dtype}; pass float32, bfloat16 or float16")
    if x.dim() < 2:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; pass a batch of latents [B, ...] with dim >= 2")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0); pass at least one sample")
    if x[0].numel() == 0:
        raise ValueError(f"{name} has no elements per sample (shape {tuple(x.shape)})")
    if like is not None:
        if x.shape != like.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but x has {tuple(like.shape)}; they must match")
        if x.device != like.device:
            raise ValueError(f"{name} is on {x.device} but x is on {like.device}; move it to {like.device}")
    return x


def rows(x: torch.Tensor) -> torch.Tensor:
    """View ``x [B, ...]`` as ``[B, N]`` whose rows are contiguous (copies only when a row is not)."""
    b = x.shape[0]
    flat = x.reshape(b, -1)
    if flat.stride(1) != 1 and flat.shape[1] > 1:
        flat = flat.contiguous()
    return flat


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _value_checks_enabled(t: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():  # values are symbolic while tracing
        return False
    if t.device.type == "cpu":
        return True
    return _env.check_values() and not _capturing()


def check_times(t: object, t_next: object, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``t, t_next`` (python floats, 0-d or ``[B]`` float tensors) and return float32 tensors on ``device``.

    Each returned tensor is 0-d (one time for the whole batch) or ``[B]``. Requires ``0 < t <= 1`` and
    ``0 <= t_next < t`` (sampling runs from noise at t = 1 towards data at t = 0).
    """
    _check_time_values(t, t_next, host=True)
    out = []
    for name, value in (("t", t), ("t_next", t_next)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # a fill kernel with the value as argument: no host-to-device copy, no sync, capturable
            value = torch.full((), float(value), dtype=torch.float32, device=device)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a float or a float tensor of shape [B] or [], got {type(value)}")
        if value.dtype not in TIME_DTYPES:
            raise ValueError(f"{name} has dtype {value.dtype}; pass float32 (or float64) times")
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but the latents are on {device}; move it there")
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch):
            raise ValueError(f"{name} has shape {tuple(value.shape)}; pass shape [{batch}] or a 0-d tensor")
        out.append(value.to(torch.float32))
    tt, tn = out
    if _value_checks_enabled(tt):
        _check_time_values(tt, tn, host=False)
    return tt, tn


def _check_time_values(t: object, t_next: object, *, host: bool) -> None:
    """Range checks on python numbers (``host``: free, always) or on tensors (reads them)."""
    if host:
        t = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
        t_next = float(t_next) if isinstance(t_next, (int, float)) and not isinstance(t_next, bool) else None
        ok_t = t is None or 0.0 < t <= 1.0
        ok_tn = t_next is None or t_next >= 0.0
        ok_order = t is None or t_next is None or t_next < t
    else:
        ok_t = bool(((t > 0) & (t <= 1)).all())
        ok_tn = bool((t_next >= 0).all())
        ok_order = bool((t_next < t).all())
    if not ok_t:
        raise ValueError(f"t must lie in (0, 1] (t = 1 is noise), got {t}")
    if not ok_tn:
        raise ValueError(f"t_next must be >= 0, got {t_next}")
    if not ok_order:
        raise ValueError("t_next must be < t: steps run from noise (t = 1) towards data (t = 0)")


def check_sde_params(noise_level: float, t_cap: float, *, need_noise: bool) -> tuple[float, float]:
    """Check the scalar SDE hyperparameters ``noise_level >= 0`` (``> 0`` if ``need_noise``), ``0 <= t_cap < 1``."""
    for name, value in (("noise_level", noise_level), ("t_cap", t_cap)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a python float, got {type(value).__name__}")
    noise_level, t_cap = float(noise_level), float(t_cap)
    if not noise_level >= 0.0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if need_noise and noise_level == 0.0:
        raise ValueError(
            "noise_level = 0 makes the step deterministic, so its log-probability and KL are undefined; "
            "use a positive noise_level for trained steps"
        )
    if not 0.0 <= t_cap < 1.0:
        raise ValueError(f"t_cap must lie in [0, 1) (it keeps sigma_t finite at t = 1), got {t_cap}")
    return noise_level, t_cap
