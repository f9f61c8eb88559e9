"""SPEC S1 hyperparameters and the per-step Gaussian of the SDE (thin, validated views of the kernel math).

The math itself lives once, in :mod:`fastgrpo.kernels.sde.naive` (the reference the fused kernels are tested
against); this module adds the typed configuration (:class:`SDEConfig`), the schedule-dependent default of
``t_cap``, and :class:`StepSpec`: what every step-kernel call of one resolution takes, resolved once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fastgrpo.core.schedule import StepSchedule
from fastgrpo.kernels.sde import naive

__all__ = ["BACKENDS", "SDEConfig", "StepSpec", "sigma_t", "step_mean_std"]

#: kernel backends of :mod:`fastgrpo.kernels` (``auto``: Triton on CUDA tensors, the PyTorch reference on CPU)
BACKENDS = ("auto", "triton", "torch", "cuda")


@dataclass(frozen=True)
class StepSpec:
    """The step math of one resolution, resolved once and passed whole to the rollout and the update.

    Attributes:
        noise_level: ``a`` of SPEC S1 on the SDE steps (0 gives the ODE).
        t_cap: the resolved cap of ``t`` (a float in ``[0, 1)``; :meth:`SDEConfig.spec` takes the schedule's
            default when the config leaves it unset).
        reduction: ``"mean"`` or ``"sum"`` of the per-element log-density (SPEC S1).
        backend: the kernel backend (:data:`BACKENDS`).
        sampler: the exploration step, ``"sde"`` (SPEC S1) or ``"cps"`` (coefficients-preserving;
            :attr:`SDEConfig.sampler`).

    Raises ``ValueError`` for a value outside those ranges.
    """

    noise_level: float
    t_cap: float
    reduction: Literal["mean", "sum"] = "mean"
    backend: str = "auto"
    sampler: Literal["sde", "cps"] = "sde"

    def __post_init__(self) -> None:
        if not (isinstance(self.noise_level, (int, float)) and self.noise_level >= 0):
            raise ValueError(f"StepSpec.noise_level must be a float >= 0, got {self.noise_level!r}")
        if not (isinstance(self.t_cap, (int, float)) and 0.0 <= self.t_cap < 1.0):
            raise ValueError(f"StepSpec.t_cap must lie in [0, 1), got {self.t_cap!r}")
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"StepSpec.reduction must be 'mean' or 'sum', got {self.reduction!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"StepSpec.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.sampler not in naive.SAMPLERS:
            raise ValueError(f"StepSpec.sampler must be one of {naive.SAMPLERS}, got {self.sampler!r}")
        if self.sampler == "cps" and self.noise_level > 1.0:
            raise ValueError(f"StepSpec.noise_level must lie in [0, 1] for sampler 'cps', got {self.noise_level!r}")

    def has_noise(self, t_next: float) -> bool:
        """Whether a step to ``t_next`` with this spec draws noise (CPS steps to ``t_next = 0`` are deterministic)."""
        return self.noise_level > 0.0 and (self.sampler == "sde" or t_next > 0.0)


@dataclass(frozen=True)
class SDEConfig:
    """How rollouts explore (SPEC S1).

    Attributes:
        noise_level: ``a`` in ``sigma_t = a sqrt(t / (1 - min(t, t_cap)))``; 0 gives the deterministic ODE.
            Public Flow-GRPO runs use about 0.7.
        t_cap: cap on ``t`` inside the square root, keeping ``sigma_t`` finite at ``t = 1``; None takes the
            schedule's second time (the first step borrows its neighbour's denominator).
        reduction: how the per-element log-density is reduced per sample: ``"mean"`` (Flow-GRPO's convention,
            so its clip ranges of 1e-4…1e-5 carry over) or ``"sum"`` (the true log-density).
        sampler: the exploration step of the SDE steps. ``"sde"``: SPEC S1's Euler-Maruyama step of the
            marginal-preserving SDE (Flow-GRPO, Liu et al. 2025, arXiv:2505.05470). ``"cps"``:
            coefficients-preserving sampling (Wang & Yu 2025, arXiv:2509.05952; Flow-GRPO's ``sde_type="cps"``):
            ``x_next ~ N((1 - t') x0 + t' cos(a pi/2) eps, (t' sin(a pi/2))^2)`` from the model's estimates of the
            clean sample and the noise, so every sample keeps exactly the noise level of the schedule and the
            rollout ends clean, without the residual grain of the plain SDE; ``a = noise_level`` in ``[0, 1]``
            (``t_cap`` unused). A CPS step to ``t = 0`` has no noise, so it is an ODE step and never trained.
            On the built-in task CPS learns faster than ``"sde"`` in the first minute and less in five (README
            "Recipes"), so ``"sde"`` is the default.
    """

    noise_level: float = 0.7
    t_cap: float | None = None
    reduction: Literal["mean", "sum"] = "mean"
    sampler: Literal["sde", "cps"] = "sde"

    def __post_init__(self) -> None:
        if not (isinstance(self.noise_level, (int, float)) and self.noise_level >= 0):
            raise ValueError(f"sde.noise_level must be a float >= 0 (about 0.7 is typical), got {self.noise_level!r}")
        if self.t_cap is not None and not 0.0 <= self.t_cap < 1.0:
            raise ValueError(f"sde.t_cap must lie in [0, 1) or be null for the schedule default, got {self.t_cap!r}")
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"sde.reduction must be 'mean' or 'sum', got {self.reduction!r}")
        if self.sampler not in naive.SAMPLERS:
            raise ValueError(
                f"sde.sampler must be 'sde' (SPEC S1) or 'cps' (coefficients-preserving), got {self.sampler!r}"
            )
        if self.sampler == "cps" and self.noise_level > 1.0:
            raise ValueError(
                f"sde.noise_level must lie in [0, 1] with sde.sampler=cps (the noise angle a pi/2; e.g. 0.7), "
                f"got {self.noise_level!r}"
            )

    def resolve_t_cap(self, schedule: StepSchedule) -> float:
        """``t_cap``, or the schedule's second time when unset (SPEC S1's default)."""
        return float(self.t_cap) if self.t_cap is not None else schedule.t_cap

    def spec(self, schedule: StepSchedule, backend: str = "auto") -> StepSpec:
        """The :class:`StepSpec` of ``schedule``'s resolution with kernel ``backend``."""
        return StepSpec(float(self.noise_level), self.resolve_t_cap(schedule), self.reduction, backend, self.sampler)


def sigma_t(t: torch.Tensor, noise_level: float, t_cap: float) -> torch.Tensor:
    """``sigma_t [B]`` (float32, or float64 for float64 ``t``) for times ``t [B]``."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    c = naive.coefficients(t, t * 0, noise_level, t_cap, dtype)
    return c.sigma.reshape(t.shape)


def step_mean_std(
    x: torch.Tensor,
    v: torch.Tensor,
    t: torch.Tensor,
    t_next: torch.Tensor,
    noise_level: float,
    t_cap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``mu`` (x's shape, float32) and std ``s [B]`` of the step Gaussian ``N(mu, s^2 I)`` of SPEC S1."""
    dtype = naive.compute_dtype(x, v)
    c = naive.coefficients(t, t_next, noise_level, t_cap, dtype)
    rows = x.shape[0]
    mu = naive.step_mean(x.reshape(rows, -1).to(dtype), v.reshape(rows, -1).to(dtype), t, c)
    return mu.reshape(x.shape), c.std.reshape(-1).expand(rows)
