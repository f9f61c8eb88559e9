"""Compiled Triton kernels on a CUDA device: realistic sizes, CUDA graphs, torch.compile with Inductor."""

from __future__ import annotations

import pytest
import torch
from helpers import replay_sde_graph

from fastgrpo.kernels import grpo_loss, logprob_kl, noise_state, sde_step, step_logprob
from fastgrpo.kernels.sde import naive
from fastgrpo.kernels.sde.philox import philox_normal

pytestmark = pytest.mark.gpu
KW = {"noise_level": 0.7, "t_cap": 0.96}


def _batch(b=16, tokens=4096, channels=64, dtype=torch.bfloat16):
    x = torch.randn(b, tokens, channels, device="cuda", dtype=dtype)
    v = torch.randn_like(x)
    t = torch.linspace(1.0, 0.2, b, device="cuda")
    return x, v, t, t - 0.04


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_flux_sized_step_matches_reference(dtype):
    x, v, t, tn = _batch(dtype=dtype)
    x_next, logp = sde_step(x, v, t, tn, seed=(11, 3), backend="triton", **KW)
    noise = philox_normal(11, 3, x.shape[0], x[0].numel(), "cuda").reshape(x.shape)
    want_x, _ = naive.sde_step_ref(x, v, t, tn, noise, **KW)
    tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps * want_x.abs().max().item()
    assert (x_next.float() - want_x.float()).abs().max().item() <= tol
    want_lp = naive.step_logprob_ref(x_next.double(), x.double(), v.double(), t, tn, **KW)
    torch.testing.assert_close(logp.double(), want_lp, rtol=1e-5, atol=1e-5)
    assert torch.equal(step_logprob(x_next, x, v, t, tn, backend="triton", **KW), logp)


def test_fused_backward_matches_reference():
    x, v, t, tn = _batch(b=8)
    x_next = x + 0.05 * torch.randn_like(x)
    v_ref = v + 0.1 * torch.randn_like(v)
    g = torch.randn(8, device="cuda")
    v1 = v.clone().requires_grad_(True)
    lp, kl = logprob_kl(x_next, x, v1, v_ref, t, tn, backend="triton", **KW)
    ((lp + kl) * g).sum().backward()
    v2 = v.double().requires_grad_(True)
    lp2, kl2 = naive.logprob_kl_ref(x_next.double(), x.double(), v2, v_ref.double(), t, tn, **KW)
    ((lp2 + kl2) * g).sum().backward()
    torch.testing.assert_close(lp.double(), lp2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl.double(), kl2, rtol=1e-4, atol=1e-6)
    scale = v2.grad.abs().max().item()
    assert (v1.grad.double() - v2.grad).abs().max().item() <= 2 * torch.finfo(torch.bfloat16).eps * scale


def test_cuda_graph_replay_draws_fresh_noise_reproducibly():
    x, v, t, tn = _batch(b=4, tokens=256)
    state = noise_state(5, device="cuda")
    draws = replay_sde_graph(
        lambda: sde_step(x, v, t, tn, seed=state, backend="triton", **KW), state, offset=100, replays=3
    )
    assert state.tolist() == [5, 103]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    for k, draw in enumerate(draws):
        eager, _ = sde_step(x, v, t, tn, seed=(5, 100 + k), backend="triton", **KW)
        assert torch.equal(draw, eager)


def test_inductor_compiles_the_objective_without_graph_breaks():
    torch._dynamo.reset()
    x, v, t, tn = _batch(b=4, tokens=512)
    x_next, v_ref = x + 0.05 * torch.randn_like(x), v + 0.1 * torch.randn_like(v)
    old, adv = torch.randn(4, device="cuda"), torch.randn(4, device="cuda")

    def objective(v):
        lp, kl = logprob_kl(x_next, x, v, v_ref, t, tn, backend="triton", **KW)
        return grpo_loss(lp, old, adv, clip_low=0.2, clip_high=0.2, kl=kl, beta=0.04, backend="triton")[0]

    v1, v2 = v.clone().requires_grad_(True), v.clone().requires_grad_(True)
    compiled = torch.compile(objective, fullgraph=True)
    compiled(v1).backward()
    objective(v2).backward()
    torch.testing.assert_close(v1.grad, v2.grad)
