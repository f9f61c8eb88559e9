"""End-to-end GRPO iteration benchmarks: fastgrpo's ``Trainer.iteration`` against the Flow-GRPO way of running it.

Cases (model size x provider), each one ``Trainer`` built from a config and timed over whole iterations (data,
rollout, decode, rewards, advantages, update, optimiser step):

- sizes: ``tiny`` (the built-in tiny editor; on CUDA the demo config, 4 x 8 samples at 32x32, 8 steps; on CPU
  2 x 3 samples and 4 steps), ``mid`` (a Kontext-architecture model of 8 + 16 blocks, hidden 1536, random weights)
  and ``full`` (FLUX.1 Kontext [dev]'s architecture, 11.9B random weights in bf16), both at 512x512 with 512
  injected text tokens and ``benchmarks/flux_kontext_random.yaml`` (2 x 3 samples, 4 steps); ``full1024`` (the
  full model at 1024x1024, 1 x 3 samples) runs only when named in ``FASTGRPO_BENCH_TRAIN_SIZES``;
- providers: ``flow_grpo_eager`` (``flow_grpo_iteration.py``: the same iteration run the Flow-GRPO way),
  ``fastgrpo``, ``fastgrpo_cuda_graphs`` (``runtime.cuda_graphs=true``) and ``fastgrpo_compile``
  (``runtime.compile=true``), ``fastgrpo_step_batching`` (``optim.step_batching=true``: the trained steps of a
  micro-batch in one forward). ``mid``, ``full`` and the graph/compile providers need CUDA and are skipped
  elsewhere with the reason.

Each provider first runs warm-up iterations (one; two with CUDA graphs or ``torch.compile``, whose capture and
compilation happen there; ``first_iteration_s`` records the first), then pytest-benchmark times ``ROUNDS`` rounds
of one synchronised iteration each. Nothing about speed is asserted. ``extra_info`` (and the session summary)
records: ``median_s``, ``p20_s``, ``p80_s`` of an iteration; ``phase_<name>_s``, the median seconds of each phase
(``rollout``, ``decode``, ``reward``, ``advantages``, ``update``, ``optimizer``, ...; CUDA events on a GPU);
``images_per_s`` = samples / median; ``flops_per_iteration`` (model FLOPs counted by ``FlopCounterMode``: rollout
forwards, trained forward + backward, reference forwards where beta > 0); ``mfu`` = FLOPs / median / the device's
dense bf16 peak (``fastgrpo.train.metrics.flops.PEAK_TFLOPS``; None on CPU); ``peak_mem_gib`` (largest per-iteration
peak of allocated CUDA memory); the device, versions and commit; and, from the same session,
``speedup_vs_flow_grpo_eager`` (baseline median / median: the fastgrpo/baseline ratio),
``rollout_speedup_vs_flow_grpo_eager``, ``update_speedup_vs_flow_grpo_eager``, ``speedup_vs_fastgrpo`` and
``rollout_speedup_vs_fastgrpo``, ``update_speedup_vs_fastgrpo`` (what CUDA graphs, compile or step batching add
to plain fastgrpo).

Targets on an H200 (not asserted): end to end >= 2x the baseline on ``full``, >= 3x on ``tiny``; CUDA graphs
>= 1.5x on the rollouts of ``tiny`` and ``mid``.
"""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import random_models
import torch
from flow_grpo_iteration import FlowGRPOIteration
from measure import BenchSettings, synchronize, timing_of_benchmark
from summary import BASELINE, ResultStore

from fastgrpo.train.metrics.flops import mfu, peak_flops, reset_peak_memory

HERE = Path(__file__).resolve().parent
KONTEXT_CONFIG = HERE / "flux_kontext_random.yaml"
FASTGRPO = "fastgrpo"
VARIANTS: dict[str, tuple[str, ...]] = {  # provider -> runtime overrides; the baseline first, so ratios fill in
    BASELINE: (),
    FASTGRPO: (),
    "fastgrpo_cuda_graphs": ("runtime.cuda_graphs=true",),
    "fastgrpo_compile": ("runtime.compile=true",),
    "fastgrpo_step_batching": ("optim.step_batching=true",),  # the trained steps of a micro-batch in one forward
}
GPU_VARIANTS = ("fastgrpo_cuda_graphs", "fastgrpo_compile")
DEFAULT_SIZES = ("tiny", "mid", "full")
ALL_SIZES = ("tiny", "mid", "full", "full1024")
# shared by every case: evaluation, checkpoints and the progress line off; Flow-GRPO's KL (what the baseline computes)
# and the exploration the baseline implements (SPEC S1's step over a fixed window, independent noise)
COMMON = ("logging.eval_every=0", "logging.save_every=0", "logging.progress=false", "data.held_out=0",
          "grpo.kl_form=flow_grpo", "sde.sampler=sde", "sampler.sde_steps=null",
          "sampler.shared_noise=false")  # fmt: skip


