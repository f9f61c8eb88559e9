"""Triton implementations of the SDE-step operators, their ``torch.library`` registration and autograd.

Everything here takes rows ``[B, N]`` (elements of a row contiguous) and checked float32 times; the public,
validating entry points live in ``api.py``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastgrpo.kernels import _registry

QUARTER = 1024  # elements per quarter tile; a program owns 4 * QUARTER elements of one sample
TILE = 4 * QUARTER
BACKWARD_BLOCK = 2048
NUM_WARPS = 4  # 8 elements per thread per quarter: 128-bit loads for 16-bit dtypes, two for float32


@dataclass(frozen=True)
class StepParams:
    """Scalars of a log-prob / KL evaluation (the one parameter object of the autograd function)."""

    noise_level: float
    t_cap: float
    mean: bool
    kl_exact: bool
    kind: int = 0  # sampler: 0 SPEC S1's SDE, 1 coefficients-preserving (naive.SAMPLERS)


def _fused() -> Any:
    from fastgrpo.kernels.sde import fused  # imported on first use: Triton reads TRITON_INTERPRET then

    return fused


def _t_stride(t: Tensor) -> int:
    return t.stride(0) if t.dim() == 1 else 0


def _block_p(tiles: int) -> int:
    return min(1024, max(16, 1 << (tiles - 1).bit_length()))


def _finalize(
    launch: Callable[[Any], Any],
    partial_lp: Tensor | None,
    partial_kl: Tensor | None,
    t: Tensor,
    t_next: Tensor,
    n: int,
    params: StepParams,
) -> tuple[Tensor, Tensor]:
    some = partial_lp if partial_lp is not None else partial_kl
    assert some is not None
    batch, tiles = some.shape
    logp = torch.empty(batch if partial_lp is not None else 0, dtype=torch.float32, device=some.device)
    kl = torch.empty(batch if partial_kl is not None else 0, dtype=torch.float32, device=some.device)
    launch(_fused()._finalize_kernel)[(batch,)](
        some if partial_lp is None else partial_lp,
        some if partial_kl is None else partial_kl,
        logp if partial_lp is not None else kl,
        kl if partial_kl is not None else logp,
        t,
        t_next,
        _t_stride(t),
        n,
        tiles,
        params.noise_level,
        params.t_cap,
        HAS_LOGP=partial_lp is not None,
        HAS_KL=partial_kl is not None,
        MEAN=params.mean,
        KL_EXACT=params.kl_exact,
        BLOCK_P=_block_p(tiles),
        KIND=params.kind,
        num_warps=1,
    )
    return logp, kl


def sde_step_impl(
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
    launch: Callable[[Any], Any],
    kind: int = 0,
) -> tuple[Tensor, Tensor]:
    """``(x_next [B, N] in x.dtype, logp [B] float32)``; noise from ``noise`` or Philox (state or ints)."""
    batch, n = x.shape
    tiles = -(-n // TILE)
    mode = 0 if noise_level == 0.0 else (1 if noise is not None else 2)
    x_next = torch.empty((batch, n), dtype=x.dtype, device=x.device)
    partial = torch.empty((batch, tiles if mode else 0), dtype=torch.float32, device=x.device)
    launch(_fused()._sde_step_partial_kernel)[(tiles, batch)](
        x,
        v,
        noise if noise is not None else x,
        x_next,
        t,
        t_next,
        seed_state if seed_state is not None else t,
        partial,
        n,
        tiles,
        x.stride(0),
        v.stride(0),
        noise.stride(0) if noise is not None else 0,
        _t_stride(t),
        noise_level,
        t_cap,
        seed,
        offset,
        NOISE_MODE=mode,
        SEED_FROM_PTR=seed_state is not None,
        Q=QUARTER,
        KIND=kind,
        num_warps=NUM_WARPS,
    )
    if mode == 0:
        return x_next, torch.zeros(batch, dtype=torch.float32, device=x.device)
    logp, _ = _finalize(launch, partial, None, t, t_next, n, StepParams(noise_level, t_cap, mean, True, kind))
    return x_next, logp


def logprob_kl_impl(
    x_next: Tensor | None,
    x: Tensor | None,
    v: Tensor,
    v_ref: Tensor | None,
    t: Tensor,
    t_next: Tensor,
    params: StepParams,
    launch: Callable[[Any], Any],
) -> tuple[Tensor, Tensor]:
    """``(logp [B] or [0], kl [B] or [0])``: log-prob when ``x_next, x`` are given, KL when ``v_ref`` is."""
    batch, n = v.shape
    tiles = -(-n // TILE)
    has_logp, has_kl = x_next is not None, v_ref is not None
    partial_lp = torch.empty((batch, tiles), dtype=torch.float32, device=v.device) if has_logp else None
    partial_kl = torch.empty((batch, tiles), dtype=torch.float32, device=v.device) if has_kl else None
    some = partial_lp if partial_lp is not None else partial_kl
    launch(_fused()._logprob_kl_partial_kernel)[(tiles, batch)](
        x_next if x_next is not None else v,
        x if x is not None else v,
        v,
        v_ref if v_ref is not None else v,
        t,
        t_next,
        partial_lp if partial_lp is not None else some,
        partial_kl if partial_kl is not None else some,
        n,
        tiles,
        x_next.stride(0) if x_next is not None else 0,
        x.stride(0) if x is not None else 0,
        v.stride(0),
        v_ref.stride(0) if v_ref is not None else 0,
        _t_stride(t),
        params.noise_level,
        params.t_cap,
        HAS_LOGP=has_logp,
        HAS_KL=has_kl,
        Q=QUARTER,
        KIND=params.kind,
        num_warps=NUM_WARPS,
    )
    return _finalize(launch, partial_lp, partial_kl, t, t_next, n, params)


def logprob_kl_backward_impl(
    x_next: Tensor | None,
    x: Tensor | None,
    v: Tensor,
    v_ref: Tensor | None,
    t: Tensor,
    t_next: Tensor,
    grad_logp: Tensor | None,
    grad_kl: Tensor | None,
    params: StepParams,
    launch: Callable[[Any], Any],
) -> Tensor:
    """Gradient ``[B, N]`` (v's dtype) of ``sum(grad_logp * logp) + sum(grad_kl * kl)`` w.r.t. ``v``."""
    batch, n = v.shape
    has_logp, has_kl = grad_logp is not None, grad_kl is not None
    grad_v = torch.empty((batch, n), dtype=v.dtype, device=v.device)
    launch(_fused()._logprob_kl_backward_kernel)[(-(-n // BACKWARD_BLOCK), batch)](
        x_next if has_logp else v,
        x if has_logp else v,
        v,
        v_ref if has_kl else v,
        grad_logp.contiguous() if grad_logp is not None else t,
        grad_kl.contiguous() if grad_kl is not None else t,
        grad_v,
        t,
        t_next,
        n,
        x_next.stride(0) if has_logp else 0,
        x.stride(0) if has_logp else 0,
        v.stride(0),
        v_ref.stride(0) if has_kl else 0,
        _t_stride(t),
        params.noise_level,
        params.t_cap,
        HAS_LOGP=has_logp,
        HAS_KL=has_kl,
        MEAN=params.mean,
        KL_EXACT=params.kl_exact,
        BLOCK=BACKWARD_BLOCK,
        KIND=params.kind,
        num_warps=NUM_WARPS,
    )
    return grad_v


def _upstream(grad: Tensor | None, present: bool) -> Tensor | None:
    return grad if (present and grad is not None and grad.numel() > 0) else None


def _grad_v(saved: tuple, params: StepParams, g_logp, g_kl, backward: Callable[..., Tensor]) -> Tensor | None:
    x_next, x, v, v_ref, t, t_next = saved
    g_logp = _upstream(g_logp, x_next is not None)
    g_kl = _upstream(g_kl, v_ref is not None)
    if g_logp is None and g_kl is None:
        return None
    return backward(x_next, x, v, v_ref, t, t_next, g_logp, g_kl, params)


class _LogprobKLFunction(torch.autograd.Function):
    """Plain autograd path (no ``torch.library``): tensors plus one :class:`StepParams`."""

    @staticmethod
    def forward(ctx, x_next, x, v, v_ref, t, t_next, params: StepParams):  # type: ignore[override]
        ctx.save_for_backward(x_next, x, v, v_ref, t, t_next)
        ctx.params = params
        return logprob_kl_impl(x_next, x, v, v_ref, t, t_next, params, _registry.direct)

    @staticmethod
    def backward(ctx, g_logp, g_kl):  # type: ignore[override]
        def run(*args):
            return logprob_kl_backward_impl(*args, launch=_registry.direct)

        grad_v = _grad_v(ctx.saved_tensors, ctx.params, g_logp, g_kl, run)
        return None, None, grad_v, None, None, None, None


_SDE_SCHEMA = (
    "(Tensor x, Tensor v, Tensor t, Tensor t_next, Tensor? noise, Tensor? seed_state, float noise_level, "
    "float t_cap, int seed, int offset, bool mean, int kind) -> (Tensor, Tensor)"
)
_LPKL_ARGS = "Tensor? x_next, Tensor? x, Tensor v, Tensor? v_ref, Tensor t, Tensor t_next"
_SCALARS = "float noise_level, float t_cap, bool mean, bool kl_exact, int kind"
_LPKL_SCHEMA = f"({_LPKL_ARGS}, {_SCALARS}) -> (Tensor, Tensor)"
_LPKL_BWD_SCHEMA = f"({_LPKL_ARGS}, Tensor? grad_logp, Tensor? grad_kl, {_SCALARS}) -> Tensor"


def _sde_op_impl(x, v, t, t_next, noise, seed_state, noise_level, t_cap, seed, offset, mean, kind, *, launch):
    return sde_step_impl(x, v, t, t_next, noise, seed_state, noise_level, t_cap, seed, offset, mean, launch, kind)


def _lpkl_op_impl(x_next, x, v, v_ref, t, t_next, noise_level, t_cap, mean, kl_exact, kind, *, launch):
    params = StepParams(noise_level, t_cap, mean, kl_exact, kind)
    return logprob_kl_impl(x_next, x, v, v_ref, t, t_next, params, launch)


def _lpkl_bwd_op_impl(x_next, x, v, v_ref, t, t_next, g_lp, g_kl, noise_level, t_cap, mean, kl_exact, kind, *, launch):
    params = StepParams(noise_level, t_cap, mean, kl_exact, kind)
    return logprob_kl_backward_impl(x_next, x, v, v_ref, t, t_next, g_lp, g_kl, params, launch)


def _register() -> tuple[Any, Any] | None:
    """Register ``fastgrpo::sde_step``, ``fastgrpo::logprob_kl`` (+ backward, autograd); None without the API."""
    sde_op = _registry.define_op("fastgrpo::sde_step", _sde_op_impl, _SDE_SCHEMA)
    lpkl_op = _registry.define_op("fastgrpo::logprob_kl", _lpkl_op_impl, _LPKL_SCHEMA)
    bwd_op = _registry.define_op("fastgrpo::logprob_kl_backward", _lpkl_bwd_op_impl, _LPKL_BWD_SCHEMA)
    if sde_op is None or lpkl_op is None or bwd_op is None:
        return None

    def setup_context(ctx, inputs, output):
        x_next, x, v, v_ref, t, t_next, noise_level, t_cap, mean, kl_exact, kind = inputs
        ctx.save_for_backward(x_next, x, v, v_ref, t, t_next)
        ctx.params = StepParams(noise_level, t_cap, mean, kl_exact, kind)

    def backward(ctx, g_logp, g_kl):
        def run(x_next, x, v, v_ref, t, t_next, gl, gk, p):
            return bwd_op(x_next, x, v, v_ref, t, t_next, gl, gk, p.noise_level, p.t_cap, p.mean, p.kl_exact, p.kind)

        grad_v = _grad_v(ctx.saved_tensors, ctx.params, g_logp, g_kl, run)
        return None, None, grad_v, None, None, None, None, None, None, None, None

    lpkl_op.register_autograd(backward, setup_context=setup_context)
    return sde_op, lpkl_op


_OPS = _register()


def sde_step_triton(
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
    kind: int = 0,
) -> tuple[Tensor, Tensor]:
    """Dispatch to the registered operator or the plain launch (no gradient flows through a sampling step)."""
    args = (x, v, t, t_next, noise, seed_state, noise_level, t_cap, seed, offset, mean)
    if _OPS is not None and _registry.custom_ops_enabled():
        return _OPS[0](*args, kind)
    return sde_step_impl(*args, launch=_registry.direct, kind=kind)


def logprob_kl_triton(
    x_next: Tensor | None,
    x: Tensor | None,
    v: Tensor,
    v_ref: Tensor | None,
    t: Tensor,
    t_next: Tensor,
    params: StepParams,
) -> tuple[Tensor, Tensor]:
    """Differentiable (w.r.t. ``v``) log-prob / KL through the registered operator or the autograd function."""
    if _OPS is not None and _registry.custom_ops_enabled():
        p = params
        return _OPS[1](x_next, x, v, v_ref, t, t_next, p.noise_level, p.t_cap, p.mean, p.kl_exact, p.kind)
    return _LogprobKLFunction.apply(x_next, x, v, v_ref, t, t_next, params)
