"""The GRPO training loop (DESIGN "One GRPO iteration"): a :class:`Trainer` assembles the run's components and
calls them in order; it holds no logic of its own beyond that order.

One iteration ``s`` on each rank (:meth:`Trainer.iteration`):

1. **data**: the rank's ``P · G`` samples of the global batch (:mod:`fastgrpo.train.conditions`), each distinct
   condition encoded once;
2. **rollout and score** (:class:`~fastgrpo.train.generate.RolloutGenerator`): SDE rollouts in chunks, each
   chunk's rewards computed on a worker thread while the next chunk rolls out;
3. **advantages**: rewards gathered over ranks, group advantages (NaN rewards masked out);
4. **update** (:func:`~fastgrpo.train.update.grpo_backward`, then :meth:`Policy.step
   <fastgrpo.train.policy.Policy.step>`): the GRPO backward over the trained steps in ``optim.grad_accum``
   micro-batches, then one gradient all-reduce, clipping, one host read of the statistics, AdamW (or a skipped
   update when something is not finite);
5. **log**: the metrics row (:class:`~fastgrpo.train.metrics.processor.MetricsProcessor`); evaluation, sample
   grids and checkpoints at their cadences (:meth:`Trainer.run`).

Everything random is keyed by ``(seed, s)`` or saved in checkpoints (:mod:`fastgrpo.train.state`), so an
interrupted and resumed run continues bit for bit (on one backend and device).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastgrpo.core.advantages import rollout_advantages
from fastgrpo.core.containers import Rollout
from fastgrpo.models.base import Condition, EditModel
from fastgrpo.rewards.composite import CompositeReward
from fastgrpo.train.conditions import ConditionPlan, ConditionSource, build_condition_source, encode_batch
from fastgrpo.train.config import TrainConfig, config_to_dict
from fastgrpo.train.errors import TrainingError, TrainingInterrupted
from fastgrpo.train.evaluate import HeldOutEvaluation
from fastgrpo.train.generate import RolloutGenerator, RolloutPlans
from fastgrpo.train.graphs import TrainingGraphs
from fastgrpo.train.metrics.flops import reset_peak_memory
from fastgrpo.train.metrics.processor import MetricsProcessor
from fastgrpo.train.metrics.progress import ProgressBar
from fastgrpo.train.metrics.sinks import build_sinks
from fastgrpo.train.model_setup import build_trained_model
from fastgrpo.train.parallel.distributed import DistContext, init_distributed
from fastgrpo.train.policy import Policy
from fastgrpo.train.profiling import Annotator, PhaseTimer, ProfileWindow
from fastgrpo.train.rollout import rollout_steps
from fastgrpo.train.selection import EvaluationRecord
from fastgrpo.train.signals import StopSignals
from fastgrpo.train.state import RNGState, TrainState
from fastgrpo.train.storage.checkpointer import Checkpointer
from fastgrpo.train.storage.checkpoints import CheckpointManager
from fastgrpo.train.storage.files import atomic_directory, describe_os_error, os_error_in
from fastgrpo.train.storage.run_dir import RunDir, RunDirError, open_run_dir
from fastgrpo.train.update import grpo_backward, micro_step

__all__ = ["TrainResult", "Trainer", "TrainingError", "train"]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves: its directory, the iterations done, the evaluations, the metrics."""

    run_dir: Path
    steps_done: int
    stopped_by: str | None = None
    initial_eval: float | None = None
    final_eval: float | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    ended_early: str | None = None  # e.g. the over-optimisation alarm with eval.stop_on_overoptimisation
    best: dict[str, Any] | None = None  # the best evaluation by the gold reward (what lora/best holds)


