"""PyTorch references of the SDE step math (../SPEC.md, S1 and the KL of S3), for both samplers.

Two exploration samplers share one form: a step draws ``x_next ~ N(mu, s^2 I)`` with ``mu = cx x + cv v`` linear in
the latent and the velocity, so the log-probability, the KL and their gradients differ only in the per-sample
scalars ``(cx, cv, s)`` (:func:`coefficients`):

- ``"sde"`` (SPEC S1, Flow-GRPO): the Euler-Maruyama step of the marginal-preserving SDE,
  ``mu = x + [v + sigma_t^2/(2t) (x + (1 - t) v)] dt``, ``s = sigma_t sqrt(|dt|)``,
  ``sigma_t = a sqrt(t / (1 - min(t, t_cap)))``.
- ``"cps"``: coefficients-preserving sampling (Wang & Yu 2025, "Coefficients-Preserving Sampling for Reinforcement
  Learning with Flow Matching", arXiv:2509.05952). With the model's estimates of the clean sample
  ``x0 = x - t v`` and of the noise ``e = x + (1 - t) v``, ``mu = (1 - t_next) x0 + t_next cos(a pi/2) e`` and
  ``s = t_next sin(a pi/2)``: the coefficients of ``x0`` and of the total noise stay the schedule's
  ``(1 - t_next, t_next)`` exactly (``cos^2 + sin^2 = 1``), so the sample keeps the noise level the next step
  expects and the last step (``t_next = 0``) lands on a clean ``x0`` with no residual grain. ``a`` lies in
  ``[0, 1]``; ``t_cap`` is not used. ``sigma`` is reported equal to ``s`` (so the ``flow_grpo`` KL form equals the
  exact one for this sampler).

These are the definitions the fused kernels are tested against, and the ``backend="torch"`` implementation.
Math runs in float64 when any input is float64 (tests, gradcheck), else in float32, whatever the input dtype.
Shapes: latents ``[B, ...]``; times ``[B]`` or 0-d; results ``[B]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


#: the exploration samplers (module docstring); ``"sde"`` is SPEC S1's
SAMPLERS = ("sde", "cps")


class StepCoefficients(NamedTuple):
    """Per-sample scalars of one step, each ``[B, 1]`` (or ``[1, 1]``) in the compute dtype."""

    dt: torch.Tensor  # t_next - t (< 0)
    sigma: torch.Tensor  # sde: sigma_t = a * sqrt(t / (1 - min(t, t_cap))); cps: equal to std
    std: torch.Tensor  # s, the std of x_next: sde sigma_t * sqrt(|dt|), cps t_next * sin(a pi / 2)
    cx: torch.Tensor  # mu = cx * x + cv * v
    cv: torch.Tensor


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in tensors) else torch.float32


def check_sampler(sampler: str) -> int:
    """The kernels' integer code of ``sampler`` (0 ``"sde"``, 1 ``"cps"``); ``ValueError`` for another name."""
    if sampler not in SAMPLERS:
        raise ValueError(
            f"sampler={sampler!r} is not one of {SAMPLERS} ('sde': SPEC S1; 'cps': coefficients-preserving)"
        )
    return SAMPLERS.index(sampler)


def coefficients(
    t: torch.Tensor,
    t_next: torch.Tensor,
    noise_level: float,
    t_cap: float,
    dtype: torch.dtype,
    sampler: str = "sde",
) -> StepCoefficients:
    """Step scalars for times ``t, t_next`` (``[B]`` or 0-d), shaped ``[B, 1]`` for broadcasting over a row."""
    t = t.to(dtype).reshape(-1, 1)
    t_next = t_next.to(dtype).reshape(-1, 1)
    dt = t_next - t
    if check_sampler(sampler) == 1:  # cps: mu = (1 - t') (x - t v) + t' cos(a pi/2) (x + (1 - t) v)
        keep = math.cos(noise_level * math.pi / 2.0)
        std = t_next * math.sin(noise_level * math.pi / 2.0)
        cx = (1.0 - t_next) + t_next * keep
        cv = t_next * keep * (1.0 - t) - (1.0 - t_next) * t
        return StepCoefficients(dt, std, std, cx, cv)
    sigma = noise_level * torch.sqrt(t / (1.0 - torch.clamp(t, max=t_cap)))
    std = sigma * torch.sqrt(-dt)
    half = sigma * sigma / (2.0 * t)
    # mu = x + [v + half (x + (1 - t) v)] dt, expanded as cx x + cv v (the fused kernels' form)
    return StepCoefficients(dt, sigma, std, 1.0 + half * dt, dt * (1.0 + half * (1.0 - t)))


def step_mean(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
    """``mu = cx x + cv v`` on rows ``[B, N]`` in the compute dtype (``t`` is unused, kept for callers)."""
    del t
    return c.cx * x + c.cv * v


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
    sampler: str = "sde",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SDE step with the given ``noise [B, ...]``: returns ``(x_next [x.dtype], logp [B])``.

    ``logp`` is the log-density of the *stored* ``x_next`` (after rounding to ``x.dtype``), so that
    :func:`step_logprob_ref` of the result with the same ``v`` reproduces it exactly. Where the step has no
    noise (``noise_level = 0``: the Euler ODE step) ``logp`` is 0 by convention.
    """
    dtype = compute_dtype(x, v, noise)
    c = coefficients(t, t_next, noise_level, t_cap, dtype, sampler)
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
    sampler: str = "sde",
) -> torch.Tensor:
    """Log-probability ``[B]`` of the transition ``x -> x_next`` under the policy step with velocity ``v``."""
    dtype = compute_dtype(x_next, x, v)
    c = coefficients(t, t_next, noise_level, t_cap, dtype, sampler)
    mu = step_mean(_rows(x, dtype), _rows(v, dtype), t, c)
    return gaussian_logprob(_rows(x_next, dtype), mu, c.std, reduction == "mean")


def kl_coefficient(c: StepCoefficients, t: torch.Tensor, form: str) -> torch.Tensor:
    """``KL / ||v - v_ref||^2`` per sample: ``|dmu/dv|^2 / (2 s^2)`` (exact) or ``/ (2 sigma^2)`` (flow_grpo)."""
    del t
    var = c.std * c.std if form == "exact" else c.sigma * c.sigma
    return c.cv * c.cv / (2.0 * var)


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
    sampler: str = "sde",
) -> torch.Tensor:
    """Closed-form KL ``[B]`` between the policy and reference step Gaussians (same std), reduced per row."""
    dtype = compute_dtype(v, v_ref)
    c = coefficients(t, t_next, noise_level, t_cap, dtype, sampler)
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
    sampler: str = "sde",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(step_logprob_ref(...), velocity_kl_ref(...) or None when v_ref is None)``."""
    kw = {"noise_level": noise_level, "t_cap": t_cap, "reduction": reduction, "sampler": sampler}
    logp = step_logprob_ref(x_next, x, v, t, t_next, **kw)
    kl = None if v_ref is None else velocity_kl_ref(v, v_ref, t, t_next, form=form, **kw)
    return logp, kl
