"""The per-step GRPO objective: composition, exact gradient accumulation, beta = 0, configuration errors."""

from __future__ import annotations

import math

import pytest
import torch

from fastgrpo.core import GRPOConfig, SDEConfig, StepSpec, flow_schedule, sigma_t, step_loss, step_mean_std
from fastgrpo.kernels.grpo.naive import grpo_loss_ref
from fastgrpo.kernels.sde import naive

A, T_CAP = 0.7, 0.95
TIMES = torch.tensor([1.0, 0.95, 0.8, 0.6, 0.3, 0.0])


def _rollout(b=4, n=50, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(b, n, generator=g)]
    vs, old = [], []
    for k in range(steps):
        v = torch.randn(b, n, generator=g)
        noise = torch.randn(b, n, generator=g)
        x_next, lp = naive.sde_step_ref(xs[-1], v, TIMES[k], TIMES[k + 1], noise, noise_level=A, t_cap=T_CAP)
        xs.append(x_next)
        vs.append(v)
        old.append(lp)
    return xs, vs, old


def _policy(v_old, theta):
    return v_old * (1 + theta)  # a one-parameter "model" so gradients are comparable


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_accumulated_step_losses_equal_the_full_objective(beta):
    b, steps = 4, 3
    xs, vs, old = _rollout(b=b, steps=steps)
    adv = torch.randn(b)
    cfg = GRPOConfig(clip_low=0.02, clip_high=0.03, beta=beta)
    kw = {"noise_level": A, "t_cap": T_CAP}

    # J in one go: logp/kl [B, T], one loss
    theta = torch.tensor(0.01, requires_grad=True)
    lps, kls = [], []
    for k in range(steps):
        v_ref = vs[k]
        lp, kl = naive.logprob_kl_ref(xs[k + 1], xs[k], _policy(vs[k], theta), v_ref, TIMES[k], TIMES[k + 1], **kw)
        lps.append(lp)
        kls.append(kl)
    want, _ = grpo_loss_ref(
        torch.stack(lps, 1), torch.stack(old, 1), adv, clip_low=0.02, clip_high=0.03, kl=torch.stack(kls, 1), beta=beta
    )
    want.backward()
    want_grad = theta.grad.clone()

    # micro-batches of 1 and 3 samples, one trained step at a time
    theta.grad = None
    total = torch.zeros(())
    for rows in (slice(0, 1), slice(1, 4)):
        share = (rows.stop - rows.start) / b
        for k in range(steps):
            v = _policy(vs[k][rows], theta)
            loss, _, _ = step_loss(
                xs[k + 1][rows], xs[k][rows], v, vs[k][rows] if beta else None, TIMES[k], TIMES[k + 1],
                old[k][rows], adv[rows], grpo=cfg, spec=StepSpec(A, T_CAP, backend="torch"), weight=share / steps,
            )  # fmt: skip
            loss.backward()
            total = total + loss.detach()
    torch.testing.assert_close(total, want.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(theta.grad, want_grad, rtol=1e-5, atol=1e-8)


def test_step_loss_triton_equals_torch():
    xs, vs, old = _rollout(b=3, n=300, steps=1)
    adv = torch.randn(3)
    cfg = GRPOConfig(beta=0.1, clip_low=0.2, clip_high=0.2)
    out = {}
    for backend in ("torch", "triton"):
        v = (vs[0] * 1.01).requires_grad_(True)
        loss, stats, logp = step_loss(
            xs[1], xs[0], v, vs[0], 1.0, 0.95, old[0], adv, grpo=cfg, spec=StepSpec(A, T_CAP, backend=backend)
        )
        loss.backward()
        out[backend] = (loss.detach(), stats.values, logp, v.grad)
    for a, b in zip(out["torch"], out["triton"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)  # approx-KL cancels to ~1e-8


def test_beta_positive_needs_reference():
    xs, vs, old = _rollout(b=2, steps=1)
    with pytest.raises(ValueError, match="needs v_ref"):
        step_loss(xs[1], xs[0], vs[0], None, 1.0, 0.95, old[0], torch.zeros(2), grpo=GRPOConfig(beta=0.1),
                  spec=StepSpec(A, T_CAP))  # fmt: skip
    loss, stats, _ = step_loss(xs[1], xs[0], vs[0], None, 1.0, 0.95, old[0], torch.ones(2),
                               grpo=GRPOConfig(beta=0.0), spec=StepSpec(A, T_CAP))  # fmt: skip
    assert stats.kl.item() == 0.0
    torch.testing.assert_close(loss, torch.tensor(-1.0))  # on-policy: ratio 1, loss = -mean(A)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_low": 1.0}, "grpo.clip_low"),
        ({"clip_high": -1.0}, "grpo.clip_high"),
        ({"beta": -0.1}, "grpo.beta"),
        ({"kl_form": "reverse"}, "grpo.kl_form"),
        ({"adv_std": "batch"}, "grpo.adv_std"),
        ({"adv_clip": 0.0}, "grpo.adv_clip"),
    ],
)
def test_grpo_config_errors_say_how_to_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_level": -1.0}, "sde.noise_level"),
        ({"t_cap": 1.0}, "sde.t_cap"),
        ({"reduction": "max"}, "sde.reduction"),
    ],
)
def test_sde_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SDEConfig(**kwargs)


def test_t_cap_defaults_to_the_second_schedule_time():
    schedule = flow_schedule({"shift": 3.0}, 10)
    assert SDEConfig().resolve_t_cap(schedule) == schedule.t_cap == float(schedule.times[1])
    assert SDEConfig(t_cap=0.5).resolve_t_cap(schedule) == 0.5


