"""ODE sampling with an :class:`~fastgrpo.models.base.EditModel`: evaluation and inference (noise level 0)."""

from __future__ import annotations

import torch
from torch import Tensor

from fastgrpo.kernels import sde_step
from fastgrpo.models.base import Condition, EditModel


@torch.no_grad()
def sample_ode(model: EditModel, cond: Condition, num_steps: int, noise: Tensor) -> Tensor:
    """Euler ODE from ``noise`` (packed ``[B, N, C]``) at t = 1 to t = 0 along the model's schedule.

    Returns packed float32 latents ``[B, N, C]``; decode them with ``model.decode(latents, cond.height,
    cond.width)``. Equal, step for step, to the stock pipeline with the same schedule and initial noise.
    """
    schedule = model.schedule(num_steps, cond.height, cond.width)
    times = schedule.to(noise.device)
    x = noise.float()
    for k in range(schedule.num_steps):
        t, t_next = times.t[k], times.t_next[k]
        v = model.velocity(x, t.expand(x.shape[0]), cond)
        x, _ = sde_step(x, v, t, t_next, noise_level=0.0, t_cap=schedule.t_cap)
    return x
