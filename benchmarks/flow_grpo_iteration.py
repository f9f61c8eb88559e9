"""One GRPO iteration run the way public Flow-GRPO trainers run it: the end-to-end comparison point.

It computes the same quantities as ``Trainer.iteration`` (same model, conditions, initial noise, config, trained
steps and objective) but with the habits of the public Flow-GRPO training scripts (their FLUX.1 Kontext script:
``scripts/train_flux_kontext.py`` with ``config/grpo.py:counting_flux_kontext``), written from those facts:

- rollouts loop over *sample batches* of ``sample.train_batch_size = 3`` prompts, and each batch over its steps,
  eagerly: one transformer forward, then the eager ``sde_step_with_logprob`` math of ``flow_grpo_baseline.py``
  with fresh ``torch.randn`` noise; latents are kept in the transformer's dtype (bf16 on a GPU), and the stored
  log-prob is that of the float32 sample before it is rounded;
- the scheduler looks every sample's time up in its schedule (``index_for_timestep``: a ``nonzero().item()`` per
  sample), so every step of the rollout and of the update synchronises with the host;
- each sample batch is decoded as soon as it is done and its reward submitted to a thread pool; advantages are
  the per-prompt statistics on the host (numpy, ``(r - mean) / (std + 1e-4)``), clamped in the loss;
- the update shuffles the samples, then per train batch of ``train.batch_size = 3`` and per trained step: the
  policy forward, the reference forward with the adapter disabled (here *always*, also when ``beta = 0``), the
  eager log-prob and KL (two step calls), the clipped loss, ``backward``; gradients accumulate over batches and
  steps (the loss divided as accelerate divides it), then gradient clipping and one AdamW step, and the logged
  statistics are read to the host.

Differences from ``Trainer.iteration`` that are on purpose: no CUDA graphs, no ``torch.compile``, no fused kernels,
no reward/rollout overlap beyond Flow-GRPO's own, no filtering of zero-advantage groups (both sides train the same
samples). The KL is Flow-GRPO's (fastgrpo's ``grpo.kl_form=flow_grpo``), so the benchmarks set that form.

Shapes: latents ``[B, K + 1, N, C]``, log-probs ``[B, K]``; times in seconds are wall clock.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import flow_grpo_baseline as eager
import numpy as np
import torch
from torch import Tensor

from fastgrpo.core.containers import Rollout
from fastgrpo.core.objective import GRPOConfig
from fastgrpo.models.base import Condition, EditModel
from fastgrpo.train.conditions import encode_batch, reward_batch
from fastgrpo.train.loop import Trainer
from fastgrpo.train.metrics.flops import mfu, peak_flops, peak_memory_gib
from fastgrpo.train.profiling import PhaseTimer
from fastgrpo.train.state import mix_seed

# Flow-GRPO's FLUX.1 Kontext config: sample.train_batch_size = train.batch_size = 3 per GPU.
FLOW_GRPO_BATCH = 3
ADV_EPS = 1e-4  # PerPromptStatTracker: std + 1e-4


def scheduler_sigmas(times: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(sigma [b], sigma_next [b])`` for per-sample times ``t [b]``, each looked up in the schedule ``times
    [K + 1]`` one sample at a time as the scheduler's ``index_for_timestep`` does (one host sync per sample)."""
    index = [int((times == value).nonzero()[0].item()) for value in t]
    rows = torch.tensor(index, device=times.device)
    return times[rows], times[rows + 1]


@torch.no_grad()
def rollout_batch(
    model: EditModel,
    cond: Condition,
    times: Tensor,
    initial_noise: Tensor,
    *,
    noise_levels: Sequence[float],
    t_cap: float,
) -> tuple[Tensor, Tensor]:
    """Flow-GRPO's sampling loop for one sample batch of ``b`` conditions: ``(latents [b, K + 1, N, C]`` in the
    model dtype, ``log_probs [b, K]`` float32, 0 on ODE steps). ``noise_levels [K]``: 0 marks an ODE step."""
    x = initial_noise.to(model.dtype)
    batch = x.shape[0]
    latents, log_probs = [x], []
    for k, level in enumerate(noise_levels):
        t = times[k].expand(batch)
        v = model.velocity(x, t, cond)
        sigma, sigma_next = scheduler_sigmas(times, t)
        if level > 0:
            x_next, logp, _, _ = eager.sde_step_with_logprob(
                v, x, sigma, sigma_next, noise_level=level, sigma_max=t_cap
            )
        else:  # an ODE step outside the SDE window: plain Euler, no log-prob
            x_next = x.float() + v.float() * (sigma_next - sigma).reshape(-1, *([1] * (x.dim() - 1)))
            logp = torch.zeros(batch, device=x.device)
        x = x_next.to(latents[0].dtype)
        latents.append(x)
        log_probs.append(logp)
    return torch.stack(latents, dim=1), torch.stack(log_probs, dim=1)