@dataclass(frozen=True)
class TrainCase:
    """One model size: its config (a YAML file or the built-in demo, plus overrides) and how long it is timed."""

    size: str
    config: Path | None
    overrides: tuple[str, ...]
    rounds: int  # timed iterations
    cuda_only: bool

    def load(self, provider: str, device: str, output_dir: Path) -> Any:
        from fastgrpo.train.config import load_config

        random_models.register()
        extra = (*COMMON, *self.overrides, *VARIANTS[provider], f"runtime.device={device}",
                 f"logging.output_dir={output_dir}", f"logging.run_name={self.size}-{provider}")  # fmt: skip
        return load_config(self.config, list(extra))


def train_cases(settings: BenchSettings) -> dict[str, TrainCase]:
    """The cases of this machine: the tiny editor's shape follows the size preset (``small`` on CPU)."""
    if settings.size == "full":
        tiny = TrainCase("tiny", None, (), rounds=5, cuda_only=False)  # the demo config: 4 x 8 samples, 8 steps
    else:
        tiny_small = ("sampler.prompts_per_step=2", "sampler.group_size=3", "sampler.train_steps=4")
        tiny = TrainCase("tiny", None, tiny_small, rounds=2, cuda_only=False)
    return {
        "tiny": tiny,
        "mid": TrainCase("mid", KONTEXT_CONFIG, ("model.path=mid", "sampler.train_fraction=0.5"), 3, True),
        "full": TrainCase("full", KONTEXT_CONFIG, ("model.path=full",), rounds=1, cuda_only=True),
        "full1024": TrainCase(
            "full1024",
            KONTEXT_CONFIG,
            ("model.path=full", "data.resolutions=[1024x1024]", "sampler.prompts_per_step=1", "optim.grad_accum=3"),
            rounds=1,
            cuda_only=True,
        ),
    }


def selected_sizes() -> tuple[str, ...]:
    """``FASTGRPO_BENCH_TRAIN_SIZES`` (comma-separated, in run order), default ``tiny,mid,full``."""
    raw = os.environ.get("FASTGRPO_BENCH_TRAIN_SIZES", "").strip()
    if not raw:
        return DEFAULT_SIZES
    sizes = tuple(s.strip() for s in raw.split(",") if s.strip())
    unknown = [s for s in sizes if s not in ALL_SIZES]
    if unknown:
        raise pytest.UsageError(f"FASTGRPO_BENCH_TRAIN_SIZES names {unknown}; choose from {', '.join(ALL_SIZES)}")
    return sizes


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "train_spec" not in metafunc.fixturenames:
        return
    params = []
    for size in selected_sizes():
        for provider in VARIANTS:
            marks = [pytest.mark.gpu] if size != "tiny" or provider in GPU_VARIANTS else []
            params.append(pytest.param((size, provider), id=f"{size}-{provider}", marks=marks))
    metafunc.parametrize("train_spec", params)


def _skip_reason(case: TrainCase, provider: str, device: str) -> str | None:
    if device == "cuda":
        return None
    if case.cuda_only:
        return f"the {case.size} Kontext-architecture model is a GPU benchmark (torch.cuda.is_available() is False)"
    if provider == "fastgrpo_cuda_graphs":
        return "runtime.cuda_graphs needs a CUDA device (torch.cuda.is_available() is False)"
    if provider == "fastgrpo_compile":
        return "runtime.compile is benchmarked on CUDA only: a CPU compile time says nothing about the GPU"
    return None


# --- ratios between the providers of one case ----------------------------------------------------------------

_INFOS: dict[tuple[str, str], dict[str, Any]] = {}
RATIOS = (  # (field, over which provider, of which measurement)
    ("speedup_vs_fastgrpo", FASTGRPO, "median_s"),
    ("rollout_speedup_vs_fastgrpo", FASTGRPO, "phase_rollout_s"),
    ("update_speedup_vs_fastgrpo", FASTGRPO, "phase_update_s"),
    (f"rollout_speedup_vs_{BASELINE}", BASELINE, "phase_rollout_s"),
    (f"update_speedup_vs_{BASELINE}", BASELINE, "phase_update_s"),
)


def _record(store: ResultStore, key: str, provider: str, info: dict[str, Any]) -> None:
    """Add to the session store (which fills ``speedup_vs_flow_grpo_eager``), then the other ratios of the case."""
    _INFOS[(key, provider)] = info
    store.add(key, provider, info)
    for (k, name), record in _INFOS.items():
        if k != key:
            continue
        for field, over, measure in RATIOS:
            base = _INFOS.get((key, over), {}).get(measure)
            value = record.get(measure)
            if name not in (over, BASELINE) and base and value:  # the baseline's own ratios are 1 / the others'
                record[field] = base / value
                store.cases[key][name][field] = record[field]
    store.write()


# --- the benchmark ---------------------------------------------------------------------------------------------


def _median(rows: list[dict[str, Any]], name: str) -> float | None:
    values = [r[name] for r in rows if isinstance(r.get(name), int | float)]
    return statistics.median(values) if values else None


def _release(device: str, compiled: bool) -> None:
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()


