"""Triton implementation of the GRPO loss, its ``torch.library`` registration and autograd."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastgrpo.kernels import _registry
from fastgrpo.kernels.grpo.naive import STAT_NAMES


@dataclass(frozen=True)
class LossParams:
    """Scalars of the clipped objective (the one parameter object of the autograd function)."""

    clip_low: float
    clip_high: float
    beta: float


def _block(m: int) -> int:
    return min(1024, max(32, 1 << (m - 1).bit_length()))


def grpo_loss_impl(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    kl: Tensor | None,
    params: LossParams,
    launch: Callable[[Any], Any],
) -> tuple[Tensor, Tensor]:
    """``(stats [10] float32, grad_logp [M])`` for flat float32 ``logp, old_logp [M]`` and ``adv``."""
    from fastgrpo.kernels.grpo import fused

    m = logp.numel()
    stats = torch.empty(len(STAT_NAMES), dtype=torch.float32, device=logp.device)
    grad_logp = torch.empty(m, dtype=torch.float32, device=logp.device)
    launch(fused._grpo_loss_kernel)[(1,)](
        logp,
        old_logp,
        adv,
        kl if kl is not None else logp,
        grad_logp,
        stats,
        m,
        m // adv.numel(),
        params.clip_low,
        params.clip_high,
        params.beta,
        HAS_KL=kl is not None,
        BLOCK=_block(m),
        num_warps=4,
    )
    return stats, grad_logp


def _grads(g_stats: Tensor | None, grad_logp: Tensor, kl: Tensor | None, beta: float):
    if g_stats is None:
        return None, None
    g = g_stats[0]
    grad_kl = None if kl is None else torch.full_like(kl, beta / kl.numel()) * g
    return grad_logp * g, grad_kl


class _GRPOLossFunction(torch.autograd.Function):
    """Plain autograd path (no ``torch.library``): tensors plus one :class:`LossParams`."""

    @staticmethod
    def forward(ctx, logp, old_logp, adv, kl, params: LossParams):  # type: ignore[override]
        stats, grad_logp = grpo_loss_impl(logp, old_logp, adv, kl, params, _registry.direct)
        ctx.save_for_backward(grad_logp, kl)
        ctx.beta = params.beta
        ctx.mark_non_differentiable(grad_logp)
        return stats, grad_logp

    @staticmethod
    def backward(ctx, g_stats, _g_grad):  # type: ignore[override]
        grad_logp, kl = ctx.saved_tensors
        g_logp, g_kl = _grads(g_stats, grad_logp, kl, ctx.beta)
        return g_logp, None, None, g_kl, None


_SCHEMA = (
    "(Tensor logp, Tensor old_logp, Tensor adv, Tensor? kl, float clip_low, float clip_high, float beta)"
    " -> (Tensor, Tensor)"
)


def _op_impl(logp, old_logp, adv, kl, clip_low, clip_high, beta, *, launch):
    return grpo_loss_impl(logp, old_logp, adv, kl, LossParams(clip_low, clip_high, beta), launch)


def _register() -> Any | None:
    """Register ``fastgrpo::grpo_loss`` with its autograd; None without the API."""
    op = _registry.define_op("fastgrpo::grpo_loss", _op_impl, _SCHEMA)
    if op is None:
        return None

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1], inputs[3])
        ctx.beta = inputs[6]
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, g_stats, _g_grad):
        grad_logp, kl = ctx.saved_tensors
        g_logp, g_kl = _grads(g_stats, grad_logp, kl, ctx.beta)
        return g_logp, None, None, g_kl, None, None, None

    op.register_autograd(backward, setup_context=setup_context)
    return op


_OP = _register()


def grpo_loss_triton(logp: Tensor, old_logp: Tensor, adv: Tensor, kl: Tensor | None, params: LossParams) -> Tensor:
    """``stats [10]`` whose entry 0 (the loss) is differentiable w.r.t. ``logp`` and ``kl``."""
    if _OP is not None and _registry.custom_ops_enabled():
        stats, _ = _OP(logp, old_logp, adv, kl, params.clip_low, params.clip_high, params.beta)
    else:
        stats, _ = _GRPOLossFunction.apply(logp, old_logp, adv, kl, params)
    return stats
