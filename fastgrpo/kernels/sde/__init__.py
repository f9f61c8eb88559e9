"""The SDE step of SPEC S1 (fused step + log-prob, log-prob + KL), reference in ``naive.py``."""

from fastgrpo.kernels.sde.api import logprob_kl, noise_state, sde_step, step_logprob, velocity_kl

__all__ = ["logprob_kl", "noise_state", "sde_step", "step_logprob", "velocity_kl"]
