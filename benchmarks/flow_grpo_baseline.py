"""The eager comparison point of the kernel benchmarks: the step math written the way Flow-GRPO trainers write it.

Public Flow-GRPO code bases compute one SDE step in a single eager function (called ``sde_step_with_logprob``
there) that upcasts everything to float32, builds the step mean from the scheduler's sigmas, draws the noise
with ``torch.randn``, materialises the element-wise Gaussian log-density and averages it over all non-batch
dimensions. The KL to the reference policy comes from a second call of the same function with the reference
velocity (under ``no_grad``), from the two returned means; the loss is the unclipped/clipped/max/mean pattern.
This module writes that pattern out from the formulas of ``SPEC.md`` so that the benchmarks can time it.

It is a *speed* baseline, not a reference: correctness is defined by ``fastgrpo.kernels.sde.naive`` and
``fastgrpo.kernels.grpo.naive``, which tests and benchmarks import. Where it differs from those definitions it
follows the Flow-GRPO habits on purpose: ``t_cap`` replaces ``sigma`` only where ``sigma == 1``, the log-prob of
a fresh sample is that of the float32 sample before it is rounded to the latent dtype, and the KL divides by
``2 sigma_t^2`` (fastgrpo's ``form="flow_grpo"``).

Shapes: latents ``[B, ...]`` (any float dtype), sigmas python floats or ``[B]`` tensors; per-sample results
``[B]`` float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_SQRT_2PI = math.log(math.sqrt(2.0 * math.pi))


def _per_sample(value: float | Tensor, like: Tensor) -> Tensor:
    """``value`` as float32 ``[B, 1, ..., 1]`` broadcasting over ``like [B, ...]``."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.dim() == 0:
        value = value.expand(like.shape[0])
    return value.reshape(-1, *([1] * (like.dim() - 1)))


def _non_batch_dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.dim()))


def sde_step_with_logprob(
    model_output: Tensor,
    sample: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    *,
    noise_level: float,
    sigma_max: float,
    prev_sample: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One SDE step and its log-probability, Flow-GRPO style.

    ``model_output`` is the velocity ``v [B, ...]``, ``sample`` the current latent ``x_t``; ``sigma`` and
    ``sigma_next`` are the times ``t`` and ``t_next`` (``t_next < t``); ``sigma_max`` is the value used instead of
    ``sigma`` in the noise scale's denominator where ``sigma == 1`` (the schedule's second sigma). With
    ``prev_sample`` given, only its log-probability is computed; otherwise it is drawn with ``noise`` (or fresh
    ``torch.randn``).

    Returns ``(prev_sample [B, ...] float32, log_prob [B] float32, prev_sample_mean [B, ...] float32,
    std_dev_t [B, 1, ...] float32)``.
    """
    model_output = model_output.float()
    sample = sample.float()
    sigma = _per_sample(sigma, sample)
    sigma_next = _per_sample(sigma_next, sample)
    dt = sigma_next - sigma

    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    prev_sample_mean = (
        sample * (1 + std_dev_t**2 / (2 * sigma) * dt)
        + model_output * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )

    if prev_sample is None:
        if noise is None:
            noise = torch.randn(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
        prev_sample = prev_sample_mean + std_dev_t * torch.sqrt(-1 * dt) * noise
    prev_sample = prev_sample.float()

    step_std = std_dev_t * torch.sqrt(-1 * dt)
    log_prob = -((prev_sample.detach() - prev_sample_mean) ** 2) / (2 * step_std**2)
    log_prob = log_prob - torch.log(step_std) - LOG_SQRT_2PI
    log_prob = log_prob.mean(dim=_non_batch_dims(log_prob))
    return prev_sample, log_prob, prev_sample_mean, std_dev_t


def sample_step(
    x: Tensor,
    v: Tensor,
    t: float | Tensor,
    t_next: float | Tensor,
    *,
    noise_level: float,
    t_cap: float,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """A rollout step as the sampling loop does it: ``(x_next in x.dtype, logp [B])``, noise drawn if not given."""
    with torch.no_grad():
        kw = {"noise_level": noise_level, "sigma_max": t_cap, "noise": noise}
        x_next, logp, _, _ = sde_step_with_logprob(v, x, t, t_next, **kw)
    return x_next.to(x.dtype), logp


def kl_from_means(mean: Tensor, mean_ref: Tensor, std_dev_t: Tensor) -> Tensor:
    """``||mean - mean_ref||^2_mean / (2 std_dev_t^2)`` per sample: ``[B]`` float32."""
    return ((mean - mean_ref) ** 2).mean(dim=_non_batch_dims(mean)) / (2 * std_dev_t.reshape(-1) ** 2)


def logprob_and_kl(
    x_next: Tensor,
    x: Tensor,
    v: Tensor,
    v_ref: Tensor,
    t: float | Tensor,
    t_next: float | Tensor,
    *,
    noise_level: float,
    t_cap: float,
) -> tuple[Tensor, Tensor]:
    """Training-time log-prob of the stored step and KL to the reference: two step calls, as the trainers do.

    Returns ``(logp [B], kl [B])`` float32, both differentiable w.r.t. ``v``.
    """
    kw = {"noise_level": noise_level, "sigma_max": t_cap, "prev_sample": x_next}
    _, logp, mean, std_dev_t = sde_step_with_logprob(v, x, t, t_next, **kw)
    with torch.no_grad():
        _, _, mean_ref, _ = sde_step_with_logprob(v_ref, x, t, t_next, **kw)
    return logp, kl_from_means(mean, mean_ref, std_dev_t)


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    kl: Tensor | None = None,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``mean(max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))) + beta * mean(kl)``, plus the usual logged stats.

    ``logp, old_logp``: ``[B]`` (one trained step); ``adv``: ``[B]``. Returns ``(loss 0-d, info)``; ``info``
    holds detached 0-d tensors (``policy_loss``, ``kl``, ``approx_kl``, ``clipfrac``).
    """
    ratio = torch.exp(logp - old_logp)
    unclipped_loss = -adv * ratio
    clipped_loss = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    policy_loss = torch.mean(torch.maximum(unclipped_loss, clipped_loss))
    kl_loss = torch.mean(kl) if kl is not None else torch.zeros((), device=logp.device)
    loss = policy_loss + beta * kl_loss
    info = {
        "policy_loss": policy_loss.detach(),
        "kl": kl_loss.detach(),
        "approx_kl": 0.5 * torch.mean((logp - old_logp).detach() ** 2),
        "clipfrac": torch.mean(((ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high)).float()),
    }
    return loss, info
