"""The end-to-end comparison point of ``benchmarks/``: the Flow-GRPO-style iteration must compute what fastgrpo
computes (same gradient of the same objective on the same rollout), else its speed ratio means nothing; and the
random-weights Kontext-architecture models the benchmarks train must have the stated shapes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import flow_grpo_iteration as fgi  # noqa: E402
import random_models  # noqa: E402

from fastgrpo.core.advantages import group_advantages  # noqa: E402
from fastgrpo.kernels import noise_state  # noqa: E402
from fastgrpo.kernels.sde.naive import step_logprob_ref  # noqa: E402
from fastgrpo.train.conditions import encode_batch  # noqa: E402
from fastgrpo.train.config import load_config  # noqa: E402
from fastgrpo.train.loop import Trainer  # noqa: E402
from fastgrpo.train.rollout import rollout  # noqa: E402
from fastgrpo.train.update import grpo_backward  # noqa: E402

#: the micro random Kontext model (1 + 1 blocks), 2 conditions x 3 samples (two Flow-GRPO batches of 3), 3 SDE
#: steps; a wide clip range so that some ratios are clipped and some not; a KL weight large enough to matter
SMALL = [
    "sde.sampler=sde",  # the baseline runs SPEC S1's step over a fixed window with independent noise
    "sampler.sde_steps=null",
    "sampler.shared_noise=false",
    "model.path=micro",
    "model.dtype=fp32",
    "data.resolutions=[32x32]",
    "sampler.train_steps=3",
    "sampler.train_fraction=0.67",
    "grpo.clip_low=0.2",
    "grpo.clip_high=0.2",
    "grpo.beta=0.5",
    "runtime.device=cpu",
    "runtime.kernel_backend=torch",
]
CONFIG = REPO / "benchmarks" / "flux_kontext_random.yaml"
STEPS = (0, 2)  # the trained steps of the gradient tests


@pytest.fixture(scope="module", autouse=True)
def _restore_model_registry():
    """The random model type registered here must not leak into other test modules' view of the registry."""
    from fastgrpo.models import registry

    saved = dict(registry._LOADERS)
    yield
    registry._LOADERS.clear()
    registry._LOADERS.update(saved)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    random_models.register()
    cfg = load_config(CONFIG, [*SMALL, f"logging.output_dir={tmp_path_factory.mktemp('runs')}"])
    trainer = Trainer(cfg, log=lambda _m: None)
    with torch.no_grad():  # a LoRA away from zero, so that the policy and the reference differ
        gen = torch.Generator().manual_seed(3)
        for p in trainer.policy.params:
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    yield trainer
    trainer.generator.close()
    trainer.close()
    trainer.run_dir.close()


@pytest.fixture(scope="module")
def problem(trainer):
    """Conditions, a fastgrpo rollout with old log-probs moved off the current ones, advantages and the
    trained steps set, and the step math."""
    batch = trainer.source.rank_batch(0, trainer.plan)
    cond = encode_batch(trainer.model, batch)
    plan = trainer.plans(cond.height, cond.width)
    spec = dataclasses.replace(plan.spec, backend="torch")
    initial = trainer.model.initial_noise(
        batch.size, cond.height, cond.width, generator=torch.Generator().manual_seed(5)
    )
    ro = rollout(trainer.model, cond, dataclasses.replace(plan, spec=spec), initial, noise_state=noise_state(7, 0),
                 group_ids=batch.group_ids)  # fmt: skip
    gen = torch.Generator().manual_seed(11)
    log_probs = ro.log_probs + 0.6 * (torch.rand(ro.log_probs.shape, generator=gen) - 0.5)  # ratios 0.74 .. 1.35
    ro = dataclasses.replace(ro, log_probs=log_probs, advantages=torch.randn(batch.size, generator=gen), trained=STEPS)
    return cond, ro, spec


def _grads(trainer) -> list[torch.Tensor]:
    grads = [p.grad.detach().clone() for p in trainer.policy.params]
    trainer.policy.zero_grad()
    return grads


def test_scheduler_sigmas_look_each_sample_up_in_the_schedule():
    times = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    sigma, sigma_next = fgi.scheduler_sigmas(times, times[[2, 0, 3]])
    assert sigma.tolist() == pytest.approx([0.5, 1.0, 0.2])
    assert sigma_next.tolist() == pytest.approx([0.2, 0.8, 0.0])


@pytest.mark.parametrize("beta", [0.5, 0.0])
def test_baseline_gradient_and_loss_match_grpo_backward(trainer, problem, beta):
    cfg = trainer.cfg
    grpo = dataclasses.replace(cfg.grpo, beta=beta)
    cond, ro, spec = problem
    trainer.policy.zero_grad()
    stats = grpo_backward(trainer.model, ro, cond, grpo=grpo, spec=spec, micro_batch=3)
    expected = _grads(trainer)
    order = torch.randperm(ro.batch_size, generator=torch.Generator().manual_seed(2))  # Flow-GRPO shuffles
    info = fgi.flow_grpo_backward(trainer.model, ro, cond, grpo=grpo, noise_level=spec.noise_level, t_cap=spec.t_cap,
                                  train_batch=3, order=order)  # fmt: skip
    got = _grads(trainer)

    assert any(g.abs().max() > 0 for g in expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=2e-4, atol=1e-8)
    # the objective: fastgrpo's accumulated loss = the mean over batches and steps of the baseline's losses
    baseline_loss = torch.stack(info["loss"]).mean()
    torch.testing.assert_close(baseline_loss, stats.values[0], rtol=1e-5, atol=1e-7)
    clipped = torch.stack(info["clipfrac"]).mean()
    assert 0 < clipped < 1, "the test problem should clip some ratios and not others"


