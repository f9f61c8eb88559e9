"""SPEC S1's claim: the SDE keeps the ODE's marginals, checked with an exact velocity field.

For data from a Gaussian mixture, the rectified-flow velocity ``v(x, t) = E[eps - x_0 | x_t = x]`` is analytic.
Sampling with that field from t = 1 to 0, by the ODE and by the SDE at several noise levels, must land on the data
distribution about equally well (energy distance to fresh data samples); the same SDE without its score
correction must not, which shows the statistic can tell.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastgrpo.kernels import sde_step

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5, 0.4], dtype=torch.float64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
STEPS = 40


def sample_data(n: int, gen: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=gen)
    return MEANS[k] + STDS[k, None] * torch.randn(n, 2, dtype=torch.float64, generator=gen)


def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """Exact ``E[eps - x_0 | x_t = x]`` for the mixture, x ``[n, 2]`` (float64 math)."""
    x = x.double()
    var = (1 - t) ** 2 * STDS**2 + t**2  # [K]
    r = x[:, None, :] - (1 - t) * MEANS[None]  # [n, K, 2]
    logw = torch.log(WEIGHTS) - torch.log(var) - (r**2).sum(-1) / (2 * var)  # 2-D Gaussian, d = 2
    w = torch.softmax(logw, dim=1)
    v_k = ((t - (1 - t) * STDS**2) / var)[None, :, None] * r - MEANS[None]
    return (w[..., None] * v_k).sum(1)


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    ab = torch.cdist(a, b).mean()
    aa = torch.cdist(a, a).mean()
    bb = torch.cdist(b, b).mean()
    return float(2 * ab - aa - bb)


def sample(noise_level: float, n: int, seed: int, backend: str = "torch", correct: bool = True) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    times = torch.linspace(1.0, 0.0, STEPS + 1, dtype=torch.float64)
    t_cap = float(times[1])
    rows = 4  # the particle cloud as 4 "samples" of n/4 particles x 2 coordinates
    x = torch.randn(rows, n // rows * 2, generator=gen)
    for i in range(STEPS):
        t, tn = float(times[i]), float(times[i + 1])
        v = velocity(x.reshape(-1, 2), t).reshape(rows, -1).float()
        noise = torch.randn(x.shape, generator=gen)
        if correct:
            x, _ = sde_step(x, v, t, tn, noise_level=noise_level, t_cap=t_cap, noise=noise, backend=backend)
        else:  # Euler-Maruyama of dx = v dt + sigma dw: the noise without the drift that keeps the marginals
            sigma = noise_level * math.sqrt(t / (1 - min(t, t_cap)))
            x = x + (tn - t) * v + sigma * math.sqrt(t - tn) * noise
    return x.reshape(-1, 2).double()


@pytest.fixture(scope="module")
def data_and_floor():
    gen = torch.Generator().manual_seed(1234)
    data, other = sample_data(3000, gen), sample_data(3000, gen)
    return data, energy_distance(data, other)


def test_sde_matches_data_as_well_as_ode(data_and_floor):
    data, floor = data_and_floor
    ode = energy_distance(sample(0.0, 3000, seed=1), data)
    assert ode < 5 * floor + 2e-3, (ode, floor)
    for level in (0.3, 0.7, 1.0):
        sde = energy_distance(sample(level, 3000, seed=2), data)
        assert sde < max(2.5 * ode, 5 * floor + 2e-3), (level, sde, ode, floor)


def test_sde_with_triton_kernel_matches_data(data_and_floor):
    data, floor = data_and_floor
    sde = energy_distance(sample(0.7, 2000, seed=3, backend="triton"), data)
    assert sde < 5 * floor + 3e-3, (sde, floor)


def test_statistic_detects_a_sde_that_breaks_the_marginals(data_and_floor):
    data, floor = data_and_floor
    broken = energy_distance(sample(1.0, 3000, seed=4, correct=False), data)
    prior = energy_distance(torch.randn(3000, 2, dtype=torch.float64), data)
    assert broken > 10 * floor + 1e-2, (broken, floor)
    assert prior > 10 * broken or prior > 0.5
