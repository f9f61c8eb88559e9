"""Triton kernel of the clipped GRPO loss: value, gradient and statistics in one launch.

The loss is terminal, so its gradient is computed in the forward pass (one read of the inputs); backward only
scales it by the upstream gradient. One program walks all ``M`` entries in blocks of ``BLOCK`` and reduces in a
fixed order (deterministic; ``M`` = samples x trained steps is small).
"""

from __future__ import annotations

import triton
import triton.language as tl


# Vector-Jacobian product: with u = -A r, c = -A clip(r, 1 - eps_low, 1 + eps_high) and r = exp(logp - old),
# d max(u, c) / d logp = -A r where u >= c (unclipped branch, clip inactive) and 0 where c > u; the mean
# divides by M, and d (beta mean(kl)) / d kl = beta / M.
@triton.jit
def _grpo_loss_kernel(
    logp_ptr,  # float32 [M] current log-probabilities
    old_ptr,  # float32 [M] log-probabilities at sampling time
    adv_ptr,  # float32 advantages; entry i uses adv[i // ADV_DIV]
    kl_ptr,  # float32 [M] KL per entry (when HAS_KL)
    grad_logp_ptr,  # float32 [M] out: d loss / d logp
    stats_ptr,  # float32 [10] out: loss, policy, kl, clip fractions (all, low, high), approx-KL, ratio mean/min/max
    M,  # number of entries
    ADV_DIV,  # entries per advantage (T for adv [B] with logp [B, T], else 1)
    clip_low,
    clip_high,
    beta,
    HAS_KL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    inv_m = 1.0 / M.to(tl.float32)
    acc_pol = tl.zeros([BLOCK], dtype=tl.float32)
    acc_kl = tl.zeros([BLOCK], dtype=tl.float32)
    acc_low = tl.zeros([BLOCK], dtype=tl.float32)
    acc_high = tl.zeros([BLOCK], dtype=tl.float32)
    acc_akl = tl.zeros([BLOCK], dtype=tl.float32)
    acc_r = tl.zeros([BLOCK], dtype=tl.float32)
    r_min = tl.full([BLOCK], float("inf"), dtype=tl.float32)
    r_max = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    for start in range(0, M, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < M
        logp = tl.load(logp_ptr + i, mask=mask, other=0.0)
        old = tl.load(old_ptr + i, mask=mask, other=0.0)
        a = tl.load(adv_ptr + i // ADV_DIV, mask=mask, other=0.0)
        log_r = logp - old
        r = tl.exp(log_r)
        unclipped = -a * r
        clipped = -a * tl.minimum(tl.maximum(r, 1.0 - clip_low), 1.0 + clip_high)
        keep = unclipped >= clipped
        tl.store(grad_logp_ptr + i, tl.where(keep, unclipped, 0.0) * inv_m, mask=mask)
        acc_pol += tl.where(mask, tl.maximum(unclipped, clipped), 0.0)
        if HAS_KL:
            acc_kl += tl.load(kl_ptr + i, mask=mask, other=0.0)
        acc_low += tl.where(mask & (r < 1.0 - clip_low) & (a < 0.0), 1.0, 0.0)
        acc_high += tl.where(mask & (r > 1.0 + clip_high) & (a > 0.0), 1.0, 0.0)
        acc_akl += tl.where(mask, (r - 1.0) - log_r, 0.0)
        acc_r += tl.where(mask, r, 0.0)
        r_min = tl.minimum(r_min, tl.where(mask, r, float("inf")))
        r_max = tl.maximum(r_max, tl.where(mask, r, float("-inf")))
    policy = tl.sum(acc_pol, axis=0) * inv_m
    kl = tl.sum(acc_kl, axis=0) * inv_m
    low = tl.sum(acc_low, axis=0) * inv_m
    high = tl.sum(acc_high, axis=0) * inv_m
    tl.store(stats_ptr + 0, policy + beta * kl)
    tl.store(stats_ptr + 1, policy)
    tl.store(stats_ptr + 2, kl)
    tl.store(stats_ptr + 3, low + high)
    tl.store(stats_ptr + 4, low)
    tl.store(stats_ptr + 5, high)
    tl.store(stats_ptr + 6, tl.sum(acc_akl, axis=0) * inv_m)
    tl.store(stats_ptr + 7, tl.sum(acc_r, axis=0) * inv_m)
    tl.store(stats_ptr + 8, tl.min(r_min, axis=0))
    tl.store(stats_ptr + 9, tl.max(r_max, axis=0))