def test_a_different_kl_is_detected(trainer, problem):
    """Negative control: the comparison above sees the KL term (fastgrpo's exact KL gives another gradient)."""
    cfg = trainer.cfg
    cond, ro, spec = problem
    trainer.policy.zero_grad()
    grpo_backward(trainer.model, ro, cond, grpo=dataclasses.replace(cfg.grpo, kl_form="exact"), spec=spec)
    expected = _grads(trainer)
    fgi.flow_grpo_backward(trainer.model, ro, cond, grpo=cfg.grpo, noise_level=spec.noise_level, t_cap=spec.t_cap)
    got = _grads(trainer)
    assert max(float((g - e).abs().max() / e.abs().max()) for g, e in zip(got, expected, strict=True)) > 1e-2


def test_baseline_rollout_stores_each_steps_log_density(trainer, problem):
    cfg = trainer.cfg
    cond, ro, spec = problem
    t_cap = spec.t_cap
    sub = cond.index_select(torch.arange(3))
    initial = ro.latents[:3, 0]
    latents, log_probs = fgi.rollout_batch(trainer.model, sub, ro.times, initial, noise_levels=[0.7, 0.0, 0.7],
                                           t_cap=t_cap)  # fmt: skip
    assert latents.shape == (3, 4, *ro.latent_shape) and log_probs.shape == (3, 3)
    assert torch.isfinite(latents).all()
    assert torch.equal(log_probs[:, 1], torch.zeros(3)), "an ODE step has no log-prob"
    for k in (0, 2):
        with torch.no_grad():
            v = trainer.model.velocity(latents[:, k], ro.times[k].expand(3), sub)
        expected = step_logprob_ref(latents[:, k + 1], latents[:, k], v, ro.times[k], ro.times[k + 1],
                                    noise_level=0.7, t_cap=t_cap)  # fmt: skip
        torch.testing.assert_close(log_probs[:, k], expected, rtol=1e-5, atol=1e-4)
    assert cfg.sde.reduction == "mean"


def test_flow_grpo_advantages_are_the_group_advantages():
    rewards = np.array([0.1, 0.5, 0.9, 0.3, 0.3, 0.7, 2.0, -1.0, 0.5])
    ids = np.repeat(np.arange(3), 3)
    got = fgi.flow_grpo_advantages(rewards, ids, "group")
    ref = group_advantages(torch.tensor(rewards), torch.tensor(ids), 3, clip=None).advantages
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5)
    got_global = fgi.flow_grpo_advantages(rewards, ids, "global")
    ref_global = group_advantages(torch.tensor(rewards), torch.tensor(ids), 3, std_mode="global", clip=None)
    np.testing.assert_allclose(got_global, ref_global.advantages.numpy(), rtol=1e-5)


def test_baseline_iteration_trains_and_reports(trainer):
    before = [p.detach().clone() for p in trainer.policy.params]
    runner = fgi.FlowGRPOIteration(trainer)
    try:
        row = runner.iteration(1)
    finally:
        runner.close()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.policy.params, strict=True)), "AdamW did not step"
    for key in ("time/step", "time/rollout", "time/decode", "time/reward", "time/update", "time/optimizer"):
        assert row[key] > 0, key
    assert row["images_per_s"] > 0 and row["tflops_per_s"] > 0 and np.isfinite(row["loss"])
    assert row["trained_steps"] == trainer.cfg.sampler.trained_steps


def test_random_kontext_sizes_have_the_stated_shapes():
    assert random_models.parameter_count("full") == pytest.approx(11.9e9, rel=0.01)  # FLUX.1: 11.9B
    assert random_models.parameter_count("mid") == pytest.approx(1.27e9, rel=0.01)
    full = random_models.SIZES["full"]
    assert (full.double_blocks, full.single_blocks, full.hidden, full.text_tokens) == (19, 38, 3072, 512)
    assert sum(full.rope_axes) == full.head_dim
    with pytest.raises(ValueError, match="choose one of"):
        random_models.build_random_kontext("huge", device="cpu")


def test_random_kontext_model_is_seeded_and_registered():
    from fastgrpo.models.registry import load_model

    assert random_models.register() == random_models.register() == "flux_kontext_random"
    a = load_model("flux_kontext_random", "micro", dtype=torch.float32, device="cpu")
    b = random_models.build_random_kontext("micro", dtype=torch.float32, device="cpu")
    for (name, x), (_, y) in zip(a.transformer.state_dict().items(), b.transformer.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert torch.get_default_dtype() == torch.float32
    cond = a.encode(torch.rand(2, 3, 32, 32), ["make it red", "make it red"])
    assert torch.equal(cond.tensors["prompt_embeds"][0], cond.tensors["prompt_embeds"][1])
    assert cond.tensors["prompt_embeds"].shape == (2, 8, 32)
    x = torch.randn(2, *a.latent_shape(32, 32))
    v = a.velocity(x, torch.full((2,), 0.5), cond)
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_train_random_runs_fastgrpo_train_on_the_random_model(tmp_path):
    command = [
        sys.executable, str(REPO / "benchmarks" / "train_random.py"), "train",
        "--config", str(REPO / "benchmarks" / "flux_kontext_random.yaml"),
        "model.path=micro", "model.dtype=fp32", "runtime.device=cpu", "data.resolutions=[32x32]",
        "runtime.max_steps=1", f"logging.output_dir={tmp_path}", "logging.run_name=micro",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "micro" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    assert rows[0]["time/step"] > 0 and rows[0]["trained_steps"] == 1
