"""The PyTorch references against SPEC's formulas in float64, diffusers' Euler step, and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from fastgrpo.kernels.sde import naive

A, T_CAP = 0.7, 0.95


def spec_step(x, v, t, tn, a, t_cap, eps):
    """SPEC S1 written out literally in float64 on [B, N] rows with [B, 1] times."""
    t, tn = t.reshape(-1, 1), tn.reshape(-1, 1)
    dt = tn - t
    sigma = a * torch.sqrt(t / (1 - torch.minimum(t, torch.full_like(t, t_cap))))
    mu = x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * dt
    s = sigma * torch.sqrt(dt.abs())
    x_next = mu + s * eps
    lp = -((x_next - mu) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    return x_next, lp, sigma, s, mu


def _batch(b=3, n=37, dtype=torch.float64):
    x, v, eps = (torch.randn(b, n, dtype=dtype) for _ in range(3))
    t = torch.tensor([1.0, 0.6, 0.3], dtype=dtype)[:b]
    tn = torch.tensor([0.9, 0.45, 0.0], dtype=dtype)[:b]
    return x, v, eps, t, tn


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sde_step_ref_matches_spec(reduction):
    x, v, eps, t, tn = _batch()
    x_next, logp = naive.sde_step_ref(x, v, t, tn, eps, noise_level=A, t_cap=T_CAP, reduction=reduction)
    want_x, want_lp, *_ = spec_step(x, v, t, tn, A, T_CAP, eps)
    torch.testing.assert_close(x_next, want_x, rtol=1e-12, atol=1e-12)
    want = want_lp.mean(1) if reduction == "mean" else want_lp.sum(1)
    torch.testing.assert_close(logp, want, rtol=1e-10, atol=1e-10)
    again = naive.step_logprob_ref(x_next, x, v, t, tn, noise_level=A, t_cap=T_CAP, reduction=reduction)
    assert torch.equal(again, logp)


def test_sigma_uses_t_cap_only_above_it():
    t = torch.tensor([1.0, 0.95, 0.5], dtype=torch.float64)
    c = naive.coefficients(t, t - 0.05, A, T_CAP, torch.float64)
    want = A * torch.sqrt(torch.tensor([1 / (1 - T_CAP), 0.95 / 0.05, 1.0]))
    torch.testing.assert_close(c.sigma.reshape(-1), want.double())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kl_closed_form_matches_mean_difference(reduction):
    x, v, _, t, tn = _batch()
    v_ref = v + 0.1 * torch.randn_like(v)
    kl = naive.velocity_kl_ref(v, v_ref, t, tn, noise_level=A, t_cap=T_CAP, reduction=reduction)
    _, _, sigma, s, mu = spec_step(x, v, t, tn, A, T_CAP, torch.zeros_like(x))
    _, _, _, _, mu_ref = spec_step(x, v_ref, t, tn, A, T_CAP, torch.zeros_like(x))
    elem = (mu - mu_ref) ** 2 / (2 * s**2)
    torch.testing.assert_close(kl, elem.mean(1) if reduction == "mean" else elem.sum(1), rtol=1e-10, atol=1e-12)
    # SPEC's closed form: (|dt|/2) (sigma (1-t)/(2t) + 1/sigma)^2 ||v - v_ref||^2
    tt, dt = t.reshape(-1, 1), (tn - t).reshape(-1, 1)
    closed = dt.abs() / 2 * (sigma * (1 - tt) / (2 * tt) + 1 / sigma) ** 2 * (v - v_ref) ** 2
    torch.testing.assert_close(kl, closed.mean(1) if reduction == "mean" else closed.sum(1), rtol=1e-10, atol=1e-12)


def test_kl_flow_grpo_form_drops_dt():
    x, v, _, t, tn = _batch()
    v_ref = v + 0.1 * torch.randn_like(v)
    exact = naive.velocity_kl_ref(v, v_ref, t, tn, noise_level=A, t_cap=T_CAP, form="exact")
    flow = naive.velocity_kl_ref(v, v_ref, t, tn, noise_level=A, t_cap=T_CAP, form="flow_grpo")
    torch.testing.assert_close(flow, exact * (t - tn), rtol=1e-12, atol=0)
    _, _, sigma, _, mu = spec_step(x, v, t, tn, A, T_CAP, torch.zeros_like(x))
    _, _, _, _, mu_ref = spec_step(x, v_ref, t, tn, A, T_CAP, torch.zeros_like(x))
    torch.testing.assert_close(flow, ((mu - mu_ref) ** 2).mean(1) / (2 * sigma.reshape(-1) ** 2))


def test_kl_is_zero_for_equal_velocities_and_logprob_peaks_at_mean():
    x, v, _, t, tn = _batch()
    kl = naive.velocity_kl_ref(v, v.clone(), t, tn, noise_level=A, t_cap=T_CAP)
    assert torch.equal(kl, torch.zeros_like(kl))
    x_mean, _ = naive.sde_step_ref(x, v, t, tn, torch.zeros_like(x), noise_level=A, t_cap=T_CAP)
    lp_mean = naive.step_logprob_ref(x_mean, x, v, t, tn, noise_level=A, t_cap=T_CAP)
    lp_off = naive.step_logprob_ref(x_mean + 0.01, x, v, t, tn, noise_level=A, t_cap=T_CAP)
    assert (lp_mean > lp_off).all()


def test_noise_level_zero_is_euler_step_with_zero_logprob():
    x, v, eps, t, tn = _batch()
    x_next, logp = naive.sde_step_ref(x, v, t, tn, eps, noise_level=0.0, t_cap=T_CAP)
    torch.testing.assert_close(x_next, x + (tn - t).reshape(-1, 1) * v, rtol=0, atol=1e-15)
    assert torch.equal(logp, torch.zeros_like(logp))


def test_ode_step_equals_flow_match_euler_scheduler_step():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    x = torch.randn(2, 4, 8, 8)
    for i in range(len(scheduler.timesteps)):
        v = torch.randn_like(x)
        t, tn = scheduler.sigmas[i].item(), scheduler.sigmas[i + 1].item()
        want = scheduler.step(v, scheduler.timesteps[i], x, return_dict=False)[0]
        got, _ = naive.sde_step_ref(
            x, v, torch.tensor(t), torch.tensor(tn), torch.zeros_like(x), noise_level=0.0, t_cap=0.5
        )
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        x = want


@pytest.mark.parametrize("form", ["exact", "flow_grpo"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_references(form, reduction):
    x, v, eps, t, tn = _batch(n=6)
    x_next, _ = naive.sde_step_ref(x, v, t, tn, eps, noise_level=A, t_cap=T_CAP)
    v_ref = v + 0.1 * torch.randn_like(v)
    kw = {"noise_level": A, "t_cap": T_CAP, "reduction": reduction}

    def f(vv):
        lp, kl = naive.logprob_kl_ref(x_next, x, vv, v_ref, t, tn, form=form, **kw)
        return lp, kl

    assert torch.autograd.gradcheck(f, (v.clone().requires_grad_(True),))