def test_sigma_and_step_gaussian_follow_spec():
    t = torch.tensor([1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(sigma_t(t, A, T_CAP), torch.tensor([A / math.sqrt(1 - T_CAP), A], dtype=torch.float64))
    x, v = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    tn = torch.tensor([0.9, 0.4])
    mu, std = step_mean_std(x, v, t.float(), tn, A, T_CAP)
    sig = sigma_t(t.float(), A, T_CAP)[:, None, None]
    tt, dt = t.float()[:, None, None], (tn - t.float())[:, None, None]
    torch.testing.assert_close(mu, x + (v + sig**2 / (2 * tt) * (x + (1 - tt) * v)) * dt)
    torch.testing.assert_close(std, sig.reshape(-1) * (t.float() - tn).sqrt())


def test_step_spec_is_resolved_once_from_the_config_and_checks_its_values():
    schedule = flow_schedule({"shift": 3.0}, 10)
    spec = SDEConfig(noise_level=0.5, reduction="sum").spec(schedule, "torch")
    assert spec == StepSpec(0.5, schedule.t_cap, "sum", "torch")
    assert SDEConfig(sampler="cps").spec(schedule, "torch") == StepSpec(0.7, schedule.t_cap, "mean", "torch", "cps")
    assert SDEConfig(t_cap=0.25).spec(schedule).t_cap == 0.25
    with pytest.raises(AttributeError):
        spec.noise_level = 0.7  # frozen: one spec serves every call of its resolution
    for kwargs, match in (({"t_cap": 1.0}, "t_cap"), ({"reduction": "max"}, "reduction"),
                          ({"backend": "cpu"}, "backend"), ({"noise_level": -0.1}, "noise_level")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            StepSpec(**{"noise_level": 0.7, "t_cap": 0.9, **kwargs})


@pytest.mark.parametrize("sampler", ["sde", "cps"])
def test_ratio_norm_on_policy_is_the_plain_gradient_weighted_by_std_over_dt(sampler):
    """GRPO-Guard's RatioNorm (arXiv:2510.22319) on-policy: ratio exactly 1, gradient = plain gradient * s / |dt|."""
    b, n, k = 6, 40, 2
    g = torch.Generator().manual_seed(3)
    x, v_old, noise = (torch.randn(b, n, generator=g) for _ in range(3))
    t, tn = TIMES[k], TIMES[k + 1]
    kw = {"noise_level": A, "t_cap": T_CAP, "sampler": sampler}
    x_next, old = naive.sde_step_ref(x, v_old, t, tn, noise, **kw)
    adv = torch.randn(b, generator=g)
    spec = StepSpec(A, T_CAP, backend="torch", sampler=sampler)
    grads, stats = [], []
    for norm in (False, True):
        theta = torch.zeros((), requires_grad=True)
        cfg = GRPOConfig(beta=0.0, ratio_norm=norm)
        loss, st, _ = step_loss(x_next, x, _policy(v_old, theta), None, t, tn, old, adv, grpo=cfg, spec=spec)
        loss.backward()
        grads.append(theta.grad.clone())
        stats.append(st.to_dict())
    c = naive.coefficients(t, tn, A, T_CAP, torch.float64, sampler)
    scale = float(c.std.squeeze() / c.dt.abs().squeeze())
    assert grads[0].abs() > 1e-6 and scale != pytest.approx(1.0, abs=0.05)
    torch.testing.assert_close(grads[1], grads[0] * scale, rtol=1e-4, atol=1e-9)
    assert stats[1]["ratio_min"] == stats[1]["ratio_max"] == 1.0


def test_ratio_norm_centres_the_left_shifted_log_ratio():
    """Off-policy, the log-ratio of samples drawn from the old policy is shifted left by ||mu - mu_old||^2/(2 s^2);
    RatioNorm takes the shift out (mean log-ratio 0) and scales the spread by the step's std."""
    b, n, k = 256, 64, 1
    g = torch.Generator().manual_seed(4)
    x, v_old, noise = (torch.randn(b, n, generator=g) for _ in range(3))
    t, tn = TIMES[k], TIMES[k + 1]
    x_next, old = naive.sde_step_ref(x, v_old, t, tn, noise, noise_level=A, t_cap=T_CAP)
    v_new = v_old + 0.3 * torch.randn(b, n, generator=g)  # a policy that has moved
    spec = StepSpec(A, T_CAP, backend="torch")
    plain, normed = ({} for _ in range(2))
    for norm, out in ((False, plain), (True, normed)):
        cfg = GRPOConfig(beta=0.0, ratio_norm=norm, clip_low=0.5, clip_high=0.5)
        _, st, _ = step_loss(x_next, x, v_new, None, t, tn, old, torch.ones(b), grpo=cfg, spec=spec)
        out.update(st.to_dict())
    assert plain["ratio_mean"] < 1.0 - 1e-4  # the left shift
    # the mean log-ratio is 0; exp() of a centred spread leaves a second-order excess
    assert abs(normed["ratio_mean"] - 1.0) < 0.1 * abs(plain["ratio_mean"] - 1.0)
    spread = {
        name: math.log(o["ratio_max"]) - math.log(o["ratio_min"]) for name, o in (("plain", plain), ("norm", normed))
    }
    std = float(naive.coefficients(t, tn, A, T_CAP, torch.float64).std.squeeze())
    assert spread["norm"] == pytest.approx(spread["plain"] * std, rel=1e-3)


def test_ratio_norm_must_be_a_bool():
    with pytest.raises(ValueError, match="ratio_norm must be true or false"):
        GRPOConfig(ratio_norm="yes")
