"""PyTorch references of the SDE step math (../SPEC.md, S1 and the KL of S3).

These are the definitions the fused kernels are tested against, and the ``backend="torch"`` implementation.
Math runs in float64 when any input is float64 (tests, gradcheck), else in float32, whatever the input dtype.
Shapes: latents ``[B, ...]``; times ``[B]`` or 0-d; results ``[B]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class StepCoefficients(NamedTuple):
    """Per-sample scalars of one Euler-Maruyama step, each ``[B, 1]`` (or ``[1, 1]``) in the compute dtype."""

    dt: torch.Tensor  # t_next - t (< 0)
    sigma: torch.Tensor  # sigma_t = a * sqrt(t / (1 - min(t, t_cap)))
    std: torch.Tensor  # s = sigma_t * sqrt(|dt|)
    half: torch.Tensor  # sigma_t**2 / (2 t)


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in tensors) else torch.float32


def coefficients(
    t: torch.Tensor, t_next: torch.Tensor, noise_level: float, t_cap: float, dtype: torch.dtype
) -> StepCoefficients:
    """Step scalars for times ``t, t_next`` (``[B]`` or 0-d), shaped ``[B, 1]`` for broadcasting over a row."""
    t = t.to(dtype).reshape(-1, 1)
    t_next = t_next.to(dtype).reshape(-1, 1)
    dt = t_next - t
    sigma = noise_level * torch.sqrt(t / (1.0 - torch.clamp(t, max=t_cap)))
    std = sigma * torch.sqrt(-dt)
    half = sigma * sigma / (2.0 * t)
    return StepCoefficients(dt, sigma, std, half)


def step_mean(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
    """``mu = x + [v + sigma^2/(2t) (x + (1 - t) v)] dt`` on rows ``[B, N]`` in the compute dtype."""
    t = t.to(x.dtype).reshape(-1, 1)
    return x + (v + c.half * (x + (1.0 - t) * v)) * c.dt


def _reduce(elements: torch.Tensor, mean: bool) -> torch.Tensor:
    return elements.mean(dim=1) if mean else elements.sum(dim=1)


def gaussian_logprob(x_next: torch.Tensor, mu: torch.Tensor, std: torch.Tensor, mean: bool) -> torch.Tensor:
    """Reduced ``log N(x_next; mu, std^2 I)`` per row: ``-(x_next - mu)^2/(2 s^2) - log s - log(2 pi)/2``."""
    elements = -((x_next - mu) ** 2) / (2.0 * std * std) - torch.log(std) - HALF_LOG_2PI
    return _reduce(elements, mean)


def _rows(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).to(dtype)


def sde_step_ref(
    x: torch.Tensor,
    v: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    noise: torch.Tensor,
    *,
    noise_level: float,
    t_cap: float,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SDE step with the given ``noise [B, ...]``: returns ``(x_next [x.dtype], logp [B])``.

    ``logp`` is the log-density of the *stored* ``x_next`` (after rounding to ``x.dtype``), so that
    :func:`step_logprob_ref` of the result with the same ``v`` reproduces it exactly. Where the step has no
    noise (``noise_level = 0``: the Euler ODE step) ``logp`` is 0 by convention.
    """
    dtype = compute_dtype(x, v, noise)
    c = coefficients(t, t_next, noise_level, t_cap, dtype)
    mu = step_mean(_rows(x, dtype), _rows(v, dtype), t, c)
    x_next = (mu + c.std * _rows(noise, dtype)).to(x.dtype)
    logp = gaussian_logprob(_rows(x_next, dtype), mu, c.std, reduction == "mean")
    logp = torch.where(c.std.reshape(-1) > 0, logp, torch.zeros_like(logp))
    return x_next.reshape(x.shape), logp.to(torch.float32 if dtype != torch.float64 else dtype)


def step_logprob_ref(
    x_next: torch.Tensor,
    x: torch.Tensor,
    v: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    *,
    noise_level: float,
    t_cap: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """Log-probability ``[B]`` of the transition ``x -> x_next`` under the policy step with velocity ``v``."""
    dtype = compute_dtype(x_next, x, v)
    c = coefficients(t, t_next, noise_level, t_cap, dtype)
    mu = step_mean(_rows(x, dtype), _rows(v, dtype), t, c)
    return gaussian_logprob(_rows(x_next, dtype), mu, c.std, reduction == "mean")


def kl_coefficient(c: StepCoefficients, t: torch.Tensor, form: str) -> torch.Tensor:
    """``KL / ||v - v_ref||^2`` per sample: ``|dmu/dv|^2 / (2 s^2)`` (exact) or ``/ (2 sigma^2)`` (flow_grpo)."""
    t = t.to(c.dt.dtype).reshape(-1, 1)
    dmu_dv = c.dt * (1.0 + c.half * (1.0 - t))
    var = c.std * c.std if form == "exact" else c.sigma * c.sigma
    return dmu_dv * dmu_dv / (2.0 * var)


def velocity_kl_ref(
    v: torch.Tensor,
    v_ref: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    *,
    noise_level: float,
    t_cap: float,
    reduction: str = "mean",
    form: str = "exact",
) -> torch.Tensor:
    """Closed-form KL ``[B]`` between the policy and reference step Gaussians (same std), reduced per row."""
    dtype = compute_dtype(v, v_ref)
    c = coefficients(t, t_next, noise_level, t_cap, dtype)
    diff = _rows(v, dtype) - _rows(v_ref, dtype)
    return _reduce(kl_coefficient(c, t, form) * diff * diff, reduction == "mean")


def logprob_kl_ref(
    x_next: torch.Tensor,
    x: torch.Tensor,
    v: torch.Tensor,
    v_ref: torch.Tensor | None,
    t: torch.Tensor,
    t_next: torch.Tensor,
    *,
    noise_level: float,
    t_cap: float,
    reduction: str = "mean",
    form: str = "exact",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(step_logprob_ref(...), velocity_kl_ref(...) or None when v_ref is None)``."""
    kw = {"noise_level": noise_level, "t_cap": t_cap, "reduction": reduction}
    logp = step_logprob_ref(x_next, x, v, t, t_next, **kw)
    kl = None if v_ref is None else velocity_kl_ref(v, v_ref, t, t_next, form=form, **kw)
    return logp, kl
