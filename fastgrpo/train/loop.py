"""The GRPO training loop (DESIGN "One GRPO iteration"): sample, encode, roll out, decode + score, advantages,
update, log / evaluate / checkpoint.

One iteration ``s`` on each rank:

1. the rank's ``P · G`` samples of the global batch (:mod:`fastgrpo.train.conditions`); conditions encoded once;
2. rollouts in chunks of ``sampler.rollout_batch`` samples (all at once by default), each chunk's SDE noise keyed
   by ``(seed, s, global chunk)``; as soon as a chunk is decoded its rewards are computed on a worker thread
   while the next chunk rolls out;
3. rewards gathered across ranks, group advantages (NaN rewards masked out);
4. per inner epoch: the GRPO backward over the trained steps in ``optim.grad_accum`` micro-batches, one gradient
   all-reduce, clipping, then the statistics vector is read **once** (the only host synchronisation of the
   update): a non-finite loss or gradient skips the optimiser step, otherwise AdamW steps on the LoRA weights;
5. metrics (one JSON line), evaluation, sample grids, checkpoints at their cadences.

Everything random is keyed by ``(seed, s)`` or saved in checkpoints, so an interrupted and resumed run continues
bit for bit (on one backend and device).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgrpo.core.advantages import gather_rewards, group_advantages, rank_slice
from fastgrpo.core.containers import Rollout
from fastgrpo.kernels import noise_state
from fastgrpo.kernels.grpo.naive import STAT_NAMES
from fastgrpo.models.base import Condition, EditModel, images_to_tensor
from fastgrpo.train.conditions import ConditionPlan, RankBatch, build_condition_source
from fastgrpo.train.config import TrainConfig, config_to_dict, load_config, save_resolved_config
from fastgrpo.train.evaluate import build_model, decode_uint8, evaluate_conditions
from fastgrpo.train.graphs import TrainingGraphs
from fastgrpo.train.metrics.flops import count_flops, mfu, peak_flops, peak_memory_gib, reset_peak_memory
from fastgrpo.train.metrics.progress import ProgressBar
from fastgrpo.train.parallel.distributed import DistContext, init_distributed
from fastgrpo.train.parallel.fsdp import (
    check_lockstep_evaluation,
    full_optimizer_state,
    full_tensor,
    load_optimizer_state,
    shard_into_,
    shard_transformer,
    write_lora,
)
from fastgrpo.train.profiling import Annotator, PhaseTimer, ProfileWindow
from fastgrpo.train.rollout import rollout
from fastgrpo.train.storage.checkpoints import CheckpointManager
from fastgrpo.train.storage.files import atomic_directory, describe_os_error
from fastgrpo.train.storage.run_dir import RunDir, RunDirError
from fastgrpo.train.update import grpo_backward

__all__ = ["TrainResult", "Trainer", "TrainingError", "train"]

logger = logging.getLogger(__name__)

#: config keys a resumed run may change (everything else must equal the saved config)
# settings a resumed run may change: length, logging, and how (not what) it computes
RESUMABLE_CHANGES = (
    "runtime.max_steps", "logging.", "profile.", "runtime.device", "runtime.kernel_backend", "runtime.compile",
    "runtime.cuda_graphs", "model.attention_backend",
)  # fmt: skip

_M63 = (1 << 63) - 1


class TrainingError(RuntimeError):
    """The run cannot go on (diverged, rewards all failing, inconsistent resume); the message says why."""


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style mixing), so nearby inputs give unrelated streams."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return value & _M63


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: its directory, the iterations done, the last metrics."""

    run_dir: Path
    steps_done: int
    stopped_by: str | None = None
    initial_eval: float | None = None
    final_eval: float | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)


