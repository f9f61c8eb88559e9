"""Triton SDE kernels (interpreter on CPU, compiled on CUDA) against float64 references."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_calibrated, max_err, poisoned_outputs

from fastgrpo.kernels import logprob_kl, noise_state, sde_step, step_logprob, velocity_kl
from fastgrpo.kernels.sde import naive
from fastgrpo.kernels.sde.philox import philox_normal

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
A, T_CAP = 0.7, 0.9
# odd shapes: sub-tile rows, a row one element past a tile, 2-D to 4-D latents
SHAPES = [(3, 5), (2, 4097), (3, 3, 17, 5), (2, 16, 8, 8), (2, 1, 3, 1031)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _store_atol(dtype: torch.dtype, ref: torch.Tensor) -> float:
    # One unit in the last place of the stored dtype: Triton's interpreter truncates float32 -> bfloat16 where
    # the GPU rounds to nearest, so a stored element may sit one ulp (not half) from the float64 value.
    return torch.finfo(dtype).eps * ref.abs().max().item() + ATOL[dtype]


def _times(b: int, per_sample: bool):
    if per_sample:
        t = torch.linspace(1.0, 0.3, b, device=DEVICE)
        return t, t - torch.linspace(0.1, 0.3, b, device=DEVICE)
    return torch.tensor(0.8, device=DEVICE), torch.tensor(0.65, device=DEVICE)


def _inputs(shape, dtype):
    x = torch.randn(shape, device=DEVICE).to(dtype)
    v = torch.randn(shape, device=DEVICE).to(dtype)
    return x, v


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sde_step_with_noise_tensor(shape, dtype, reduction):
    x, v = _inputs(shape, dtype)
    noise = torch.randn(shape, device=DEVICE)
    t, tn = _times(shape[0], per_sample=len(shape) % 2 == 0)
    kw = {"noise_level": A, "t_cap": T_CAP, "reduction": reduction}
    with poisoned_outputs():
        x_next, logp = sde_step(x, v, t, tn, noise=noise, backend="triton", **kw)
    assert x_next.shape == x.shape and x_next.dtype == dtype and logp.shape == (shape[0],)
    want_x, _ = naive.sde_step_ref(x.double(), v.double(), t, tn, noise.double(), **kw)
    base_x, _ = naive.sde_step_ref(x, v, t, tn, noise, **kw)
    assert_close_calibrated(x_next, base_x, want_x, _store_atol(dtype, want_x), "x_next")
    # log-prob of the stored x_next, against float64
    want_lp = naive.step_logprob_ref(x_next.double(), x.double(), v.double(), t, tn, **kw)
    base_lp = naive.step_logprob_ref(x_next, x, v, t, tn, **kw)
    assert_close_calibrated(logp, base_lp, want_lp, 1e-5 * (1 if reduction == "mean" else x[0].numel()), "logp")


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sde_step_in_kernel_noise_matches_reference_generator(shape, dtype):
    x, v = _inputs(shape, dtype)
    t, tn = _times(shape[0], per_sample=True)
    with poisoned_outputs():
        x_next, logp = sde_step(x, v, t, tn, noise_level=A, t_cap=T_CAP, seed=(123, 7), backend="triton")
    noise = philox_normal(123, 7, shape[0], x[0].numel(), DEVICE).reshape(shape)
    want_x, _ = naive.sde_step_ref(x.double(), v.double(), t, tn, noise.double(), noise_level=A, t_cap=T_CAP)
    base_x, _ = naive.sde_step_ref(x, v, t, tn, noise, noise_level=A, t_cap=T_CAP)
    assert_close_calibrated(x_next, base_x, want_x, _store_atol(dtype, want_x), "x_next")
    want_lp = naive.step_logprob_ref(x_next.double(), x.double(), v.double(), t, tn, noise_level=A, t_cap=T_CAP)
    assert max_err(logp, want_lp) < 1e-5


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_on_policy_ratio_is_exactly_one(backend, dtype, reduction):
    shape = (4, 3, 9, 41)
    x, v = _inputs(shape, dtype)
    t, tn = _times(4, per_sample=True)
    kw = {"noise_level": A, "t_cap": T_CAP, "reduction": reduction, "backend": backend}
    x_next, logp_old = sde_step(x, v, t, tn, seed=noise_state(3, device=DEVICE), **kw)
    logp = step_logprob(x_next, x, v, t, tn, **kw)
    assert torch.equal(torch.exp(logp - logp_old), torch.ones_like(logp))
    fused, _ = logprob_kl(x_next, x, v, v, t, tn, **kw)
    assert torch.equal(fused, logp_old)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("form", ["exact", "flow_grpo"])
def test_logprob_kl_forward_and_backward(shape, dtype, reduction, form):
    x, v = _inputs(shape, dtype)
    x_next = (x.float() - 0.1 * v.float() + 0.05 * torch.randn(shape, device=DEVICE)).to(dtype)
    v_ref = (v.float() + 0.1 * torch.randn(shape, device=DEVICE)).to(dtype)
    t, tn = _times(shape[0], per_sample=shape[0] % 2 == 1)
    kw = {"noise_level": A, "t_cap": T_CAP, "reduction": reduction}
    g_lp, g_kl = torch.randn(shape[0], device=DEVICE), torch.randn(shape[0], device=DEVICE)

    def run(vv, backend, x_next=x_next, x=x, v_ref=v_ref):
        vv = vv.detach().requires_grad_(True)
        if backend is None:
            lp, kl = naive.logprob_kl_ref(x_next, x, vv, v_ref, t, tn, form=form, **kw)
        else:
            lp, kl = logprob_kl(x_next, x, vv, v_ref, t, tn, form=form, backend=backend, **kw)
        ((lp * g_lp).sum() + (kl * g_kl).sum()).backward()
        return lp.detach(), kl.detach(), vv.grad

    with poisoned_outputs():
        lp, kl, grad = run(v, "triton")
    assert grad.dtype == dtype and grad.shape == shape
    lp64, kl64, grad64 = run(v.double(), None, x_next.double(), x.double(), v_ref.double())
    lp32, kl32, grad32 = run(v, None)
    scale = 1.0 if reduction == "mean" else float(x[0].numel())
    assert_close_calibrated(lp, lp32, lp64, 1e-5 * scale, "logp")
    assert_close_calibrated(kl, kl32, kl64, 1e-5 * scale * kl64.abs().max().item(), "kl")
    gscale = grad64.abs().max().item()  # gradients scale with 1/N under mean: tolerances are relative
    tol = (torch.finfo(dtype).eps + ATOL[dtype]) * gscale
    assert_close_calibrated(grad.float(), grad32.float(), grad64, tol, "grad_v")


def test_step_logprob_and_velocity_kl_equal_the_fused_pass():
    shape = (3, 2, 700)
    x, v = _inputs(shape, torch.float32)
    x_next, v_ref = torch.randn(shape, device=DEVICE), torch.randn(shape, device=DEVICE)
    t, tn = _times(3, per_sample=True)
    kw = {"noise_level": A, "t_cap": T_CAP, "backend": "triton"}
    lp, kl = logprob_kl(x_next, x, v, v_ref, t, tn, **kw)
    assert torch.equal(lp, step_logprob(x_next, x, v, t, tn, **kw))
    assert torch.equal(kl, velocity_kl(v, v_ref, t, tn, **kw))
    assert logprob_kl(x_next, x, v, None, t, tn, **kw)[1] is None


def test_beta_zero_gradient_flows_through_logprob_only():
    shape = (2, 300)
    x, v = _inputs(shape, torch.float32)
    x_next = torch.randn(shape, device=DEVICE)
    t, tn = _times(2, per_sample=False)
    vv = v.clone().requires_grad_(True)
    step_logprob(x_next, x, vv, t, tn, noise_level=A, t_cap=T_CAP, backend="triton").sum().backward()
    v2 = v.clone().requires_grad_(True)
    naive.step_logprob_ref(x_next, x, v2, t, tn, noise_level=A, t_cap=T_CAP).sum().backward()
    torch.testing.assert_close(vv.grad, v2.grad, rtol=1e-5, atol=1e-9)


def test_noise_level_zero_is_the_euler_step():
    x, v = _inputs((2, 3, 33), torch.float32)
    t, tn = _times(2, per_sample=True)
    with poisoned_outputs():
        x_next, logp = sde_step(x, v, t, tn, noise_level=0.0, t_cap=T_CAP, seed=1, backend="triton")
    torch.testing.assert_close(x_next, x + (tn - t).reshape(-1, 1, 1) * v, rtol=0, atol=1e-6)
    assert torch.equal(logp, torch.zeros_like(logp))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_non_contiguous_inputs(backend):
    buffer = torch.randn(3, 5, 2, 600, device=DEVICE)  # [B, T+1, C, N]: a trajectory buffer
    x, x_next = buffer[:, 1], buffer[:, 2]  # batch-strided rows
    v = torch.randn(3, 600, 2, device=DEVICE).transpose(1, 2)  # not even row-contiguous
    v_ref = torch.randn(3, 2, 600, device=DEVICE)
    t, tn = _times(3, per_sample=True)
    kw = {"noise_level": A, "t_cap": T_CAP, "backend": backend}
    got = logprob_kl(x_next, x, v, v_ref, t, tn, **kw)
    want = logprob_kl(x_next.contiguous(), x.contiguous(), v.contiguous(), v_ref, t, tn, **kw)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    noise = torch.randn(3, 600, 2, device=DEVICE).transpose(1, 2)
    a = sde_step(x, v, t, tn, noise=noise, **kw)
    b = sde_step(x.contiguous(), v.contiguous(), t, tn, noise=noise.contiguous(), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_plain_autograd_path_equals_registered_ops(monkeypatch):
    shape = (2, 2, 300)
    x, v = _inputs(shape, torch.bfloat16)
    x_next, v_ref = torch.randn(shape, device=DEVICE), torch.randn(shape, device=DEVICE)
    t, tn = _times(2, per_sample=True)
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("FASTGRPO_CUSTOM_OPS", flag)
        vv = v.clone().requires_grad_(True)
        lp, kl = logprob_kl(x_next, x, vv, v_ref, t, tn, noise_level=A, t_cap=T_CAP, backend="triton")
        (lp.sum() + kl.sum()).backward()
        xs, lps = sde_step(x, v, t, tn, noise_level=A, t_cap=T_CAP, seed=5, backend="triton")
        results.append((lp, kl, vv.grad, xs, lps))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_per_sample_results_do_not_depend_on_the_batch(backend):
    # micro-batching in training must reproduce the rollout's log-probs bit for bit
    shape = (5, 2, 3000)
    x, v = _inputs(shape, torch.bfloat16)
    t, tn = _times(5, per_sample=True)
    kw = {"noise_level": A, "t_cap": T_CAP, "backend": backend}
    x_next, logp = sde_step(x, v, t, tn, seed=(4, 2), **kw)
    v_ref = torch.randn(shape, device=DEVICE).to(torch.bfloat16)
    lp, kl = logprob_kl(x_next, x, v, v_ref, t, tn, **kw)
    for rows in (slice(0, 2), slice(2, 5), slice(3, 4)):
        part = logprob_kl(x_next[rows], x[rows], v[rows], v_ref[rows], t[rows], tn[rows], **kw)
        assert torch.equal(part[0], lp[rows]) and torch.equal(part[1], kl[rows])
    assert torch.equal(lp, logp)


def test_repeated_calls_are_bitwise_identical():
    shape = (3, 9000)
    x, v = _inputs(shape, torch.float32)
    x_next, v_ref = torch.randn(shape, device=DEVICE), torch.randn(shape, device=DEVICE)
    t, tn = _times(3, per_sample=True)
    runs = [logprob_kl(x_next, x, v, v_ref, t, tn, noise_level=A, t_cap=T_CAP, backend="triton") for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