def flow_grpo_advantages(rewards: np.ndarray, group_ids: np.ndarray, std_mode: str) -> np.ndarray:
    """Per-prompt advantages on the host: ``(r - mean_group) / (std + 1e-4)`` with the group's std (``"group"``)
    or the batch's (``"global"``), in float64. ``rewards, group_ids``: ``[B]``."""
    rewards = rewards.astype(np.float64)
    advantages = np.zeros_like(rewards)
    for group in np.unique(group_ids):
        members = group_ids == group
        values = rewards[members]
        std = (np.std(rewards) if std_mode == "global" else np.std(values)) + ADV_EPS
        advantages[members] = (values - values.mean()) / std
    return advantages


def flow_grpo_backward(
    model: EditModel,
    rollout: Rollout,
    cond: Condition,
    *,
    grpo: GRPOConfig,
    noise_level: float,
    t_cap: float,
    train_batch: int = FLOW_GRPO_BATCH,
    order: Tensor | None = None,
) -> dict[str, list[Tensor]]:
    """Flow-GRPO's training loop over one rollout (one inner epoch; its advantages and ``trained`` steps set);
    gradients accumulate into the LoRA weights.

    Per train batch of ``train_batch`` samples (in the shuffled ``order``, ``[B]`` int64; a fresh permutation when
    None) and per trained step: policy forward, reference forward (always), eager log-prob + KL, clipped loss,
    ``backward`` of the loss times ``(batch size / B) / len(steps)`` (accelerate divides by the accumulation count;
    with equal batches that is the same). The gradient equals that of fastgrpo's ``grpo_backward`` on the same
    rollout. Returns the logged statistics per (batch, step) as 0-d device tensors (``loss``, ``policy_loss``,
    ``kl``, ``approx_kl``, ``clipfrac``).
    """
    batch, steps, advantages = rollout.batch_size, rollout.trained or (), rollout.advantages
    assert advantages is not None, "flow_grpo_backward needs the rollout's advantages"
    device = rollout.device
    order = torch.randperm(batch, device=device) if order is None else order
    info: dict[str, list[Tensor]] = defaultdict(list)
    times = rollout.times
    for start in range(0, batch, train_batch):
        rows = order[start : start + train_batch]
        sub = cond.index_select(rows)
        adv = torch.clamp(advantages[rows], -grpo.adv_clip, grpo.adv_clip)
        weight = rows.numel() / batch / len(steps)
        for k in steps:
            x, x_next = rollout.latents[rows, k], rollout.latents[rows, k + 1]
            t = times[k].expand(rows.numel())
            v = model.velocity(x, t, sub)
            with torch.no_grad(), model.reference():
                v_ref = model.velocity(x, t, sub)
            sigma, sigma_next = scheduler_sigmas(times, t)
            logp, kl = eager.logprob_and_kl(
                x_next, x, v, v_ref, sigma, sigma_next, noise_level=noise_level, t_cap=t_cap
            )
            loss, stats = eager.clipped_policy_loss(
                logp, rollout.log_probs[rows, k], adv, clip_low=grpo.clip_low, clip_high=grpo.clip_high, kl=kl,
                beta=grpo.beta,
            )  # fmt: skip
            (loss * weight).backward()
            info["loss"].append(loss.detach())
            for name, value in stats.items():
                info[name].append(value)
    return info


