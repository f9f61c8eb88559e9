"""Fused Triton kernels of the GRPO step math, their PyTorch references and autograd wrappers.

Public API (../SPEC.md): :func:`sde_step`, :func:`step_logprob`, :func:`velocity_kl`, :func:`grpo_loss`, plus
the fused :func:`logprob_kl` (log-prob and KL from one read of ``v``) and :func:`noise_state` (a device-side
generator state for in-kernel noise). Each takes ``backend="auto" | "triton" | "torch" | "cuda"``
(``"cuda"``: the optional native kernels built from ``csrc/`` with CMake, see :mod:`fastgrpo.kernels.cuda_backend`).
"""

from fastgrpo.kernels.grpo import GRPOStats, grpo_loss
from fastgrpo.kernels.sde import logprob_kl, noise_state, sde_step, step_logprob, velocity_kl

__all__ = [
    "GRPOStats",
    "grpo_loss",
    "logprob_kl",
    "noise_state",
    "sde_step",
    "step_logprob",
    "velocity_kl",
]