def test_train_step(benchmark, train_spec, bench_settings, bench_facts, result_store, tmp_path) -> None:
    size, provider = train_spec
    device = bench_settings.device
    case = train_cases(bench_settings)[size]
    reason = _skip_reason(case, provider, device)
    if reason:
        pytest.skip(reason)
    pytest.importorskip("diffusers")
    from fastgrpo.train.loop import Trainer

    cfg = case.load(provider, device, tmp_path)
    compiled = provider == "fastgrpo_compile"
    _release(device, compiled)
    held: dict[str, Any] = {}  # everything big, dropped in `finally` (a failing test's frame keeps its locals)
    rows: list[dict[str, Any]] = []
    messages: list[str] = []  # the trainer's log (e.g. why CUDA graphs fell back to eager), kept in extra_info
    steps = itertools.count()

    def one_iteration() -> None:
        reset_peak_memory(held["trainer"].device)
        rows.append(held["iterate"](next(steps)))
        synchronize(device)

    try:
        held["trainer"] = Trainer(cfg, log=messages.append)
        if provider == BASELINE:
            held["baseline"] = FlowGRPOIteration(held["trainer"])
            held["iterate"] = held["baseline"].iteration
        else:
            held["iterate"] = held["trainer"].iteration
        held["trainer"].timer.read()
        first_s = None
        if not benchmark.disabled:  # warm-up: JIT, allocator, graph capture, compilation
            for _ in range(2 if provider in GPU_VARIANTS else 1):
                started = time.perf_counter()
                one_iteration()
                first_s = first_s if first_s is not None else time.perf_counter() - started
            rows.clear()
        benchmark.group = f"train_step/{size}"
        benchmark.pedantic(one_iteration, rounds=case.rounds, iterations=1, warmup_rounds=0)
        info = _describe(held["trainer"], case, provider, bench_facts)
        info.update(_measurements(benchmark, rows, held["trainer"], first_s))
        info["trainer_log"] = messages[-10:]
    finally:
        if "baseline" in held:
            held["baseline"].close()
        if "trainer" in held:
            trainer = held["trainer"]
            trainer.generator.scorer.close(wait=True)
            trainer.close()
            trainer.run_dir.close()
            del trainer
        held.clear()
        _release(device, compiled)
    benchmark.extra_info.update(info)
    _record(result_store, f"train_step/{size}/{info['resolution']}/B{info['batch']}", provider, benchmark.extra_info)


def _describe(trainer: Any, case: TrainCase, provider: str, facts: dict[str, object]) -> dict[str, Any]:
    cfg = trainer.cfg
    return {
        **facts,
        "case": case.size,
        "provider": provider,
        "batch": cfg.sampler.prompts_per_step * cfg.sampler.group_size,
        "resolution": cfg.data.resolutions[0],
        "train_steps": cfg.sampler.train_steps,
        "trained_steps": cfg.sampler.trained_steps,
        "grad_accum": cfg.optim.grad_accum,
        "beta": cfg.grpo.beta,
        "cuda_graphs": cfg.runtime.cuda_graphs,
        "compile": cfg.runtime.compile,
        "model": f"{cfg.model.type}:{cfg.model.path}",
        "model_dtype": str(trainer.model.dtype).removeprefix("torch."),
        "transformer_params": sum(p.numel() for p in trainer.model.transformer.parameters()),
        "lora_params": trainer.policy.num_weights,
        "rounds": case.rounds,
    }


def _measurements(benchmark: Any, rows: list[dict[str, Any]], trainer: Any, first_s: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"first_iteration_s": first_s, "timed_iterations": len(rows)}
    if any("cuda_graphs" in r for r in rows):  # the trainer's report: did the iterations replay CUDA graphs?
        out["cuda_graphs_used"] = all(bool(r.get("cuda_graphs")) for r in rows)
    phases = sorted({k for r in rows for k in r if k.startswith("time/") and k != "time/step"})
    for key in phases:
        out[f"phase_{key[5:]}_s"] = _median(rows, key)
    flops = [r["tflops_per_s"] * r["time/step"] * 1e12 for r in rows if r.get("tflops_per_s") is not None]
    out["flops_per_iteration"] = statistics.median(flops) if flops else None
    memory = [r["peak_mem_gib"] for r in rows if r.get("peak_mem_gib") is not None]
    out["peak_mem_gib"] = max(memory) if memory else None
    peak = peak_flops(trainer.device)
    out["peak_tflops"] = peak / 1e12 if peak else None
    timing = timing_of_benchmark(benchmark)
    if timing is not None:
        out.update(median_s=timing.median_s, p20_s=timing.p20_s, p80_s=timing.p80_s, timer=timing.timer)
        batch = trainer.cfg.sampler.prompts_per_step * trainer.cfg.sampler.group_size
        out["images_per_s"] = batch / timing.median_s
        if out["flops_per_iteration"] is not None:
            out["mfu"] = mfu(out["flops_per_iteration"], timing.median_s, peak)
    return out