class FlowGRPOIteration:
    """The baseline iteration on a :class:`Trainer`'s model, conditions, rewards, optimiser and config.

    ``iteration(step)`` returns a metrics row with the keys of ``Trainer.iteration``'s timing part: ``time/step``,
    ``time/<phase>`` (data, rollout, decode, reward_submit, reward, advantages, update, optimizer), ``images_per_s``,
    ``tflops_per_s``, ``mfu`` (None off the peak table), ``peak_mem_gib`` (None off CUDA), plus ``reward_mean`` and
    the logged loss statistics. Build the trainer with ``runtime.cuda_graphs=false runtime.compile=false`` and
    ``sde.sampler=sde`` (the baseline implements SPEC S1's step only).

    Args:
        trainer: supplies everything but the loop; it is not modified except for its LoRA weights and optimiser.
        sample_batch, train_batch: Flow-GRPO's ``sample.train_batch_size`` and ``train.batch_size``.
    """

    def __init__(self, trainer: Trainer, *, sample_batch: int = FLOW_GRPO_BATCH, train_batch: int = FLOW_GRPO_BATCH):
        if sample_batch < 1 or train_batch < 1:
            raise ValueError(f"sample_batch and train_batch must be >= 1, got {sample_batch} and {train_batch}")
        if (
            trainer.cfg.sde.sampler != "sde"
            or trainer.cfg.sampler.sde_steps is not None
            or trainer.cfg.sampler.shared_noise
        ):
            raise ValueError(
                "the Flow-GRPO baseline runs SPEC S1's SDE step over a fixed window with independent noise: "
                "build the trainer with sde.sampler=sde, sampler.sde_steps=null, sampler.shared_noise=false"
            )
        self.trainer, self.sample_batch, self.train_batch = trainer, sample_batch, train_batch
        self.timer = PhaseTimer(trainer.device)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="flow-grpo-reward")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        with self.timer.phase(name):
            yield

    def _rollout_and_score(self, step: int, batch: Any, cond: Condition) -> tuple[Rollout, np.ndarray]:
        tr, cfg = self.trainer, self.trainer.cfg
        model, device = tr.model, tr.device
        plan = tr.plans(cond.height, cond.width)
        t_cap, times, levels = plan.spec.t_cap, plan.schedule.to(device).times, plan.noise_levels
        # the trainer's initial noise of this step (one chunk): both sides start from the same x_1
        gen = torch.Generator().manual_seed(mix_seed(cfg.rollout_seed, step, tr.dist.rank, 1))
        initial = model.initial_noise(batch.size, cond.height, cond.width, generator=gen)
        parts: list[tuple[Tensor, Tensor]] = []
        futures: list[Future[Any]] = []
        for start in range(0, batch.size, self.sample_batch):
            rows = slice(start, min(start + self.sample_batch, batch.size))
            sub = cond.index_select(torch.arange(rows.start, rows.stop, device=device))
            with self._phase("rollout"):
                part = rollout_batch(model, sub, times, initial[rows], noise_levels=levels, t_cap=t_cap)
            with self._phase("decode"):
                images = model.decode_uint8(part[0][:, -1], cond.height, cond.width).numpy()
            with self._phase("reward_submit"):
                futures.append(self._pool.submit(tr.reward.evaluate, reward_batch(batch.samples(rows), images)))
            parts.append(part)
        with self._phase("reward"):
            rewards = np.concatenate([f.result().total().float().cpu().numpy() for f in futures])
        rollout = Rollout(
            latents=torch.cat([p[0] for p in parts]), log_probs=torch.cat([p[1] for p in parts]), times=times,
            group_ids=batch.group_ids.to(device), rewards=torch.as_tensor(rewards, dtype=torch.float32, device=device),
            sde_steps=plan.sde_steps, trained=tr.generator.trained_steps(step, plan),
        )  # fmt: skip
        return rollout, rewards

    def iteration(self, step: int) -> dict[str, Any]:
        """Run the baseline's iteration ``step`` (0-based, as ``Trainer.iteration``); returns its metrics row."""
        tr, cfg = self.trainer, self.trainer.cfg
        started = time.perf_counter()
        with self._phase("data"):
            batch = tr.source.rank_batch(step, tr.plan)
            cond = encode_batch(tr.model, batch)
        rollout, rewards = self._rollout_and_score(step, batch, cond)
        with self._phase("advantages"):
            adv = flow_grpo_advantages(rewards, batch.group_ids.numpy(), cfg.grpo.adv_std)
            rollout = replace(rollout, advantages=torch.as_tensor(adv, dtype=torch.float32).to(tr.device))
        flops_fwd, flops_train = tr.metrics.flops(cond, rollout)
        steps = rollout.trained or ()
        plan = tr.plans(cond.height, cond.width)
        logged: dict[str, float] = {}
        for _epoch in range(cfg.optim.inner_epochs):
            with self._phase("update"):
                info = flow_grpo_backward(
                    tr.model, rollout, cond, grpo=cfg.grpo, noise_level=cfg.sde.noise_level, t_cap=plan.spec.t_cap,
                    train_batch=self.train_batch,
                )  # fmt: skip
            with self._phase("optimizer"):
                clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(tr.policy.params, clip)
                tr.policy.optimizer.step()
                tr.policy.zero_grad()
                logged = {name: torch.mean(torch.stack(values)).item() for name, values in info.items()}
                logged["grad_norm"] = grad_norm.item()
        phases = self.timer.read()
        seconds = time.perf_counter() - started
        n_train = len(steps) * cfg.optim.inner_epochs
        # the model FLOPs the trainer counts: a reference forward that beta = 0 does not need is no useful work
        reference = n_train * flops_fwd if cfg.grpo.needs_reference else 0
        per_sample = plan.num_steps * flops_fwd + n_train * flops_train + reference
        total_flops = per_sample * batch.size
        finite = rewards[np.isfinite(rewards)]
        return {
            "step": step + 1,
            "reward_mean": float(finite.mean()) if finite.size else math.nan,
            **logged,
            "trained_steps": len(steps),
            "time/step": seconds,
            **{f"time/{name}": value for name, value in phases.items()},
            "images_per_s": batch.size / seconds,
            "tflops_per_s": total_flops / seconds / 1e12,
            "mfu": mfu(total_flops, seconds, peak_flops(tr.device)),
            "peak_mem_gib": peak_memory_gib(tr.device),
        }