class _Signals:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint after the current iteration and exits."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:  # a second signal: stop now
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt(f"{name} received twice")
        self.received = name

    def __enter__(self) -> _Signals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _capture_rng(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    diffs = []
    for section, values in current.items():
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if any(dotted == c or (c.endswith(".") and dotted.startswith(c)) for c in RESUMABLE_CHANGES):
                continue
            old = saved.get(section, {}).get(key)
            if old != value:
                diffs.append(f"{dotted}: saved {old!r}, now {value!r}")
    return diffs


class Trainer:
    """One GRPO training run of ``cfg``; :meth:`run` does it. Build on every rank (``torchrun``)."""

    def __init__(self, cfg: TrainConfig, *, dist: DistContext | None = None, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.runtime.device, cfg.runtime.distributed_backend)
        self.device = self.dist.device
        self._log_fn = log
        self.progress: ProgressBar | None = None
        self.annotate = Annotator(cfg.profile.nvtx)
        self.timer = PhaseTimer(self.device)
        self._setup_run_dir()
        self.tensorboard = self._open_tensorboard()
        self._setup_model()
        self._setup_data_and_rewards()
        self.checkpoints = CheckpointManager(
            self.run_dir.checkpoints, keep=cfg.logging.keep_checkpoints, rank=self.dist.rank,
            world_size=self.dist.world_size, barrier=self.dist.barrier,
        )  # fmt: skip
        self.step = 0
        self.nonfinite_in_row = 0
        self.skipped_total = 0
        self.reward_failures_in_row = 0
        self._flops: dict[tuple[int, int], tuple[float, float]] = {}
        self._schedules: dict[tuple[int, int], Any] = {}
        # runtime.cuda_graphs: rollouts and update micro-steps replay CUDA graphs (eager, reason logged, off CUDA)
        self.graphs = TrainingGraphs(self.model, self.params) if cfg.runtime.cuda_graphs else None
        self._rollout_fn = rollout if self.graphs is None else self.graphs.rollout
        self._backward_fn = grpo_backward if self.graphs is None else self.graphs.backward

    # --- set-up --------------------------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        if not self.dist.is_main:
            return
        if self._log_fn is not None:
            self._log_fn(message)
        elif self.progress is not None:
            self.progress.write(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def _setup_run_dir(self) -> None:
        cfg = self.cfg
        name = cfg.logging.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = self.dist.broadcast_object(name)
        path = Path(cfg.logging.output_dir) / name
        if self.dist.is_main:
            self.run_dir = RunDir(path)
            saved = path / "config.yaml"
            if saved.is_file():
                old = config_to_dict(load_config(saved))
                diffs = _config_differences(old, config_to_dict(cfg))
                if diffs:
                    raise TrainingError(
                        f"{path} holds a run with a different config ({'; '.join(diffs[:5])}); resume it with the "
                        "same settings, or choose another logging.run_name for a new run"
                    )
            save_resolved_config(cfg, path)
        else:
            self.run_dir = RunDir(path, create=False)
        self.dist.barrier()

    def _setup_model(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.runtime.seed)  # identical LoRA initialisation on every rank
        self.model: EditModel = build_model(cfg, self.device)
        lora_dtype = torch.float32 if cfg.lora.dtype == "fp32" else None
        self.params = self.model.add_lora(
            cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules,
            init_lora_weights=cfg.lora.init_lora_weights, dtype=lora_dtype,
        )  # fmt: skip
        if not self.params:
            raise TrainingError("LoRA attached no trainable parameters: check lora.target_modules")
        self.dist.check_same(self.params, "the initial LoRA weights")
        self.compiled: Any = None  # runtime.compile: regional torch.compile after add_lora (peft wraps the Linears) and
        if cfg.runtime.compile:  # before FSDP (fully_shard renames the block classes compile_blocks looks for)
            from fastgrpo.models.compile import compile_blocks

            self.compiled = compile_blocks(self.model.transformer)
            self.log(f"torch.compile: {self.compiled.describe()}; first calls compile (time/compile in metrics)")
        if (
            cfg.runtime.fsdp
        ):  # FSDP2 (fastgrpo.train.parallel.fsdp): from here on self.params are the sharded LoRA weights
            self.params = shard_transformer(self.model, self.dist)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
        warmup = o.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda n: min(1.0, (n + 1) / warmup) if warmup else 1.0
        )
        self.ema = [p.detach().clone() for p in self.params] if o.ema_decay is not None else None

    def _setup_data_and_rewards(self) -> None:
        cfg = self.cfg
        from fastgrpo.rewards.async_eval import AsyncRewardEvaluator
        from fastgrpo.rewards.registry import build_reward

        self.plan = ConditionPlan(
            cfg.sampler.prompts_per_step, cfg.sampler.group_size, self.dist.world_size, self.dist.rank,
            cfg.data.placement,
        )  # fmt: skip
        self.source = build_condition_source(cfg.data, cfg.runtime.seed, self.plan.global_conditions)
        self.held_out = self.source.held_out() if cfg.logging.eval_every > 0 else []
        if cfg.runtime.fsdp:  # every FSDP forward needs all ranks: the same number of evaluation batches on each
            s = cfg.sampler
            check_lockstep_evaluation(
                self.held_out, self.dist.world_size, s.rollout_batch or s.prompts_per_step * s.group_size
            )
        self.reward = build_reward(cfg.rewards.to_reward_mapping())
        batch = self.plan.local_samples
        self.chunk = cfg.sampler.rollout_batch or batch
        self.evaluator = AsyncRewardEvaluator(self.reward, max_pending=batch // self.chunk + 1, close_reward=False)

    # --- helpers -------------------------------------------------------------------------------------------------

    def _schedule(self, height: int, width: int) -> Any:
        key = (height, width)
        if key not in self._schedules:
            s = self.cfg.sampler
            self._schedules[key] = self.model.schedule(s.train_steps, height, width, interval_steps=s.eval_steps)
        return self._schedules[key]

    def _encode(self, batch: RankBatch) -> Condition:
        sources = images_to_tensor([item.source for item in batch.items])
        cond = self.model.encode(sources, [item.instruction for item in batch.items])
        return cond.index_select(batch.item_of_sample.to(self.device))

    def _trained_steps(self, step: int) -> list[int]:
        start, end = self.cfg.sampler.window
        gen = torch.Generator().manual_seed(mix_seed(self.cfg.rollout_seed, step, 0xA11))
        order = torch.randperm(end - start, generator=gen)[: self.cfg.sampler.trained_steps]
        return [start + int(i) for i in order]

    def _count_flops(self, cond: Condition, rollout_: Rollout) -> tuple[float, float]:
        """FLOPs of one sample's forward (no grad) and forward + backward, counted once per resolution."""
        key = (cond.height, cond.width)
        if key not in self._flops:
            one = cond.index_select(torch.zeros(1, dtype=torch.int64, device=self.device))
            x = rollout_.latents[:1, 0]
            t = rollout_.times[:1]

            def forward() -> None:
                with torch.no_grad():
                    self.model.velocity(x, t, one)

            def train_step() -> None:
                self.model.velocity(x, t, one).float().square().mean().backward()

            with torch.compiler.set_stance("force_eager"):  # compiled kernels would hide their ops from the counter
                fwd = float(count_flops(forward))
                fwd_bwd = float(count_flops(train_step))
            self.optimizer.zero_grad(set_to_none=True)
            self._flops[key] = (fwd, fwd_bwd)
        return self._flops[key]

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        with self.timer.phase(name), self.annotate.range(name):
            yield

    # --- one iteration ---------------------------------------------------------------------------------------

    def _rollout_and_score(self, step: int, batch: RankBatch, cond: Condition) -> tuple[Rollout, Any, list[Any]]:
        cfg = self.cfg
        schedule = self._schedule(cond.height, cond.width)
        t_cap = cfg.sde.resolve_t_cap(schedule)
        n_chunks = batch.size // self.chunk
        sources, instructions = batch.per_sample("source"), batch.per_sample("instruction")
        masks, captions, specs = batch.per_sample("mask"), batch.per_sample("captions"), batch.per_sample("spec")
        parts: list[Rollout] = []
        futures, decoded = [], []
        for c in range(n_chunks):
            rows = slice(c * self.chunk, (c + 1) * self.chunk)
            key = self.dist.rank * n_chunks + c  # global chunk index: the same samples get the same noise
            gen = torch.Generator().manual_seed(mix_seed(cfg.rollout_seed, step, key, 1))
            initial = self.model.initial_noise(self.chunk, cond.height, cond.width, generator=gen)
            state = noise_state(mix_seed(cfg.rollout_seed, step, key, 2), 0, device=self.device)
            index = torch.arange(rows.start, rows.stop, device=self.device)
            sub = cond if n_chunks == 1 else cond.index_select(index)
            with self._phase("rollout"):
                part = self._rollout_fn(
                    self.model, sub, schedule, initial, noise_level=cfg.sde.noise_level, noise_state=state,
                    t_cap=t_cap, window=cfg.sampler.window, group_ids=batch.group_ids[rows].to(self.device),
                    reduction=cfg.sde.reduction, backend=cfg.runtime.kernel_backend, annotate=self.annotate.range,
                )  # fmt: skip
            with self._phase("decode"):
                images = decode_uint8(self.model, part.latents[:, -1], cond.height, cond.width).numpy()
            with self._phase("reward_submit"):
                future = self.evaluator.submit(
                    sources[rows], list(images), instructions[rows], masks[rows], captions[rows], specs=specs[rows]
                )
                futures.append(future)
            parts.append(part)
            decoded.extend(images)
        results = []
        with self._phase("reward"):
            for future in futures:
                try:
                    results.append(future.result())
                except Exception as error:  # a broken component: mask the chunk, count it, go on
                    logger.exception("reward evaluation failed")
                    self.log(f"reward evaluation failed ({type(error).__name__}: {error}); masking the chunk")
                    results.append(None)
        full = parts[0] if len(parts) == 1 else Rollout.cat(parts)
        return full, results, decoded

    def _rewards(self, results: list[Any], batch_size: int) -> tuple[torch.Tensor, dict[str, float]]:
        totals, summary_parts = [], []
        for result in results:
            if result is None:
                totals.append(torch.full((self.chunk,), float("nan")))
            else:
                totals.append(result.total().float().cpu())
                summary_parts.append(result)
        rewards = torch.cat(totals)
        components: dict[str, float] = {}
        if summary_parts:
            names = summary_parts[0].breakdown.components
            for name in names:
                values = torch.cat([r.breakdown.components[name].float().cpu() for r in summary_parts])
                finite = torch.isfinite(values)
                components[f"reward/{name}"] = float(values[finite].mean()) if finite.any() else math.nan
        assert rewards.numel() == batch_size
        return rewards, components

    def _update(self, step: int, ro: Rollout, cond: Condition, advantages: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        schedule = self._schedule(cond.height, cond.width)
        t_cap = cfg.sde.resolve_t_cap(schedule)
        steps = self._trained_steps(step)
        micro = ro.batch_size // cfg.optim.grad_accum
        out: dict[str, float] = {}
        for _epoch in range(cfg.optim.inner_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            with self._phase("update"):
                stats = self._backward_fn(
                    self.model, ro, cond, advantages, steps, grpo=cfg.grpo, noise_level=cfg.sde.noise_level,
                    t_cap=t_cap, reduction=cfg.sde.reduction, micro_batch=micro,
                    backend=cfg.runtime.kernel_backend, annotate=self.annotate.range,
                )  # fmt: skip
            with self._phase("optimizer"):
                if not cfg.runtime.fsdp:  # under FSDP each backward has already reduce-scattered (averaged) them
                    self.dist.average_gradients(self.params)
                clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
                norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.params, clip))  # global norm under FSDP too
                values = torch.cat([stats.values.float(), norm.reshape(1).float().to(stats.values.device)])
                values = self.dist.all_reduce_sum(values) / self.dist.world_size
                read = values.tolist()  # the one host read of the update
                finite = all(math.isfinite(v) for v in read)
                if finite:
                    self.optimizer.step()
                    self.scheduler.step()
                    self._ema_update()
                    self.nonfinite_in_row = 0
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.nonfinite_in_row += 1
                    self.skipped_total += 1
                    self.log(
                        f"step {step + 1}: non-finite loss or gradient; update skipped "
                        f"({self.nonfinite_in_row} in a row, limit {cfg.optim.nonfinite_limit})"
                    )
                    if self.nonfinite_in_row >= cfg.optim.nonfinite_limit:
                        raise TrainingError(
                            f"{self.nonfinite_in_row} updates in a row had a non-finite loss or gradient (last at "
                            f"iteration {step + 1}); the run has diverged or a reward is broken. Lower optim.lr, "
                            "check the rewards, or resume from the last checkpoint with other settings"
                        )
            out = dict(zip(STAT_NAMES, read[: len(STAT_NAMES)], strict=True))
            out["grad_norm"] = read[-1]
        out["lr"] = self.scheduler.get_last_lr()[0]
        out["trained_steps"] = len(steps)
        out["cuda_graphs"] = self.graphs is not None and self.graphs.used
        return out

    def _ema_update(self) -> None:
        if self.ema is None:
            return
        decay = float(self.cfg.optim.ema_decay)  # type: ignore[arg-type]
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)

    @contextlib.contextmanager
    def _ema_weights(self) -> Iterator[None]:
        """The EMA LoRA weights in place of the live ones (evaluation, export)."""
        if self.ema is None:
            yield
            return
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema, strict=True):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, live, strict=True):
                    p.copy_(v)

    def evaluate(self) -> dict[str, Any]:
        """Held-out ODE evaluation with ``eval_steps`` (EMA weights when kept)."""
        s = self.cfg.sampler
        with self._phase("eval"), self._ema_weights():
            return evaluate_conditions(
                self.model, self.held_out, self.reward, eval_steps=s.eval_steps,
                batch_size=s.rollout_batch or s.prompts_per_step * s.group_size, seed=self.cfg.runtime.seed,
                dist=self.dist,
            )  # fmt: skip

    def iteration(self, step: int) -> dict[str, Any]:
        """Run iteration ``step`` (0-based); returns its metrics row."""
        cfg = self.cfg
        if self.compiled is not None and (outside := self.compiled.read()) > 0.1:
            self.log(f"{outside:.1f} s in torch.compile before iteration {step + 1} (evaluation)")
        started = time.perf_counter()
        with self._phase("data"):
            batch = self.source.rank_batch(step, self.plan)
            cond = self._encode(batch)
        ro, results, last_images = self._rollout_and_score(step, batch, cond)
        with self._phase("advantages"):
            rewards, components = self._rewards(results, batch.size)
            all_rewards, all_ids = gather_rewards(rewards.to(self.device), batch.group_ids.to(self.device))
            adv = group_advantages(
                all_rewards, all_ids, batch.num_groups, std_mode=cfg.grpo.adv_std, clip=cfg.grpo.adv_clip
            )
            local = rank_slice(batch.size)
            advantages = adv.advantages[local]
            finite = torch.isfinite(all_rewards)
        reward_values = all_rewards.cpu()
        failed = int((~finite).sum())
        if failed == reward_values.numel():
            self.reward_failures_in_row += 1
            if self.reward_failures_in_row >= cfg.optim.nonfinite_limit:
                raise TrainingError(
                    f"every reward failed in {self.reward_failures_in_row} iterations in a row (last: {step + 1}); "
                    "check the reward components (a judge server down? see the log for the reasons)"
                )
        else:
            self.reward_failures_in_row = 0
        flops_fwd, flops_train = self._count_flops(cond, ro)
        stats = self._update(step, ro, cond, advantages)
        phases = self.timer.read()
        seconds = time.perf_counter() - started
        finite_rewards = reward_values[torch.isfinite(reward_values)]
        k = cfg.sampler.train_steps
        n_train = stats["trained_steps"] * cfg.optim.inner_epochs
        per_sample = k * flops_fwd + n_train * flops_train + (n_train * flops_fwd if cfg.grpo.needs_reference else 0)
        total_flops = per_sample * batch.size * self.dist.world_size
        peak = peak_flops(self.device)
        row: dict[str, Any] = {
            "step": step + 1,
            "reward_mean": float(finite_rewards.mean()) if finite_rewards.numel() else math.nan,
            "reward_std": float(finite_rewards.std(unbiased=False)) if finite_rewards.numel() else math.nan,
            "reward_failed": failed,
            "constant_groups": int(adv.num_constant_groups),
            **components,
            **stats,
            "skipped_updates": self.skipped_total,
            "time/step": seconds,
            **{f"time/{name}": value for name, value in phases.items()},
            "images_per_s": batch.size * self.dist.world_size / seconds,
            "tflops_per_s": total_flops / seconds / 1e12,
            "mfu": mfu(total_flops, seconds, peak * self.dist.world_size if peak else None),
            "peak_mem_gib": peak_memory_gib(self.device),
        }
        if self.compiled is not None:  # seconds of time/step spent compiling (first calls, recompilations)
            row["time/compile"] = self.compiled.read()
            if row["time/compile"] > 0.1:
                self.log(f"iteration {step + 1}: {row['time/compile']:.1f} s of {seconds:.1f} s in torch.compile")
        self._last_batch = (batch, last_images, reward_values[local])
        return row

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def _lora_state(self) -> dict[str, torch.Tensor]:
        from fastgrpo.models.lora import lora_state_dict

        # full_tensor gathers the shards under FSDP (a collective: every rank comes here)
        return {k: full_tensor(v).cpu().clone() for k, v in lora_state_dict(self.model.transformer).items()}

    def _gathered_lora(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the whole LoRA that files get (EMA when kept), gathered on every rank; None otherwise (the
        model writes its own weights)."""
        if not self.cfg.runtime.fsdp:
            return None
        lora = self._lora_state()
        return lora if self.ema is None else dict(zip(lora, (full_tensor(e).cpu() for e in self.ema), strict=True))

    def save_checkpoint(self) -> Path:
        shared = {
            "step": self.step,
            "lora": self._lora_state(),
            "optimizer": full_optimizer_state(self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "ema": [full_tensor(e).cpu() for e in self.ema] if self.ema is not None else None,
            "nonfinite_in_row": self.nonfinite_in_row,
            "skipped_total": self.skipped_total,
            "reward_failures_in_row": self.reward_failures_in_row,
            "config": config_to_dict(self.cfg),
        }
        per_rank = {"rng": _capture_rng(self.device)}
        full = self._gathered_lora()
        with self._phase("checkpoint"):
            return self.checkpoints.save(
                self.step, shared, per_rank, extra_writer=lambda directory: self._write_lora(directory, full)
            )

    def _write_lora(self, directory: Path, full: dict[str, torch.Tensor] | None = None) -> None:
        if full is not None:  # FSDP: rank 0 alone writes what every rank gathered
            write_lora(self.model, directory / "lora", full)
            return
        with self._ema_weights():
            self.model.save_lora(directory / "lora")

    def resume(self) -> bool:
        """Load the newest complete checkpoint of the run directory, if any; returns whether it did."""
        loaded = self.checkpoints.load(None, map_location="cpu")
        if loaded is None:
            return False
        shared = loaded.shared
        from fastgrpo.models.lora import lora_state_dict

        live = lora_state_dict(self.model.transformer)
        missing = sorted(set(live) ^ set(shared["lora"]))
        if missing:
            raise TrainingError(f"checkpoint {loaded.path} does not fit this LoRA (e.g. {missing[:3]})")
        with torch.no_grad():
            for name, tensor in live.items():
                shard_into_(tensor, shared["lora"][name])  # this rank's shard under FSDP
        load_optimizer_state(self.optimizer, shared["optimizer"])
        self.scheduler.load_state_dict(shared["scheduler"])
        if self.ema is not None and shared["ema"] is not None:
            for e, saved in zip(self.ema, shared["ema"], strict=True):
                shard_into_(e, saved)
        self.step = int(shared["step"])
        self.nonfinite_in_row = int(shared["nonfinite_in_row"])
        self.skipped_total = int(shared["skipped_total"])
        self.reward_failures_in_row = int(shared.get("reward_failures_in_row", 0))
        _restore_rng(loaded.rank_state["rng"], self.device)
        if self.dist.is_main:
            self.run_dir.truncate_metrics(self.step)
        self.log(f"resumed from {loaded.path} (iteration {self.step})")
        return True

    def export_lora(self) -> Path:
        """Write the final LoRA (EMA when kept) to ``run_dir/lora`` in the diffusers format, atomically. Call it on
        every rank: under FSDP the weights are gathered first; rank 0 writes."""
        full = self._gathered_lora()
        target = self.run_dir.lora
        if not self.dist.is_main:
            return target
        try:
            with atomic_directory(target) as tmp:
                if full is not None:
                    write_lora(self.model, tmp, full)
                else:
                    with self._ema_weights():
                        self.model.save_lora(tmp)
        except OSError as error:
            raise RunDirError(describe_os_error(error, target, "write the LoRA to")) from None
        return target

    # --- outputs ---------------------------------------------------------------------------------------------------

    def _save_samples(self) -> None:
        from fastgrpo.train.metrics.plots import save_group_grid

        batch, images, rewards = self._last_batch
        group = self.cfg.sampler.group_size
        first = batch.item_of_sample[0].item()
        rows = [i for i in range(min(len(images), batch.size)) if batch.item_of_sample[i].item() == first][:group]
        item = batch.items[first]
        save_group_grid(
            self.run_dir.samples / f"step-{self.step:08d}.png", item.source, [images[i] for i in rows],
            [float(rewards[i]) for i in rows], item.instruction,
        )  # fmt: skip

    def _save_curve(self) -> None:
        from fastgrpo.train.metrics.plots import save_reward_curve

        save_reward_curve(
            self.run_dir.curve_path, self.run_dir.read_metrics(), title=f"reward - {self.run_dir.path.name}"
        )

    # --- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train to ``runtime.max_steps`` (resuming when the run directory has a checkpoint); returns the result."""
        cfg = self.cfg
        if self.dist.is_main:
            self.checkpoints.clean_incomplete()
        resumed = self.resume()
        if self.dist.is_main:
            lora_bytes = sum(p.numel() * p.element_size() for p in self.params)
            keep = cfg.logging.keep_checkpoints or 3
            self.run_dir.check_space(lora_bytes * 4 * (keep + 2))
        total = cfg.runtime.max_steps
        self.progress = ProgressBar(total, start=self.step, enabled=cfg.logging.progress and self.dist.is_main)
        profile = ProfileWindow(
            cfg.profile.window, self.device, memory_snapshot=cfg.profile.memory_snapshot,
            snapshot_path=self.run_dir.path / "memory_snapshot.pickle", log=self.log,
        )  # fmt: skip
        result = TrainResult(self.run_dir.path, self.step)
        last_eval: float | None = None
        if not resumed:
            self.log(
                f"training {cfg.model.type} LoRA r={cfg.lora.rank} ({sum(p.numel() for p in self.params):,} "
                f"weights) on {self.device} x{self.dist.world_size}: {total} iterations of "
                f"{self.plan.local_samples * self.dist.world_size} rollouts; run directory {self.run_dir.path}"
            )
            if cfg.logging.eval_every and self.held_out:
                ev = self.evaluate()
                last_eval = ev["eval_reward_mean"]
                self._log_row({"step": 0, **ev})
                self.log(f"pre-trained evaluation reward {last_eval:.4f} on {ev['eval_conditions']} conditions")
            self.timer.read()  # the first iteration's phase times start here
        stopped = None
        try:
            with _Signals() as signals:
                while self.step < total:
                    profile.begin(self.step)
                    reset_peak_memory(self.device)
                    with self.annotate.range(f"iteration {self.step}"):
                        row = self.iteration(self.step)
                    profile.end(self.step)
                    self.step += 1
                    every = cfg.logging.eval_every
                    due_eval = bool(every) and (self.step % every == 0 or self.step == total)
                    if due_eval and self.held_out:
                        ev = self.evaluate()
                        row.update(ev)
                        last_eval = ev["eval_reward_mean"]
                    if self.step % cfg.logging.log_every == 0 or due_eval or self.step == total:
                        self._log_row(row)
                    if self.dist.is_main and (due_eval or self.step == total):
                        self._save_samples()
                        self._save_curve()
                    self.progress.update(
                        self.step, reward=row["reward_mean"], eval_reward=last_eval,
                        phases={k[5:]: v for k, v in row.items() if k.startswith("time/") and k != "time/step"},
                    )  # fmt: skip
                    stop = self.dist.any(signals.received is not None)
                    due_save = cfg.logging.save_every and self.step % cfg.logging.save_every == 0
                    if stop or due_save or self.step == total:
                        self.save_checkpoint()
                    if stop:
                        stopped = signals.received or "a signal on another rank"
                        self.log(
                            f"stopped by {stopped} after iteration {self.step}; checkpoint saved. Run the same "
                            f"command with logging.run_name={self.run_dir.path.name} to resume"
                        )
                        break
        finally:
            self.progress.close()
            self.evaluator.close(wait=False)
            self.run_dir.close()
        if stopped is None:
            self.export_lora()  # on every rank (FSDP gathers the LoRA first); rank 0 writes
        if self.dist.is_main and stopped is None:
            self._save_curve()
        self.dist.barrier()
        result.steps_done = self.step
        result.stopped_by = stopped
        result.final_eval = last_eval
        result.metrics = self.run_dir.read_metrics() if self.dist.is_main else []
        initial = [r for r in result.metrics if r.get("step") == 0 and "eval_reward_mean" in r]
        if initial:
            result.initial_eval = initial[0]["eval_reward_mean"]
        return result

    def _log_row(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.log_metrics(row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(key, value, row["step"])
            self.tensorboard.flush()

    def _open_tensorboard(self) -> Any:
        if not (self.cfg.logging.tensorboard and self.dist.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "logging.tensorboard=true needs the tensorboard package: pip install tensorboard, or set "
                "logging.tensorboard=false (metrics.jsonl is always written)"
            ) from None
        return SummaryWriter(log_dir=str(self.run_dir.path / "tensorboard"))

    def close(self) -> None:
        self.reward.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.dist.close()


def train(cfg: TrainConfig, *, log: Callable[[str], None] | None = None) -> TrainResult:
    """Run ``cfg`` to the end (or a signal); the CLI's ``fastgrpo train``."""
    trainer = Trainer(cfg, log=log)
    try:
        return trainer.run()
    finally:
        trainer.close()
