"""The fused GRPO loss against the float64 reference: value, gradients, statistics, bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import poisoned_outputs

from fastgrpo.kernels import GRPOStats, grpo_loss
from fastgrpo.kernels.grpo.naive import STAT_NAMES, grpo_loss_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CLIP = {"clip_low": 0.2, "clip_high": 0.28}


def _inputs(shape, adv_per_step=False, spread=0.4):
    old = torch.randn(shape, device=DEVICE)
    logp = old + spread * torch.randn(shape, device=DEVICE)
    adv = torch.randn(shape if adv_per_step else shape[:1], device=DEVICE)
    kl = torch.rand(shape, device=DEVICE)
    return logp, old, adv, kl


def _run(backend, logp, old, adv, kl, beta, dtype=torch.float32):
    lp = logp.to(dtype).detach().requires_grad_(True)
    k = kl.to(dtype).detach().requires_grad_(True) if kl is not None else None
    if backend is None:
        loss, stats = grpo_loss_ref(lp, old.to(dtype), adv.to(dtype), kl=k, beta=beta, **CLIP)
    else:
        loss, st = grpo_loss(lp, old, adv, kl=k, beta=beta, backend=backend, **CLIP)
        stats = st.values
    loss.backward()
    return loss.detach(), stats, lp.grad, (k.grad if k is not None else None)


@pytest.mark.parametrize("shape", [(1,), (7,), (24, 10), (3, 1500)])  # the last walks several blocks
@pytest.mark.parametrize("with_kl", [True, False])
@pytest.mark.parametrize("adv_per_step", [False, True])
def test_grpo_loss_matches_float64_reference(shape, with_kl, adv_per_step):
    logp, old, adv, kl = _inputs(shape, adv_per_step=adv_per_step and len(shape) == 2)
    kl = kl if with_kl else None
    beta = 0.04 if with_kl else 0.0
    with poisoned_outputs():
        loss, stats, g_lp, g_kl = _run("triton", logp, old, adv, kl, beta)
    loss64, stats64, g_lp64, g_kl64 = _run(None, logp, old, adv, kl, beta, torch.float64)
    torch.testing.assert_close(loss.double(), loss64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.double(), stats64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_lp.double(), g_lp64, rtol=1e-5, atol=1e-8)
    if with_kl:
        torch.testing.assert_close(g_kl.double(), g_kl64, rtol=1e-6, atol=1e-9)


def test_torch_backend_equals_reference_and_stats_names():
    logp, old, adv, kl = _inputs((6, 4))
    loss, stats = grpo_loss(logp, old, adv, kl=kl, beta=0.1, backend="torch", **CLIP)
    want, want_stats = grpo_loss_ref(logp, old, adv, kl=kl, beta=0.1, **CLIP)
    assert torch.equal(loss, want) and torch.equal(stats.values, want_stats)
    assert isinstance(stats, GRPOStats) and stats.values.device == logp.device
    d = stats.to_dict()
    assert list(d) == list(STAT_NAMES)
    assert d["ratio_min"] <= d["ratio_mean"] <= d["ratio_max"]
    assert stats.loss.item() == pytest.approx(d["policy_loss"] + 0.1 * d["kl"], rel=1e-6)


def test_on_policy_gives_minus_mean_advantage_and_no_clipping():
    old = torch.randn(8, 3, device=DEVICE)
    adv = torch.randn(8, device=DEVICE)
    for backend in ("triton", "torch"):
        loss, stats = grpo_loss(old.clone(), old, adv, backend=backend, **CLIP)
        torch.testing.assert_close(loss, -adv.mean(), rtol=1e-6, atol=1e-7)
        d = stats.to_dict()
        assert d["clip_frac"] == 0 and d["approx_kl"] == 0 and d["ratio_min"] == d["ratio_max"] == 1.0


def test_clip_fraction_counts_only_clipped_gradients():
    old = torch.zeros(4, device=DEVICE)
    # r = e^0.5 > 1.28 with A > 0 (clipped), r = e^0.5 with A < 0 (not clipped), r = e^-0.5 < 0.8 with A < 0
    # (clipped), r = e^-0.5 with A > 0 (not clipped)
    logp = torch.tensor([0.5, 0.5, -0.5, -0.5], device=DEVICE, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0], device=DEVICE)
    loss, stats = grpo_loss(logp, old, adv, backend="triton", **CLIP)
    loss.backward()
    d = stats.to_dict()
    assert d["clip_frac"] == 0.5 and d["clip_frac_high"] == 0.25 and d["clip_frac_low"] == 0.25
    assert logp.grad[0] == 0 and logp.grad[2] == 0 and logp.grad[1] != 0 and logp.grad[3] != 0


def test_nothing_reads_the_device(monkeypatch):
    logp, old, adv, kl = _inputs((4, 2))

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in grpo_loss")

    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", forbidden)
    grpo_loss(logp.requires_grad_(True), old, adv, kl=kl, beta=0.1, backend="triton", **CLIP)[0].backward()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"old_logp": torch.zeros(5)}, "old_logp has shape"),
        ({"adv": torch.zeros(3)}, "adv has shape"),
        ({"kl": torch.zeros(5)}, "kl must be"),
        ({"logp": torch.zeros(4, dtype=torch.float64)}, "logp has dtype"),
        ({"logp": torch.zeros(0), "old_logp": torch.zeros(0), "adv": torch.zeros(0)}, "non-empty"),
        ({"clip_low": 1.0}, "clip_low must be < 1"),
        ({"clip_high": -0.1}, "clip_high must be a non-negative"),
        ({"beta": float("nan")}, "beta must be a non-negative"),
        ({"backend": "cuda"}, "backend="),
        ({"adv": torch.zeros(4, device="meta")}, "adv is on meta"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = {"logp": torch.zeros(4), "old_logp": torch.zeros(4), "adv": torch.zeros(4)} | CLIP
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        grpo_loss(**args)
