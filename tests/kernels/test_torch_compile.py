"""``torch.compile`` traces through the Triton operators without graph breaks (forward and backward)."""

from __future__ import annotations

import pytest
import torch

from fastgrpo.kernels import grpo_loss, logprob_kl, sde_step
from fastgrpo.kernels._registry import triton_op_api

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(triton_op_api() is None, reason="this torch has no torch.library.triton_op")
KW = {"noise_level": 0.7, "t_cap": 0.9, "backend": "triton"}


def _objective(x_next, x, v, v_ref, t, tn, old, adv):
    logp, kl = logprob_kl(x_next, x, v, v_ref, t, tn, **KW)
    loss, stats = grpo_loss(logp, old, adv, clip_low=0.2, clip_high=0.2, kl=kl, beta=0.05, backend="triton")
    return loss, stats.values


def test_objective_compiles_fullgraph_with_backward():
    torch._dynamo.reset()
    x, x_next, v, v_ref = (torch.randn(3, 2, 500, device=DEVICE) for _ in range(4))
    t, tn = torch.tensor([0.9, 0.5, 0.3], device=DEVICE), torch.tensor([0.8, 0.4, 0.1], device=DEVICE)
    old, adv = torch.randn(3, device=DEVICE), torch.randn(3, device=DEVICE)
    compiled = torch.compile(_objective, fullgraph=True, backend="aot_eager")
    v1 = v.clone().requires_grad_(True)
    loss, stats = compiled(x_next, x, v1, v_ref, t, tn, old, adv)
    loss.backward()
    v2 = v.clone().requires_grad_(True)
    want, want_stats = _objective(x_next, x, v2, v_ref, t, tn, old, adv)
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(stats, want_stats)
    torch.testing.assert_close(v1.grad, v2.grad)


def test_sde_step_compiles_fullgraph():
    torch._dynamo.reset()
    x, v = torch.randn(2, 700, device=DEVICE), torch.randn(2, 700, device=DEVICE)

    def step(x, v, noise):
        return sde_step(x, v, 0.8, 0.7, noise=noise, **KW)

    noise = torch.randn_like(x)
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(x, v, noise)
    want = step(x, v, noise)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
