"""Bad input to the SDE entry points raises ValueError naming the argument and the fix."""

from __future__ import annotations

import pytest
import torch

from fastgrpo.kernels import logprob_kl, noise_state, sde_step, step_logprob, velocity_kl

X = torch.zeros(2, 8)
KW = {"noise_level": 0.7, "t_cap": 0.9}


def _step(**over):
    args = {"x": X, "v": X, "t": 0.8, "t_next": 0.6, "seed": 0} | KW
    args.update(over)
    return sde_step(**args)


def _logprob(**over):
    args = {"x_next": X, "x": X, "v": X, "t": 0.8, "t_next": 0.6} | KW
    args.update(over)
    return step_logprob(**args)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"v": torch.zeros(2, 9)}, "v has shape"),
        ({"v": torch.zeros(2, 8, device="meta")}, "v is on meta"),
        ({"x": torch.zeros(0, 8), "v": torch.zeros(0, 8)}, "empty batch"),
        ({"x": torch.zeros(8)}, r"x has shape \(8,\); pass a batch"),
        ({"v": torch.zeros(2, 8, dtype=torch.int32)}, "v has dtype"),
        ({"t": 1.5}, r"t must lie in \(0, 1\]"),
        ({"t": 0.0}, r"t must lie in \(0, 1\]"),
        ({"t_next": 0.8}, "t_next must be < t"),
        ({"t_next": -0.1}, "t_next must be >= 0"),
        ({"t": torch.tensor([0.8, 0.5]), "t_next": torch.tensor([0.6, 0.7])}, "t_next must be < t"),
        ({"t": torch.tensor([0.8, 0.5, 0.4])}, r"t has shape \(3,\)"),
        ({"t": torch.tensor(0.8, dtype=torch.bfloat16)}, "t has dtype"),
        ({"t": torch.tensor(0.8, device="meta")}, "t is on meta"),
        ({"noise_level": -0.1}, "noise_level must be >= 0"),
        ({"t_cap": 1.0}, r"t_cap must lie in \[0, 1\)"),
        ({"reduction": "max"}, "reduction="),
        ({"noise": torch.zeros(2, 8)}, "either noise= or seed="),
        ({"seed": -1}, "seed and offset must lie"),
        ({"seed": (1, 2, 3)}, "seed must be"),
        ({"seed": torch.zeros(2)}, "seed tensor must be int64"),
        ({"seed": noise_state(0, device="meta")}, "seed state is on meta"),
    ],
)
def test_sde_step_bad_input(backend, over, match):
    with pytest.raises(ValueError, match=match):
        _step(backend=backend, **over)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"noise_level": 0.0}, "noise_level = 0 makes the step deterministic"),
        ({"x_next": torch.zeros(3, 8)}, "x_next has shape"),
        ({"t": float("nan")}, r"t must lie in \(0, 1\]"),
        ({"backend": "gpu"}, "backend="),
    ],
)
def test_step_logprob_bad_input(over, match):
    with pytest.raises(ValueError, match=match):
        _logprob(**over)


def test_velocity_kl_and_fused_bad_input():
    with pytest.raises(ValueError, match="v_ref has shape"):
        velocity_kl(X, torch.zeros(2, 7), 0.8, 0.6, **KW)
    with pytest.raises(ValueError, match="form="):
        velocity_kl(X, X, 0.8, 0.6, form="kl2", **KW)
    with pytest.raises(ValueError, match="v_ref is on meta"):
        logprob_kl(X, X, X, torch.zeros(2, 8, device="meta"), 0.8, 0.6, **KW)


def test_triton_on_cpu_without_interpreter_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        _step(backend="triton")


def test_auto_backend_uses_the_reference_on_cpu():
    a = _step(backend="auto", seed=(3, 1))
    b = _step(backend="torch", seed=(3, 1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_python_float_times_are_checked_without_reading_any_device():
    meta = torch.zeros(2, 8, device="meta")  # values unreadable, as on a GPU without FASTGRPO_CHECK_VALUES
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1\]"):
        sde_step(meta, meta, 1.5, 0.5, seed=0, **KW)
    with pytest.raises(ValueError, match="t_next must be < t"):
        step_logprob(meta, meta, meta, 0.5, 0.5, **KW)
