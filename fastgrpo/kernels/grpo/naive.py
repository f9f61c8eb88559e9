"""PyTorch reference of the clipped GRPO objective (../SPEC.md, S3), written the way it is usually written.

``logp, old_logp [B] or [B, T]``; ``adv [B]`` (one advantage per sample, shared by its steps) or logp's shape;
``kl`` logp's shape or None. Loss = mean of ``max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))`` over all
entries + beta * mean(kl), with ``r = exp(logp - old_logp)``.
"""

from __future__ import annotations

import torch

STAT_NAMES = (
    "loss",
    "policy_loss",
    "kl",
    "clip_frac",
    "clip_frac_low",
    "clip_frac_high",
    "approx_kl",
    "ratio_mean",
    "ratio_min",
    "ratio_max",
)


def broadcast_adv(adv: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """``adv`` expanded to ``logp``'s shape (``[B]`` -> ``[B, T]``)."""
    return adv.reshape(adv.shape + (1,) * (logp.dim() - adv.dim())).expand_as(logp)


def grpo_loss_ref(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss 0-d, stats [len(STAT_NAMES)])``; ``loss`` differentiable w.r.t. ``logp`` and ``kl``."""
    a = broadcast_adv(adv, logp).to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    unclipped = -a * ratio
    clipped = -a * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    policy = torch.maximum(unclipped, clipped).mean()
    kl_mean = kl.mean() if kl is not None else torch.zeros((), dtype=logp.dtype, device=logp.device)
    loss = policy + beta * kl_mean
    with torch.no_grad():
        low = (ratio < 1.0 - clip_low) & (a < 0)
        high = (ratio > 1.0 + clip_high) & (a > 0)
        log_ratio = logp - old_logp
        stats = torch.stack(
            [
                loss.detach(),
                policy.detach(),
                kl_mean.detach(),
                (low | high).to(logp.dtype).mean(),
                low.to(logp.dtype).mean(),
                high.to(logp.dtype).mean(),
                ((ratio - 1.0) - log_ratio).mean(),
                ratio.mean(),
                ratio.min(),
                ratio.max(),
            ]
        )
    return loss, stats
