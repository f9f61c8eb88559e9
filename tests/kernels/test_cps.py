"""The coefficients-preserving sampler (``sampler="cps"``, arXiv:2509.05952): its formulas in float64, the exact
marginals it keeps, its log-probability and KL through every backend, and its refusals."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import max_err
from test_sde_marginals import energy_distance, sample_data, velocity

from fastgrpo.core.sde import SDEConfig, StepSpec
from fastgrpo.kernels import logprob_kl, noise_state, sde_step, step_logprob, velocity_kl
from fastgrpo.kernels.sde import naive

A = 0.7
CPS = {"noise_level": A, "t_cap": 0.9, "sampler": "cps"}


def _batch(b=3, n=37, dtype=torch.float64):
    x, v, eps = (torch.randn(b, n, dtype=dtype) for _ in range(3))
    t = torch.tensor([1.0, 0.6, 0.3], dtype=dtype)[:b]
    tn = torch.tensor([0.9, 0.45, 0.05], dtype=dtype)[:b]
    return x, v, eps, t, tn


def cps_literal(x, v, t, tn, a, eps):
    """The paper's step written out: clean and noise estimates, then the schedule's coefficients of both."""
    t, tn = t.reshape(-1, 1), tn.reshape(-1, 1)
    x0, e = x - t * v, x + (1 - t) * v
    s = tn * math.sin(a * math.pi / 2)
    mu = (1 - tn) * x0 + torch.sqrt(tn**2 - s**2) * e
    return mu + s * eps, mu, s


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cps_reference_matches_the_paper_step(reduction):
    x, v, eps, t, tn = _batch()
    x_next, logp = naive.sde_step_ref(x, v, t, tn, eps, reduction=reduction, **CPS)
    want, mu, s = cps_literal(x, v, t, tn, A, eps)
    torch.testing.assert_close(x_next, want, rtol=1e-12, atol=1e-12)
    elem = -((want - mu) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(logp, elem.mean(1) if reduction == "mean" else elem.sum(1), rtol=1e-10, atol=1e-10)
    again = naive.step_logprob_ref(x_next, x, v, t, tn, reduction=reduction, **CPS)
    assert torch.equal(again, logp)


def test_cps_kl_is_the_mean_difference_over_its_variance():
    x, v, _, t, tn = _batch()
    v_ref = v + 0.1 * torch.randn_like(v)
    _, mu, s = cps_literal(x, v, t, tn, A, torch.zeros_like(x))
    _, mu_ref, _ = cps_literal(x, v_ref, t, tn, A, torch.zeros_like(x))
    want = ((mu - mu_ref) ** 2 / (2 * s**2)).mean(1)
    for form in ("exact", "flow_grpo"):  # sigma is reported as s: both forms agree for this sampler
        kl = naive.velocity_kl_ref(v, v_ref, t, tn, form=form, **CPS)
        torch.testing.assert_close(kl, want, rtol=1e-10, atol=1e-12)


def test_cps_keeps_the_schedule_coefficients_exactly():
    # Point-mass data x0 = c: the exact velocity is (x - c) / t. From x_t = (1 - t) c + t eps, one CPS step of
    # any size lands on (1 - t') c + t' (cos eps + sin eps'): mean (1 - t') c and std t' per element, exactly.
    gen = torch.Generator().manual_seed(0)
    c, n = 1.5, 400_000
    times = [1.0, 0.8, 0.35, 0.1]
    x = torch.randn(1, n, dtype=torch.float64, generator=gen)
    for t, tn in itertools.pairwise(times):
        v = (x - c) / t
        eps = torch.randn(x.shape, dtype=torch.float64, generator=gen)
        x, _ = naive.sde_step_ref(x, v, torch.tensor(t), torch.tensor(tn), eps, **CPS)
        assert abs(x.mean().item() - (1 - tn) * c) < 5 * tn / math.sqrt(n)
        assert abs(x.std().item() / tn - 1) < 0.01
    # the same step of SPEC S1's SDE does not keep them at this step size, which shows the check can tell
    x = torch.randn(1, n, dtype=torch.float64, generator=gen)
    v = (x - c) / 1.0
    eps = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    x, _ = naive.sde_step_ref(x, v, torch.tensor(1.0), torch.tensor(0.35), eps, noise_level=A, t_cap=0.8)
    assert abs(x.std().item() / 0.35 - 1) > 0.05


def test_cps_last_step_is_deterministic_and_lands_on_the_clean_estimate():
    x, v, eps, t, _ = _batch()
    zero = torch.zeros_like(t)
    x_next, logp = naive.sde_step_ref(x, v, t, zero, eps, **CPS)
    torch.testing.assert_close(x_next, x - t.reshape(-1, 1) * v, rtol=0, atol=1e-14)
    assert torch.equal(logp, torch.zeros_like(logp))
    assert not StepSpec(A, 0.9, sampler="cps").has_noise(0.0)
    assert StepSpec(A, 0.9, sampler="sde").has_noise(0.0)


def test_cps_with_noise_level_zero_is_the_euler_step():
    x, v, eps, t, tn = _batch()
    x_next, _ = naive.sde_step_ref(x, v, t, tn, eps, noise_level=0.0, t_cap=0.9, sampler="cps")
    torch.testing.assert_close(x_next, x + (tn - t).reshape(-1, 1) * v, rtol=0, atol=1e-14)


def _cps_sample(n: int, seed: int, backend: str, steps: int = 40, level: float = 0.3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x = torch.randn(4, n // 4 * 2, generator=gen)
    for i in range(steps):
        t, tn = float(times[i]), float(times[i + 1])
        v = velocity(x.reshape(-1, 2), t).reshape(4, -1).float()
        noise = torch.randn(x.shape, generator=gen)
        x, _ = sde_step(x, v, t, tn, noise=noise, noise_level=level, t_cap=0.9, sampler="cps", backend=backend)
    return x.reshape(-1, 2).double()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cps_sampling_lands_on_the_data_like_the_ode(backend):
    # The analytic Gaussian-mixture flow of test_sde_marginals: CPS with the exact velocity reaches the data.
    # Unlike SPEC S1's SDE, CPS re-draws a fixed fraction sin(a pi/2) of the noise at every step whatever its size,
    # so it is exact for known x0 (the test above) but is not the discretisation of a marginal-preserving SDE:
    # for a = 0.7 the distance stays about 0.01 (6x the floor) from 40 to 200 steps; at a = 0.3 it converges.
    gen = torch.Generator().manual_seed(1234)
    data, other = sample_data(2000, gen), sample_data(2000, gen)
    floor = energy_distance(data, other)
    got = energy_distance(_cps_sample(2000, seed=5, backend=backend), data)
    assert got < 5 * floor + 3e-3, (got, floor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cps_triton_matches_reference_and_ratio_is_one(dtype, reduction):
    x, v = torch.randn(3, 5000).to(dtype), torch.randn(3, 5000).to(dtype)
    t, tn = torch.tensor([1.0, 0.6, 0.3]), torch.tensor([0.9, 0.45, 0.05])
    kw = {**CPS, "reduction": reduction}
    for backend in ("triton", "torch"):
        x_next, logp_old = sde_step(x, v, t, tn, seed=noise_state(7), backend=backend, **kw)
        logp = step_logprob(x_next, x, v, t, tn, backend=backend, **kw)
        assert torch.equal(torch.exp(logp - logp_old), torch.ones_like(logp)), backend
        want = naive.step_logprob_ref(x_next.double(), x.double(), v.double(), t, tn, **kw)
        assert max_err(logp, want) < (1e-5 if reduction == "mean" else 2e-2), backend
    tri, _ = sde_step(x, v, t, tn, seed=noise_state(7), backend="triton", **kw)
    ref, _ = sde_step(x, v, t, tn, seed=noise_state(7), backend="torch", **kw)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert max_err(tri, ref) < tol


@pytest.mark.parametrize("form", ["exact", "flow_grpo"])
def test_cps_fused_gradient_matches_reference(form):
    x, v, eps, t, tn = _batch(n=3000, dtype=torch.float32)
    x_next, _ = naive.sde_step_ref(x, v, t, tn, eps, **CPS)
    v_ref = v + 0.1 * torch.randn_like(v)
    grads = {}
    for backend in ("triton", "torch"):
        vv = v.clone().requires_grad_()
        logp, kl = logprob_kl(x_next, x, vv, v_ref, t, tn, form=form, backend=backend, **CPS)
        (logp.sum() + 3.0 * kl.sum()).backward()
        grads[backend] = (logp.detach(), kl.detach(), vv.grad)
    for a, b in zip(grads["triton"], grads["torch"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    alone = velocity_kl(v, v_ref, t, tn, form=form, backend="triton", **CPS)
    torch.testing.assert_close(alone, grads["torch"][1], rtol=1e-5, atol=1e-8)


def test_cps_gradcheck():
    x, v, eps, t, tn = _batch(n=6)
    x_next, _ = naive.sde_step_ref(x, v, t, tn, eps, **CPS)
    v_ref = v + 0.1 * torch.randn_like(v)

    def f(vv):
        return naive.logprob_kl_ref(x_next, x, vv, v_ref, t, tn, **CPS)

    assert torch.autograd.gradcheck(f, (v.clone().requires_grad_(),))


def test_cps_refusals():
    x, v, _, t, tn = _batch(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"noise_level in \[0, 1\]"):
        sde_step(x, v, t, tn, noise_level=1.2, t_cap=0.9, sampler="cps")
    with pytest.raises(ValueError, match="not one of"):
        sde_step(x, v, t, tn, noise_level=0.7, t_cap=0.9, sampler="ddim")
    with pytest.raises(ValueError, match=r"sde\.noise_level must lie in"):
        SDEConfig(noise_level=1.5, sampler="cps")
    with pytest.raises(ValueError, match=r"sde\.sampler must be"):
        SDEConfig(sampler="flow")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="native CUDA kernels implement SPEC S1's SDE only"):
            sde_step(x.cuda(), v.cuda(), t.cuda(), tn.cuda(), backend="cuda", **CPS)
