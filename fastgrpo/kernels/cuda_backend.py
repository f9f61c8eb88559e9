"""``backend="cuda"``: the native CUDA twins of the fused SDE-step kernels, reached through ctypes.

The library ``libfastgrpo_cuda.so`` is built from ``csrc/`` by the top-level ``CMakeLists.txt``
(``cmake -S . -B build && cmake --build build``) and found at ``FASTGRPO_CUDA_LIB`` or, by default, in ``build/`` at
the repository root. Its plain C ABI (``csrc/fastgrpo_cuda.h``) takes one ``fg_args`` struct of raw pointers, row
strides, dtype codes and scalars, plus the current CUDA stream; it allocates nothing (the partial-sum workspace
comes from torch), so calls are CUDA-graph capturable. The contract is that of the Triton kernels
(``sde/fused.py``): same tiling, same Philox noise words, fp32 math, deterministic two-stage reductions.

Nothing is loaded at import time; a missing library surfaces as a ``ValueError`` naming the build command.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor

from fastgrpo import _env
from fastgrpo.kernels.sde import ops

ABI_VERSION = 1  # FG_ABI_VERSION of csrc/fastgrpo_cuda.h
TILE = 4096  # FG_TILE: elements of one sample per block of the forward kernels
LIBRARY_NAME = "libfastgrpo_cuda.so"
BUILD_HINT = (
    "build it with `cmake -S . -B build && cmake --build build` at the repository root (needs a CUDA toolkit), "
    "or set FASTGRPO_CUDA_LIB to the path of libfastgrpo_cuda.so; or pass backend='triton' or 'torch'"
)
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_OPS = ("fg_sde_step", "fg_logprob_kl", "fg_logprob_kl_backward")


class Rows(ctypes.Structure):
    """``fg_rows``: a batch of rows ``[B, N]``; ``data`` NULL means absent."""

    _fields_ = (
        ("data", ctypes.c_void_p),
        ("row_stride", ctypes.c_int64),
        ("dtype", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    )


class Args(ctypes.Structure):
    """``fg_args``: the arguments of every native operation (see ``csrc/fastgrpo_cuda.h`` for each field)."""

    _fields_ = (
        ("batch", ctypes.c_int64),
        ("numel", ctypes.c_int64),
        ("x", Rows),
        ("v", Rows),
        ("noise", Rows),
        ("x_next", Rows),
        ("v_ref", Rows),
        ("grad_v", Rows),
        ("t", ctypes.c_void_p),
        ("t_next", ctypes.c_void_p),
        ("t_stride", ctypes.c_int64),
        ("seed_state", ctypes.c_void_p),
        ("seed", ctypes.c_uint64),
        ("offset", ctypes.c_uint64),
        ("noise_level", ctypes.c_float),
        ("t_cap", ctypes.c_float),
        ("mean", ctypes.c_int32),
        ("kl_exact", ctypes.c_int32),
        ("partial_lp", ctypes.c_void_p),
        ("partial_kl", ctypes.c_void_p),
        ("logp", ctypes.c_void_p),
        ("kl", ctypes.c_void_p),
        ("grad_logp", ctypes.c_void_p),
        ("grad_kl", ctypes.c_void_p),
    )


def library_path() -> Path:
    """Where the library is looked for: ``FASTGRPO_CUDA_LIB``, else ``build/libfastgrpo_cuda.so`` in the repo."""
    configured = _env.cuda_lib()
    if configured is not None:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "build" / LIBRARY_NAME


@functools.cache
def _load(path: str) -> ctypes.CDLL:
    if not Path(path).is_file():
        raise ValueError(f"backend='cuda' needs the native kernel library, not found at {path}; {BUILD_HINT}")
    try:
        lib = ctypes.CDLL(path)
    except OSError as err:
        raise ValueError(f"backend='cuda': cannot load {path} ({err}); {BUILD_HINT}") from err
    lib.fg_abi_version.restype = ctypes.c_int
    lib.fg_args_size.restype = ctypes.c_int64
    lib.fg_error_string.restype = ctypes.c_char_p
    lib.fg_error_string.argtypes = (ctypes.c_int,)
    lib.fg_validate.argtypes = (ctypes.POINTER(Args), ctypes.c_int)
    lib.fg_tiles.restype = ctypes.c_int64
    lib.fg_tiles.argtypes = (ctypes.c_int64,)
    for name in _OPS:
        getattr(lib, name).argtypes = (ctypes.POINTER(Args), ctypes.c_size_t)
    if lib.fg_abi_version() != ABI_VERSION or lib.fg_args_size() != ctypes.sizeof(Args):
        raise ValueError(
            f"{path} has native ABI version {lib.fg_abi_version()} (fg_args of {lib.fg_args_size()} bytes), this "
            f"fastgrpo needs {ABI_VERSION} ({ctypes.sizeof(Args)} bytes); rebuild it: `cmake --build build`"
        )
    return lib


def library() -> ctypes.CDLL:
    """The loaded native library (cached per path); ValueError naming the build command when it is missing."""
    return _load(str(library_path()))


def is_available() -> bool:
    """True when the library loads and a CUDA device is present (so ``backend="cuda"`` can run)."""
    try:
        library()
    except ValueError:
        return False
    return torch.cuda.is_available()


def _rows(x: Tensor | None) -> Rows:
    if x is None:
        return Rows()
    return Rows(x.data_ptr(), x.stride(0), _DTYPE_CODES[x.dtype], 0)


def _ptr(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _times(args: Args, t: Tensor, t_next: Tensor) -> None:
    args.t, args.t_next = t.data_ptr(), t_next.data_ptr()
    args.t_stride = 1 if t.dim() == 1 else 0


def _run(name: str, args: Args, device: torch.device) -> None:
    lib = library()
    stream = torch.cuda.current_stream(device).cuda_stream
    status = getattr(lib, name)(ctypes.byref(args), stream)
    if status != 0:
        raise RuntimeError(f"native kernel {name} failed: {lib.fg_error_string(status).decode()}")


def sde_step_cuda(
    x: Tensor,
    v: Tensor,
    t: Tensor,
    t_next: Tensor,
    noise: Tensor | None,
    seed_state: Tensor | None,
    noise_level: float,
    t_cap: float,
    seed: int,
    offset: int,
    mean: bool,
) -> tuple[Tensor, Tensor]:
    """``(x_next [B, N] in x.dtype, logp [B] float32)`` from rows ``[B, N]`` and contiguous float32 times."""
    batch, n = x.shape
    noisy = noise_level > 0.0
    tiles = -(-n // TILE)
    x_next = torch.empty((batch, n), dtype=x.dtype, device=x.device)
    partial = torch.empty((batch, tiles if noisy else 0), dtype=torch.float32, device=x.device)
    logp = torch.empty(batch, dtype=torch.float32, device=x.device) if noisy else None
    args = Args(batch=batch, numel=n, x=_rows(x), v=_rows(v), noise=_rows(noise), x_next=_rows(x_next))
    _times(args, t, t_next)
    args.seed_state = _ptr(seed_state)
    args.seed, args.offset = seed, offset
    args.noise_level, args.t_cap, args.mean, args.kl_exact = noise_level, t_cap, int(mean), 1
    args.partial_lp, args.logp = _ptr(partial) if noisy else None, _ptr(logp)
    _run("fg_sde_step", args, x.device)
    return x_next, logp if logp is not None else torch.zeros(batch, dtype=torch.float32, device=x.device)


def _step_args(x_next, x, v, v_ref, t, t_next, params: ops.StepParams) -> Args:
    args = Args(batch=v.shape[0], numel=v.shape[1], x=_rows(x), v=_rows(v), x_next=_rows(x_next), v_ref=_rows(v_ref))
    _times(args, t, t_next)
    args.noise_level, args.t_cap = params.noise_level, params.t_cap
    args.mean, args.kl_exact = int(params.mean), int(params.kl_exact)
    return args


def logprob_kl_impl(x_next, x, v, v_ref, t, t_next, params: ops.StepParams) -> tuple[Tensor, Tensor]:
    """``(logp [B] or [0], kl [B] or [0])`` from rows ``[B, N]``; log-prob when ``x_next, x`` are given."""
    batch, n = v.shape
    tiles = -(-n // TILE)
    has_logp, has_kl = x_next is not None, v_ref is not None
    partial_lp = torch.empty((batch, tiles if has_logp else 0), dtype=torch.float32, device=v.device)
    partial_kl = torch.empty((batch, tiles if has_kl else 0), dtype=torch.float32, device=v.device)
    logp = torch.empty(batch if has_logp else 0, dtype=torch.float32, device=v.device)
    kl = torch.empty(batch if has_kl else 0, dtype=torch.float32, device=v.device)
    args = _step_args(x_next, x, v, v_ref, t, t_next, params)
    args.partial_lp, args.logp = (_ptr(partial_lp), _ptr(logp)) if has_logp else (None, None)
    args.partial_kl, args.kl = (_ptr(partial_kl), _ptr(kl)) if has_kl else (None, None)
    _run("fg_logprob_kl", args, v.device)
    return logp, kl


def logprob_kl_backward_impl(x_next, x, v, v_ref, t, t_next, grad_logp, grad_kl, params: ops.StepParams) -> Tensor:
    """Gradient ``[B, N]`` (v's dtype) of ``sum(grad_logp * logp) + sum(grad_kl * kl)`` w.r.t. ``v``."""
    grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    grad_logp = grad_logp.float().contiguous() if grad_logp is not None else None
    grad_kl = grad_kl.float().contiguous() if grad_kl is not None else None
    args = _step_args(x_next, x, v, v_ref, t, t_next, params)
    args.grad_v = _rows(grad_v)
    args.grad_logp, args.grad_kl = _ptr(grad_logp), _ptr(grad_kl)
    _run("fg_logprob_kl_backward", args, v.device)
    return grad_v


class _NativeLogprobKL(torch.autograd.Function):
    """Log-prob / KL through the native kernels, differentiable w.r.t. ``v``: tensors plus one StepParams."""

    @staticmethod
    def forward(ctx, x_next, x, v, v_ref, t, t_next, params: ops.StepParams):  # type: ignore[override]
        ctx.save_for_backward(x_next, x, v, v_ref, t, t_next)
        ctx.params = params
        return logprob_kl_impl(x_next, x, v, v_ref, t, t_next, params)

    @staticmethod
    def backward(ctx, g_logp, g_kl):  # type: ignore[override]
        grad_v = ops._grad_v(ctx.saved_tensors, ctx.params, g_logp, g_kl, logprob_kl_backward_impl)
        return None, None, grad_v, None, None, None, None


def logprob_kl_cuda(x_next, x, v, v_ref, t, t_next, params: ops.StepParams) -> tuple[Tensor, Tensor]:
    """Differentiable (w.r.t. ``v``) log-prob / KL from rows ``[B, N]``, like ``ops.logprob_kl_triton``."""
    return _NativeLogprobKL.apply(x_next, x, v, v_ref, t, t_next, params)