class Trainer:
    """One GRPO training run of ``cfg``; :meth:`run` does it. Build it on every rank (``torchrun``).

    Its components, each with one job: :attr:`run_dir` (files), :attr:`model` (the editing model, LoRA attached),
    :attr:`policy` (optimiser, schedule, EMA, the optimiser step), :attr:`source` and :attr:`plan` (the
    conditions of each iteration), :attr:`generator` (rollouts and rewards), :attr:`evaluation` (held-out ODE
    evaluation), :attr:`metrics` (the metrics row and its sinks), :attr:`state` and :attr:`rng` (counters and
    random generators), :attr:`checkpointer` (saves and restores those that have state), :attr:`graphs` (CUDA
    graphs, or None).
    """

    cfg: TrainConfig
    dist: DistContext
    run_dir: RunDir
    model: EditModel
    policy: Policy
    plan: ConditionPlan
    source: ConditionSource
    reward: CompositeReward
    graphs: TrainingGraphs | None
    plans: RolloutPlans
    generator: RolloutGenerator
    evaluation: HeldOutEvaluation
    metrics: MetricsProcessor
    state: TrainState
    rng: RNGState
    checkpointer: Checkpointer

    def __init__(self, cfg: TrainConfig, *, dist: DistContext | None = None, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.runtime.device, cfg.runtime.distributed_backend)
        self.device = self.dist.device
        self._log_fn, self.progress = log, None
        self._finished_iterations = False  # the loop is done: a second signal now can only cut the shutdown short
        #: why the run ended before runtime.max_steps without a signal (the over-optimisation alarm), or None
        self.ended_early: str | None = None
        self.annotate = Annotator(cfg.profile.nvtx)
        self.timer = PhaseTimer(self.device)
        self.run_dir = open_run_dir(cfg, self.dist)
        sinks = build_sinks(cfg.logging, self.run_dir, config_to_dict(cfg), log=self.log) if self.dist.is_main else []
        try:
            self._build(cfg, sinks)
        except BaseException:  # a failed start leaves no open W&B run or file behind
            for sink in sinks:
                sink.close()
            raise

    def _build(self, cfg: TrainConfig, sinks: list[Any]) -> None:
        """The components after the run directory (see the class docstring), in an order that keeps the random
        state of a run what it always was (the LoRA initialisation first)."""
        from fastgrpo.rewards.registry import build_reward
        from fastgrpo.train.parallel.fsdp import check_lockstep_evaluation

        trained = build_trained_model(cfg, self.dist, self.log)
        self.model = trained.model
        self.policy = Policy(self.model, trained.params, cfg.optim, self.dist, sharded=cfg.runtime.fsdp, log=self.log)
        s = cfg.sampler
        self.plan = ConditionPlan(s.prompts_per_step, s.group_size, self.dist.world_size, self.dist.rank,
                                  cfg.data.placement)  # fmt: skip
        self.source = build_condition_source(
            cfg.data, cfg.runtime.seed, self.plan.global_conditions,
            max_inputs=self.model.max_input_images, model_type=cfg.model.type,
        )  # fmt: skip
        held_out = self.source.held_out() if cfg.logging.eval_every > 0 else []
        eval_batch = s.rollout_batch or s.prompts_per_step * s.group_size
        if cfg.runtime.fsdp:  # every FSDP forward needs all ranks: the same number of evaluation batches on each
            check_lockstep_evaluation(held_out, self.dist.world_size, eval_batch)
        self.reward = build_reward(cfg.rewards.to_reward_mapping())
        self.gold = build_reward(cfg.eval.gold.to_reward_mapping()) if cfg.eval.gold is not None else None
        # runtime.cuda_graphs: rollouts and update micro-steps replay CUDA graphs (eager, reason logged, off CUDA)
        self.graphs = TrainingGraphs(self.model, self.policy.params) if cfg.runtime.cuda_graphs else None
        self.plans = RolloutPlans(self.model, s, cfg.sde, cfg.runtime.kernel_backend)
        self.generator = RolloutGenerator(
            self.model, self.reward, self.plans, seed=cfg.rollout_seed, rank=self.dist.rank,
            chunk=s.rollout_batch or self.plan.local_samples, batch_size=self.plan.local_samples,
            trained_per_iteration=s.trained_steps,
            phase=self._phase, annotate=self.annotate.range, log=self.log,
            steps_fn=self.graphs.rollout_steps if self.graphs is not None else rollout_steps, sampler=s,
        )  # fmt: skip
        self.evaluation = HeldOutEvaluation(self.model, held_out, self.reward, eval_steps=s.eval_steps,
                                            batch_size=eval_batch, seed=cfg.runtime.seed, dist=self.dist,
                                            gold=self.gold)  # fmt: skip
        self.record = EvaluationRecord(cfg.eval)
        self.metrics = MetricsProcessor(
            self.model, self.dist, sinks, rollout_steps=s.train_steps, inner_epochs=cfg.optim.inner_epochs,
            reference_pass=cfg.grpo.needs_reference, clear_grads=self.policy.zero_grad, compiled=trained.compiled,
            log=self.log,
        )  # fmt: skip
        self.state, self.rng = TrainState(), RNGState(self.device)
        manager = CheckpointManager(self.run_dir.checkpoints, keep=cfg.logging.keep_checkpoints, rank=self.dist.rank,
                                    world_size=self.dist.world_size, barrier=self.dist.barrier)  # fmt: skip
        shared = {"policy": self.policy, "state": self.state, "evaluations": self.record}
        self.checkpointer = Checkpointer(manager, shared=shared, per_rank={"rng": self.rng}, config=config_to_dict(cfg))

    # --- the parts of an iteration -------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        """One line on rank 0 (through the progress bar while it is shown)."""
        if not self.dist.is_main:
            return
        if self._log_fn is not None:
            self._log_fn(message)
        elif self.progress is not None:
            self.progress.write(message)
        else:
            print(message, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        with self.timer.phase(name), self.annotate.range(name):
            yield

    def update(self, step: int, ro: Rollout, cond: Condition) -> dict[str, Any]:
        """The GRPO update of iteration ``step`` on ``ro`` (its advantages and trained steps set): per inner epoch
        the backward over the trained steps, then the optimiser step; returns the last epoch's statistics."""
        plan = self.plans(cond.height, cond.width)
        micro = ro.batch_size // self.cfg.optim.grad_accum
        step_fn = self.graphs.micro_step if self.graphs is not None else micro_step
        stats: dict[str, Any] = {}
        for _epoch in range(self.cfg.optim.inner_epochs):
            self.policy.zero_grad()
            with self._phase("update"):
                grads = grpo_backward(self.model, ro, cond, grpo=self.cfg.grpo, spec=plan.spec, micro_batch=micro,
                                      annotate=self.annotate.range, step_fn=step_fn,
                                      batch_steps=self.cfg.optim.step_batching)  # fmt: skip
            with self._phase("optimizer"):
                stats = self.policy.step(grads, iteration=step + 1)
        used_graphs = self.graphs is not None and self.graphs.used
        return {**stats, "lr": self.policy.lr, "trained_steps": len(ro.trained or ()), "cuda_graphs": used_graphs}

    def iteration(self, step: int) -> dict[str, Any]:
        """Run iteration ``step`` (0-based): data -> rollout and score -> advantages -> update; returns its row."""
        if (outside := self.metrics.compile_seconds()) > 0.1:
            self.log(f"{outside:.1f} s in torch.compile before iteration {step + 1} (evaluation)")
        started = time.perf_counter()
        with self._phase("data"):
            batch = self.source.rank_batch(step, self.plan)
            cond = encode_batch(self.model, batch)
        generated = self.generator.generate(step, batch, cond)
        with self._phase("advantages"):
            g = self.cfg.grpo
            ro, advantages = rollout_advantages(generated.rollout, batch.num_groups, std_mode=g.adv_std,
                                                clip=g.adv_clip, aggregation=g.adv_aggregation,
                                                weights=self.reward.weights)  # fmt: skip
        failed = int((~torch.isfinite(advantages.rewards)).sum())
        try:
            self.state.note_rewards(failed, advantages.rewards.numel(), limit=self.cfg.optim.nonfinite_limit,
                                    components=list(self.cfg.rewards.components))  # fmt: skip
        except TrainingError:  # the row of the iteration that stops the run, before it stops
            self.metrics.log({"step": step + 1, "reward_mean": math.nan, "reward_failed": failed})
            raise
        update = self.update(step, ro, cond)
        phases, seconds = self.timer.read(), time.perf_counter() - started
        self._last = (batch, generated)
        components = {f"reward/{k}": v for k, v in generated.rewards.means().items() if k != "total"}
        return self.metrics.iteration_row(
            step, cond=cond, rollout=ro, advantages=advantages, failed=failed, components=components, update=update,
            skipped_updates=self.policy.skipped_total, phases=phases, seconds=seconds,
        )  # fmt: skip

    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out ODE evaluation of the weights after iteration ``step`` (the EMA when kept), then what it decides
        (:class:`~fastgrpo.train.selection.EvaluationRecord`): a new best goes to ``lora/best``, the alarm warns
        (and with ``eval.stop_on_overoptimisation`` asks the loop to end: :attr:`ended_early`)."""
        with self._phase("eval"), self.policy.ema_weights():
            ev = self.evaluation()
        verdict = self.record.observe(step, ev)
        if verdict.best:
            self.write_best(step, ev)
        if verdict.alarm:
            message = self.record.alarm_message(step, ev)
            logger.warning("%s", message)
            if self.cfg.eval.stop_on_overoptimisation:
                assert self.record.best is not None
                self.ended_early = f"over-optimisation alarm at iteration {step} (best: {self.record.best['step']})"
        return ev

    # --- checkpoints and files -----------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """A checkpoint of iteration ``state.step`` (every rank calls it), the LoRA beside it in the diffusers
        format."""
        write_lora = self.policy.lora_writer()
        with self._phase("checkpoint"):
            return self.checkpointer.save(
                self.state.step, extra_writer=lambda directory: write_lora(directory / "lora")
            )

    def resume(self) -> bool:
        """Restore the newest complete checkpoint of the run directory, if any; returns whether it did."""
        loaded = self.checkpointer.restore_latest()
        if loaded is None:
            return False
        if self.dist.is_main:
            self.run_dir.truncate_metrics(self.state.step)
        self.log(f"resumed from {loaded.path} (iteration {self.state.step})")
        return True

    def export_lora(self) -> Path:
        """Write the final LoRA (EMA when kept) into ``run_dir/lora`` in the diffusers format (each file replaced
        atomically; ``lora/best`` stays). Call it on every rank: under FSDP the weights are gathered first; rank 0
        writes."""
        write_lora, target = self.policy.lora_writer(), self.run_dir.lora
        if self.dist.is_main:
            staging = self.run_dir.path / ".lora-export"
            with self._writing(target):
                with atomic_directory(staging) as tmp:
                    write_lora(tmp)
                target.mkdir(exist_ok=True)
                for path in sorted(staging.iterdir()):
                    os.replace(path, target / path.name)  # one file at a time, each whole
                shutil.rmtree(staging, ignore_errors=True)
        return target

    def write_best(self, step: int, ev: dict[str, Any]) -> Path:
        """``lora/best``: the LoRA after iteration ``step`` (whose evaluation ``ev`` has the best gold reward so far),
        with ``best.json`` (the step and every figure of ``ev``), written atomically. Every rank calls it."""
        write_lora, target = self.policy.lora_writer(), self.run_dir.lora / "best"
        if self.dist.is_main:
            record = {"step": step, **{k: v for k, v in ev.items() if isinstance(v, int | float)}}
            with self._writing(target), atomic_directory(target) as tmp:
                write_lora(tmp)
                (tmp / "best.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        return target

    def write_report(self) -> Path | None:
        """``report.png``/``.json``/``.md`` in the run directory: the base model, the trained LoRA and (when it is
        another iteration's) ``lora/best`` edit the held-out conditions from the same noise and are scored by the
        training and the gold reward (:mod:`fastgrpo.train.report`). Written by a single-process run with held-out
        conditions and ``eval.report_conditions > 0``; a report that cannot be written is a warning naming
        ``fastgrpo compare`` (the LoRA and the checkpoint are already saved). Returns the directory or None."""
        from fastgrpo.train.report import write_run_report

        rows = self.cfg.eval.report_conditions
        if rows == 0 or not self.evaluation.groups:
            return None
        again = (f"write it with `fastgrpo compare --config {self.run_dir.path / 'config.yaml'} --lora "
                 f"{self.run_dir.lora} --out {self.run_dir.path}`")  # fmt: skip
        if self.dist.world_size > 1:
            self.log(f"no report.png: the report runs in one process and this run has {self.dist.world_size}; {again}")
            return None
        variants = [
            ("base", self.model.reference, f"base model {self.cfg.model.type} (LoRA adapters off)"),
            (
                "trained",
                self.policy.ema_weights,
                f"lora/: the LoRA after iteration {self.state.step}"
                + (" (its EMA)" if self.policy.ema is not None else ""),
            ),
        ]
        best = self.record.best
        if best is not None and best["step"] != self.state.step and (self.run_dir.lora / "best").is_dir():
            variants.append(("best", lambda: self.policy.saved_weights(self.run_dir.lora / "best"),
                             f"lora/best: the LoRA after iteration {best['step']}, the best gold reward"))  # fmt: skip
        gold = {"gold": self.gold} if self.gold is not None else {}
        try:
            with self._phase("report"), self._writing(self.run_dir.path / "report.png"):
                write_run_report(self.model, self.evaluation.groups, {"train": self.reward, **gold},
                                 self.run_dir.path, variants=variants, rows=rows, eval_steps=self.evaluation.eval_steps,
                                 batch_size=self.evaluation.batch_size, seed=self.cfg.runtime.seed)  # fmt: skip
        except (RunDirError, OSError, RuntimeError) as error:
            logger.warning("the report was not written (%s); %s", error, again)
            return None
        self.log(f"report: {self.run_dir.path / 'report.md'} (base vs trained on the held-out conditions)")
        return self.run_dir.path

    @contextlib.contextmanager
    def _writing(self, target: Path) -> Iterator[None]:
        """A failed write of ``target`` as one message naming the fix (safetensors reports a full disk as its own
        error, not an OSError)."""
        try:
            yield
        except Exception as error:
            os_error = os_error_in(error)
            if os_error is None:
                raise
            raise RunDirError(describe_os_error(os_error, target, "write the LoRA to")) from None

    def _save_outputs(self) -> None:
        """The sample grid of the last iteration's first group and the reward curve (rank 0)."""
        from fastgrpo.train.metrics.plots import save_group_grid

        batch, generated = self._last
        first = batch.item_of_sample[0].item()
        rows = [i for i, item in enumerate(batch.item_of_sample.tolist()) if item == first][
            : self.cfg.sampler.group_size
        ]
        item, rewards = batch.items[first], generated.rollout.rewards.cpu()
        save_group_grid(
            self.run_dir.samples / f"step-{self.state.step:08d}.png", item.source,
            [generated.images[i] for i in rows], [float(rewards[i]) for i in rows], item.instruction,
        )  # fmt: skip
        self._save_curve()

    def _save_curve(self) -> None:
        from fastgrpo.train.metrics.plots import save_reward_curve

        save_reward_curve(
            self.run_dir.curve_path, self.run_dir.read_metrics(), title=f"reward - {self.run_dir.path.name}"
        )

    # --- the loop ----------------------------------------------------------------------------------------------

    def _start(self) -> float | None:
        """Resume or announce the run; the initial evaluation of a fresh run. Returns that evaluation's reward."""
        cfg = self.cfg
        if self.dist.is_main:
            self.checkpointer.manager.clean_incomplete()
        if self.resume():
            last_eval = None
        else:
            self.log(
                f"training {cfg.model.type} LoRA r={cfg.lora.rank} ({self.policy.num_weights:,} weights) on "
                f"{self.device} x{self.dist.world_size}: {cfg.runtime.max_steps} iterations of "
                f"{self.plan.local_samples * self.dist.world_size} rollouts; run directory {self.run_dir.path}"
            )
            last_eval = None
            if cfg.logging.eval_every and self.evaluation.groups:
                ev = self.evaluate(0)
                last_eval = ev["eval_reward_mean"]
                self.metrics.log({"step": 0, **ev})
                self.log(f"pre-trained evaluation reward {last_eval:.4f} on {ev['eval_conditions']} conditions")
            self.timer.read()  # the first iteration's phase times start here
        if self.dist.is_main:
            lora_bytes = sum(p.numel() * p.element_size() for p in self.policy.params)
            self.run_dir.check_space(lora_bytes * 4 * ((cfg.logging.keep_checkpoints or 3) + 2))
        return last_eval

    def run(self) -> TrainResult:
        """Train to ``runtime.max_steps`` (resuming when the run directory has a checkpoint); returns the result.

        SIGTERM/SIGINT end the run after the current iteration with a checkpoint; a second signal, at any point up
        to the return, raises :class:`~fastgrpo.train.errors.TrainingInterrupted` naming what a resume uses.
        """
        last_eval = self._start()
        stopped: str | None = None
        with StopSignals() as signals:
            try:
                stopped, last_eval = self._loop(signals, last_eval)
                self._finished_iterations = True
                if stopped is None:
                    self.export_lora()  # on every rank (FSDP gathers the LoRA first); rank 0 writes
                    if self.dist.is_main:
                        self._save_curve()
                    self.write_report()
                self.dist.barrier()
                return self._result(stopped, last_eval)
            except KeyboardInterrupt:
                raise self._interrupted() from None

    def _loop(self, signals: StopSignals, last_eval: float | None) -> tuple[str | None, float | None]:
        """Iterations with their cadences (evaluation, rows, sample grids, checkpoints) until ``runtime.max_steps``
        or a signal; returns ``(the signal that stopped it or None, the last evaluation reward)``."""
        cfg, total = self.cfg, self.cfg.runtime.max_steps
        self.progress = ProgressBar(total, start=self.state.step, enabled=cfg.logging.progress and self.dist.is_main)
        profile = ProfileWindow(cfg.profile.window, self.device, memory_snapshot=cfg.profile.memory_snapshot,
                                snapshot_path=self.run_dir.path / "memory_snapshot.pickle", log=self.log)  # fmt: skip
        try:
            while self.state.step < total:
                profile.begin(self.state.step)
                reset_peak_memory(self.device)
                with self.annotate.range(f"iteration {self.state.step}"):
                    row = self.iteration(self.state.step)
                profile.end(self.state.step)
                self.state.step += 1
                step, every = self.state.step, cfg.logging.eval_every
                due_eval = bool(every) and (step % every == 0 or step == total)
                if due_eval and self.evaluation.groups:
                    row.update(self.evaluate(step))
                    last_eval = row["eval_reward_mean"]
                if step % cfg.logging.log_every == 0 or due_eval or step == total:
                    self.metrics.log(row)
                if self.dist.is_main and (due_eval or step == total):
                    self._save_outputs()
                phases = {k[5:]: v for k, v in row.items() if k.startswith("time/") and k != "time/step"}
                self.progress.update(step, reward=row["reward_mean"], eval_reward=last_eval, phases=phases)
                stop = self.dist.any(signals.received is not None)
                due_save = bool(cfg.logging.save_every) and step % cfg.logging.save_every == 0
                if stop or due_save or step == total or self.ended_early is not None:
                    self.save_checkpoint()
                if self.ended_early is not None:  # every rank decided it from the same all-reduced evaluation
                    self.log(f"ended early after iteration {step}: {self.ended_early}; checkpoint saved")
                    return None, last_eval
                if stop:
                    stopped = signals.received or "a signal on another rank"
                    self.log(f"stopped by {stopped} after iteration {step}; checkpoint saved. Run the same command "
                             f"with logging.run_name={self.run_dir.path.name} to resume")  # fmt: skip
                    return stopped, last_eval
            return None, last_eval
        finally:
            self.progress.close()
            self.generator.close()
            self.metrics.close()

    def _interrupted(self) -> TrainingInterrupted:
        """The error of a second signal: what it cut short (an iteration, or the shutdown after the last
        checkpoint), and what the same command resumes from."""
        latest = self.checkpointer.manager.latest()
        resume = (
            f"the same command with logging.run_name={self.run_dir.path.name} resumes from {latest}"
            if latest is not None
            else "no checkpoint was written yet: the same command starts over"
        )
        done = self.state.step
        if self._finished_iterations:
            what = f"a second signal cut the shutdown short after the checkpoint of iteration {done}"
        else:
            what = f"stopped at once by a second signal during iteration {done + 1}, without a final checkpoint"
        return TrainingInterrupted(f"{what}; {resume}")

    def _result(self, stopped: str | None, last_eval: float | None) -> TrainResult:
        metrics = self.run_dir.read_metrics() if self.dist.is_main else []
        initial = [r["eval_reward_mean"] for r in metrics if r.get("step") == 0 and "eval_reward_mean" in r]
        return TrainResult(self.run_dir.path, self.state.step, stopped, initial[0] if initial else None, last_eval,
                           metrics, self.ended_early, self.record.best)  # fmt: skip

    def close(self) -> None:
        """Release the reward components, the sinks and the process group."""
        self.reward.close()
        if self.gold is not None:
            self.gold.close()
        self.metrics.close()
        self.dist.close()


def train(cfg: TrainConfig, *, log: Callable[[str], None] | None = None) -> TrainResult:
    """Run ``cfg`` to the end (or a signal); the CLI's ``fastgrpo train``."""
    trainer = Trainer(cfg, log=log)
    try:
        return trainer.run()
    finally:
        trainer.close()
