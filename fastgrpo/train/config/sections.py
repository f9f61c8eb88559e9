"""The sections of a training config: model, LoRA, sampler, optimiser, rewards, data, runtime, logging, profiling.

Each section is a small frozen dataclass whose ``__post_init__`` checks its own values; checks that relate two
sections live in :class:`fastgrpo.train.config.TrainConfig`. The SDE and GRPO sections are
:class:`fastgrpo.core.sde.SDEConfig` and :class:`fastgrpo.core.objective.GRPOConfig`. Registries (models, rewards,
data presets) are imported inside the checks that need them, so importing this module stays cheap.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fastgrpo.train.config.checks import check_bool, check_choice, check_int, check_number, check_optional_str

__all__ = [
    "DataConfig",
    "LoRAConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ProfileConfig",
    "RewardsConfig",
    "RuntimeConfig",
    "SamplerConfig",
]

DTYPES = ("auto", "bf16", "fp16", "fp32")
_CFG_MODELS = {"flux_kontext": "guidance_scale", "tiny": "guidance_scale", "qwen_image_edit": "true_cfg_scale"}


@dataclass(frozen=True)
class ModelConfig:
    """The editing model being fine-tuned.

    Attributes:
        type: a registered model type (``fastgrpo.models.registry``): ``tiny`` (the built-in tiny editor),
            ``flux_kontext`` or ``qwen_image_edit``.
        path: checkpoint directory or hub id (e.g. ``black-forest-labs/FLUX.1-Kontext-dev``); required except for
            ``tiny``, where null takes the packaged weights and a path names another weights file.
        dtype: dtype of the frozen base weights: ``bf16``, ``fp16``, ``fp32``, or ``auto`` (bf16 on CUDA, fp32 on
            CPU). SDE and log-prob math run in float32 whatever this is.
        attention_backend: diffusers attention backend (``flash``, ``_flash_3``, ``xformers``, ``sage``,
            ``native``; every model type, the tiny editor included); null keeps PyTorch SDPA.
        guidance_scale: distilled guidance scale of FLUX.1 Kontext (unitless; the pipeline's default is 2.5);
            null takes the model's default. Not used by Qwen-Image-Edit.
        true_cfg_scale: true classifier-free guidance scale of Qwen-Image-Edit (unitless); ``> 1`` turns CFG on
            and doubles the transformer passes, 1 turns it off. Must stay 1 for FLUX.1 Kontext.
        negative_prompt: the negative prompt of true CFG (Qwen-Image-Edit); the stock pipeline uses ``" "``.
    """

    type: str = "tiny"
    path: str | None = None
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    attention_backend: str | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float = 1.0
    negative_prompt: str = " "

    def __post_init__(self) -> None:
        from fastgrpo.models.registry import model_types

        check_choice("model.type", self.type, model_types())
        check_optional_str("model.path", self.path, "a checkpoint directory or hub id")
        if self.path is None and self.type != "tiny":
            raise ValueError(
                f"model.path is required for model.type={self.type!r}: set it to a local checkpoint directory or a "
                "hub id, e.g. model.path=black-forest-labs/FLUX.1-Kontext-dev"
            )
        check_choice("model.dtype", self.dtype, DTYPES)
        check_optional_str("model.attention_backend", self.attention_backend, "e.g. flash, xformers, or null")
        if self.guidance_scale is not None:
            check_number("model.guidance_scale", self.guidance_scale, low=0.0, low_open=True, hint="e.g. 2.5")
        check_number("model.true_cfg_scale", self.true_cfg_scale, low=1.0, hint="1 turns true CFG off, e.g. 4.0")
        if not isinstance(self.negative_prompt, str):
            raise ValueError(f"model.negative_prompt must be a string (e.g. ' '): got {self.negative_prompt!r}")
        scale = _CFG_MODELS.get(self.type)
        if scale == "guidance_scale" and self.true_cfg_scale != 1.0:
            raise ValueError(
                f"model.true_cfg_scale applies to qwen_image_edit only; set model.true_cfg_scale=1 for "
                f"model.type={self.type!r} (use model.guidance_scale instead)"
            )
        if scale == "true_cfg_scale" and self.guidance_scale is not None:
            raise ValueError(
                "model.guidance_scale applies to FLUX.1 Kontext only; set model.guidance_scale=null for "
                "qwen_image_edit (use model.true_cfg_scale instead)"
            )


@dataclass(frozen=True)
class LoRAConfig:
    """The LoRA adapter on the transformer (SPEC S4); only its weights train.

    Attributes:
        rank: ``r``, the adapter's inner dimension (>= 1); parameters grow linearly with it.
        alpha: ``lora_alpha`` (> 0); the update is scaled by ``alpha / rank``.
        target_modules: module-name suffixes to adapt (e.g. ``[attn.to_q, attn.to_v]``); null takes the model's
            defaults (attention and feed-forward projections of every block).
        init: ``default`` (``lora_B`` zero, ``lora_A`` Kaiming) or ``gaussian`` (``lora_A`` Gaussian); both start
            the adapted model equal to the base model, which GRPO's reference policy relies on.
        dtype: dtype of the adapter weights and hence of the optimiser state: ``fp32`` (stable updates on a bf16
            base model) or ``auto`` (the base weights' dtype).
    """

    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] | None = None
    init: Literal["default", "gaussian"] = "default"
    dtype: Literal["auto", "fp32"] = "fp32"

    def __post_init__(self) -> None:
        check_int("lora.rank", self.rank, 1, "e.g. 8 to 64")
        check_number("lora.alpha", self.alpha, low=0.0, low_open=True, hint="often 2 * rank")
        if self.target_modules is not None:
            modules = self.target_modules
            if isinstance(modules, str) or not modules or not all(isinstance(m, str) and m for m in modules):
                raise ValueError(
                    "lora.target_modules must be null (the model's defaults) or a non-empty list of module-name "
                    f"suffixes, e.g. [attn.to_q, attn.to_v]: got {modules!r}"
                )
        check_choice("lora.init", self.init, ("default", "gaussian"))
        check_choice("lora.dtype", self.dtype, ("auto", "fp32"))

    @property
    def init_lora_weights(self) -> bool | str:
        """The value peft's ``LoraConfig(init_lora_weights=...)`` takes for :attr:`init`."""
        return True if self.init == "default" else "gaussian"


@dataclass(frozen=True)
class SamplerConfig:
    """How rollouts are drawn (SPEC S3 groups, S5 step reduction).

    Attributes:
        group_size: ``G``, edits sampled per condition; GRPO compares them, so at least 2.
        prompts_per_step: ``P``, conditions per rank per iteration; a rank rolls out ``P * G`` samples.
        train_steps: SDE steps of a training rollout (e.g. 6-10), on the same time interval as evaluation.
        eval_steps: ODE steps of evaluation and inference (the model's usual count, e.g. 28 for FLUX.1 Kontext).
        sde_window: ``[start, end)`` indices of the rollout steps that are SDE steps and trained; steps outside
            are deterministic ODE steps and not trained. Null: every step.
        train_fraction: fraction of the window's steps trained per iteration (a fresh random subset each time, at
            least one step); 1 trains them all. Fewer steps mean fewer transformer passes with gradient.
        seed: seed of the rollout noise; null derives it from ``runtime.seed``.
        rollout_batch: samples per rollout forward (must divide ``P * G``); null rolls all ``P * G`` out at once.
            With several chunks, the rewards of one chunk are computed while the next one rolls out. The rollout
            noise is keyed by chunk, so runs that agree on it draw the same noise whatever the number of ranks.
    """

    group_size: int = 8
    prompts_per_step: int = 4
    train_steps: int = 8
    eval_steps: int = 20
    sde_window: tuple[int, int] | None = None
    train_fraction: float = 0.5
    seed: int | None = None
    rollout_batch: int | None = None

    def __post_init__(self) -> None:
        check_int("sampler.group_size", self.group_size, 2, "GRPO needs a group to compare")
        check_int("sampler.prompts_per_step", self.prompts_per_step, 1, "conditions per rank per iteration")
        check_int("sampler.train_steps", self.train_steps, 1, "SDE steps per training rollout, e.g. 8")
        check_int("sampler.eval_steps", self.eval_steps, 1, "ODE steps of evaluation, e.g. 28")
        if self.sde_window is not None:
            window = self.sde_window
            ok = (
                isinstance(window, tuple)
                and len(window) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) for i in window)
            )
            if not ok or not 0 <= window[0] < window[1] <= self.train_steps:
                raise ValueError(
                    f"sampler.sde_window must be [start, end) with 0 <= start < end <= sampler.train_steps "
                    f"({self.train_steps}), e.g. [0, {min(2, self.train_steps)}], or null (every step): got {window!r}"
                )
        check_number("sampler.train_fraction", self.train_fraction, low=0.0, high=1.0, low_open=True, hint="1 = all")
        if self.seed is not None:
            check_int("sampler.seed", self.seed, 0, "or null to derive it from runtime.seed")
        if self.rollout_batch is not None:
            check_int("sampler.rollout_batch", self.rollout_batch, 1, "or null for the whole batch at once")
            batch = self.prompts_per_step * self.group_size
            if batch % self.rollout_batch:
                raise ValueError(
                    f"sampler.rollout_batch={self.rollout_batch} must divide prompts_per_step * group_size = {batch}; "
                    f"pick a divisor of {batch} or null"
                )

    @property
    def window(self) -> tuple[int, int]:
        """``(start, end)`` of the SDE window, the whole rollout when :attr:`sde_window` is null."""
        return self.sde_window if self.sde_window is not None else (0, self.train_steps)

    @property
    def trained_steps(self) -> int:
        """Steps trained per iteration: ``max(1, round(train_fraction * window length))``."""
        start, end = self.window
        return max(1, round(self.train_fraction * (end - start)))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW on the LoRA weights and the shape of the update.

    Attributes:
        lr: peak learning rate (per optimiser step), reached after ``warmup_steps``, then constant.
        betas: AdamW ``(beta1, beta2)``, each in ``[0, 1)``.
        weight_decay: decoupled weight decay (AdamW), per step, relative to ``lr``.
        eps: AdamW's denominator epsilon.
        grad_clip: clip the global gradient norm to this (L2 norm); null turns clipping off.
        warmup_steps: optimiser steps of linear learning-rate warm-up from 0; 0 turns it off.
        inner_epochs: passes over one iteration's rollouts (each pass: one optimiser step); ratios move away from
            1 only from the second pass on.
        grad_accum: micro-batches a rank's ``P * G`` samples are split into for the update (memory knob; the loss
            is weighted so the gradient is the same for any value); must divide ``P * G``.
        ema_decay: decay of an exponential moving average of the LoRA weights used for evaluation, in
            ``(0, 1)`` (e.g. 0.9); null keeps no average.
        nonfinite_limit: an update whose loss or gradient is not finite is skipped and counted; this many in a
            row stop the run with an error (a diverged run, a broken reward); >= 1.
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    inner_epochs: int = 1
    grad_accum: int = 1
    ema_decay: float | None = None
    nonfinite_limit: int = 5

    def __post_init__(self) -> None:
        check_number("optim.lr", self.lr, low=0.0, low_open=True, hint="e.g. 3e-4 for LoRA")
        betas = self.betas
        if not isinstance(betas, tuple) or len(betas) != 2:
            raise ValueError(f"optim.betas must be a pair [beta1, beta2], e.g. [0.9, 0.999]: got {betas!r}")
        for i, beta in enumerate(betas):
            check_number(f"optim.betas[{i}]", beta, low=0.0, high=1.0, high_open=True, hint="e.g. 0.9, 0.999")
        check_number("optim.weight_decay", self.weight_decay, low=0.0, hint="e.g. 1e-4, or 0 to turn it off")
        check_number("optim.eps", self.eps, low=0.0, low_open=True, hint="e.g. 1e-8")
        if self.grad_clip is not None:
            check_number("optim.grad_clip", self.grad_clip, low=0.0, low_open=True, hint="e.g. 1.0, or null for off")
        check_int("optim.warmup_steps", self.warmup_steps, 0, "0 turns warm-up off")
        check_int("optim.inner_epochs", self.inner_epochs, 1, "passes over each iteration's rollouts")
        check_int("optim.grad_accum", self.grad_accum, 1, "micro-batches per update")
        if self.ema_decay is not None:
            check_number("optim.ema_decay", self.ema_decay, low=0.0, high=1.0, low_open=True, high_open=True,
                         hint="e.g. 0.9, or null for no average")  # fmt: skip
        check_int("optim.nonfinite_limit", self.nonfinite_limit, 1, "skipped updates in a row before stopping")


def _default_components() -> dict[str, dict[str, Any]]:
    return {"rules": {"type": "rules", "weight": 1.0}}


@dataclass(frozen=True)
class RewardsConfig:
    """The reward components and their weights (SPEC S2), as :func:`fastgrpo.rewards.build_reward` takes them.

    Attributes:
        components: ``{name: {type, weight, **options}}``; ``type`` is a registered reward type (``rules``,
            ``clip``, ``mllm_judge``), ``weight`` its weight in the sum (unitless), the rest the type's options
            (checked when the reward is built). A YAML file's ``components`` replace the defaults as a whole; a
            dotted override such as ``rewards.components.rules.weight=0.5`` changes one entry.
        device: device of the reward tensors, e.g. ``cpu`` or ``cuda``.
    """

    components: Mapping[str, Any] = field(default_factory=_default_components)
    device: str = "cpu"

    def __post_init__(self) -> None:
        from fastgrpo.rewards.registry import RewardConfig

        if not isinstance(self.components, Mapping) or not self.components:
            raise ValueError(
                "rewards.components must be a non-empty mapping {name: {type, weight, ...}}, e.g. "
                f"{{rules: {{type: rules, weight: 1.0}}}}: got {self.components!r}"
            )
        object.__setattr__(self, "components", copy.deepcopy(dict(self.components)))
        check_optional_str("rewards.device", self.device, "e.g. cpu or cuda")
        for name, entry in self.components.items():
            try:
                RewardConfig.from_mapping({"components": {name: entry}})
            except ValueError as error:
                raise ValueError(f"rewards.components.{name}: {error}") from None

    def to_reward_mapping(self) -> dict[str, Any]:
        """The mapping :func:`fastgrpo.rewards.build_reward` takes."""
        return {"components": copy.deepcopy(dict(self.components)), "device": self.device}


@dataclass(frozen=True)
class DataConfig:
    """Where the (source image, instruction) conditions come from.

    Attributes:
        source: ``synthetic`` (the built-in synthetic shapes task; null means the same) or a path to a
            ``.jsonl``/``.json``/``.parquet`` file or a folder of them.
        preset: column layout of a data set (``auto`` detects it per file; see ``fastgrpo.data.PRESETS``).
        root: folder that image paths are relative to; null: the data file's folder.
        resolutions: bucket sizes ``WIDTHxHEIGHT`` in pixels (e.g. ``[1024x1024, 1184x880]``); each image goes to
            the bucket of closest aspect ratio. The synthetic task takes one square size.
        multiple: every bucket side must be a multiple of this many pixels (16: VAE factor 8 x patch 2).
        max_bad_fraction: largest tolerated fraction of unreadable records in ``[0, 1]``; more stop the run.
        held_out: conditions kept out of training for evaluation (synthetic: task seed ``seed + 1000``; a data set:
            a seeded sample of its records); 0 turns evaluation data off.
        placement: ``rank`` (each group rolled out on one rank) or ``spread`` (a group spread over ranks).
        num_workers: data-loader worker processes per rank (0 loads in the training process).
    """

    source: str | None = "synthetic"
    preset: str = "auto"
    root: str | None = None
    resolutions: tuple[str, ...] = ("16x16",)
    multiple: int = 16
    max_bad_fraction: float = 0.05
    held_out: int = 64
    placement: Literal["rank", "spread"] = "rank"
    num_workers: int = 2

    def __post_init__(self) -> None:
        from fastgrpo.data.buckets import ResolutionBuckets, parse_resolutions

        if self.source is None:
            object.__setattr__(self, "source", "synthetic")
        check_optional_str("data.source", self.source, "'synthetic' or a data file/folder")
        check_optional_str("data.root", self.root, "the folder image paths are relative to")
        if not isinstance(self.preset, str) or not self.preset:
            raise ValueError(f"data.preset must be a preset name or 'auto': got {self.preset!r}")
        if self.preset != "auto":
            from fastgrpo.data.formats import get_preset

            try:
                get_preset(self.preset)
            except ValueError as error:
                raise ValueError(f"data.preset: {error}") from None
        check_int("data.multiple", self.multiple, 1, "16 for FLUX.1 Kontext and Qwen-Image-Edit")
        res = self.resolutions
        if isinstance(res, str) or not isinstance(res, tuple) or not all(isinstance(r, str) for r in res):
            raise ValueError(f"data.resolutions must be a list of WIDTHxHEIGHT strings, e.g. [512x512]: got {res!r}")
        try:
            sizes = ResolutionBuckets(parse_resolutions(res), self.multiple).resolutions
        except ValueError as error:
            raise ValueError(f"data.resolutions: {error}") from None
        if self.is_synthetic and (len(sizes) != 1 or sizes[0].width != sizes[0].height):
            raise ValueError(
                f"data.resolutions must be one square size for the synthetic task, e.g. [16x16]: got {res!r}"
            )
        check_number("data.max_bad_fraction", self.max_bad_fraction, low=0.0, high=1.0, hint="0.05 = 5%")
        check_int("data.held_out", self.held_out, 0, "0 turns evaluation data off")
        check_choice("data.placement", self.placement, ("rank", "spread"))
        check_int("data.num_workers", self.num_workers, 0, "0 loads in the training process")

    @property
    def is_synthetic(self) -> bool:
        """Whether the conditions come from the built-in synthetic task."""
        return self.source == "synthetic"

    @property
    def synthetic_size(self) -> int:
        """Image side in pixels of the synthetic task (its one square resolution)."""
        from fastgrpo.data.buckets import parse_resolutions

        return parse_resolutions(self.resolutions)[0].width


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the run executes.

    Attributes:
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seed of everything not seeded separately (model init, data order, rollout noise).
        max_steps: GRPO iterations (rollout + update) to run.
        dtype: autocast dtype of the transformer forward passes (``bf16`` or ``fp16``); null runs them in the
            weights' dtype without autocast.
        compile: ``torch.compile`` each repeated transformer block after LoRA is attached (regional compilation,
            inductor backend; :mod:`fastgrpo.models.compile`). The first calls of each configuration compile (the
            first iteration, the first reference / evaluation pass, a new batch size or resolution), so early
            iterations are slow; the metric ``time/compile`` (seconds, part of ``time/step``) reports it. Inductor on
            the CPU needs a C++ compiler.
        cuda_graphs: replay the rollout loop and each update micro-step (forward, loss, backward) from CUDA graphs
            captured per shape, at most 8 graphs per runner (:mod:`fastgrpo.train.graphs`). Refused with
            ``device=cpu`` and with ``fsdp``; with ``device=auto`` on a machine without CUDA, and whenever capture is
            impossible, the eager code runs and the reason is logged once; each metrics row says
            ``cuda_graphs: true/false``.
        kernel_backend: fused-kernel backend: ``auto`` (Triton on CUDA tensors, PyTorch on CPU), ``triton``,
            ``torch`` or ``cuda`` (the native library built by CMake).
        distributed_backend: ``torch.distributed`` backend under ``torchrun``: ``auto`` (NCCL on CUDA, Gloo on
            CPU), ``nccl`` or ``gloo``.
        fsdp: shard the transformer (base and LoRA weights, AdamW state, EMA) over the ranks with FSDP2, one unit per
            block, for models whose weights do not fit one GPU (:mod:`fastgrpo.train.parallel.fsdp`). Needs a
            ``torchrun`` launch with 2 or more processes (one process refuses it) and held-out sets that give every
            rank the same number of evaluation batches. The reference policy stays the adapter-disabled model (no
            copy); checkpoints and LoRA files hold whole tensors, as without FSDP. Not with ``cuda_graphs``.
    """

    device: str = "auto"
    seed: int = 0
    max_steps: int = 250
    dtype: Literal["bf16", "fp16"] | None = None
    compile: bool = False
    cuda_graphs: bool = False
    kernel_backend: Literal["auto", "triton", "torch", "cuda"] = "auto"
    distributed_backend: Literal["auto", "nccl", "gloo"] = "auto"
    fsdp: bool = False

    def __post_init__(self) -> None:
        device = self.device
        valid = isinstance(device, str) and (
            device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
        )
        if not valid:
            raise ValueError(f"runtime.device must be auto, cpu, cuda or cuda:N (e.g. cuda:0): got {device!r}")
        check_int("runtime.seed", self.seed, 0, "any int >= 0")
        check_int("runtime.max_steps", self.max_steps, 1, "GRPO iterations to run")
        check_choice("runtime.dtype", self.dtype, ("bf16", "fp16", None))
        for name in ("compile", "cuda_graphs", "fsdp"):
            check_bool(f"runtime.{name}", getattr(self, name))
        check_choice("runtime.kernel_backend", self.kernel_backend, ("auto", "triton", "torch", "cuda"))
        check_choice("runtime.distributed_backend", self.distributed_backend, ("auto", "nccl", "gloo"))
        if self.cuda_graphs and device == "cpu":
            raise ValueError("runtime.cuda_graphs needs a CUDA device: set runtime.cuda_graphs=false or runtime.device")
        if self.cuda_graphs and self.fsdp:
            raise ValueError(
                "runtime.cuda_graphs cannot capture FSDP's per-block all-gathers: set runtime.cuda_graphs=false "
                "or runtime.fsdp=false"
            )
        if self.distributed_backend == "nccl" and device == "cpu":
            raise ValueError("runtime.distributed_backend=nccl needs CUDA: use gloo (or auto) with runtime.device=cpu")


@dataclass(frozen=True)
class LoggingConfig:
    """Run directory, metrics, evaluation and checkpoint cadence.

    Attributes:
        output_dir: parent folder of run directories; a run writes to ``output_dir/run_name``.
        run_name: name of the run directory; null makes one from the start time (``YYYYmmdd-HHMMSS``).
        log_every: write metrics every this many iterations (>= 1).
        eval_every: run the ODE evaluation on held-out data every this many iterations; 0 turns it off.
        save_every: write a checkpoint every this many iterations; 0 saves only at the end.
        keep_checkpoints: most recent checkpoints kept on disk (older ones are deleted); null keeps all.
        tensorboard: also write TensorBoard event files (needs the ``tensorboard`` package); metrics always go
            to ``metrics.jsonl``.
        progress: show a progress line (step, reward, time per phase) on rank 0.
    """

    output_dir: str = "runs"
    run_name: str | None = None
    log_every: int = 1
    eval_every: int = 50
    save_every: int = 50
    keep_checkpoints: int | None = 3
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_optional_str("logging.output_dir", self.output_dir, "a folder, e.g. runs")
        if self.output_dir is None:
            raise ValueError("logging.output_dir must be a folder, e.g. runs: got null")
        check_optional_str("logging.run_name", self.run_name, "a folder name, or null for the start time")
        if self.run_name is not None and ("/" in self.run_name or self.run_name in (".", "..")):
            raise ValueError(f"logging.run_name must be a plain folder name without '/': got {self.run_name!r}")
        check_int("logging.log_every", self.log_every, 1, "iterations between metric lines")
        check_int("logging.eval_every", self.eval_every, 0, "0 turns evaluation off")
        check_int("logging.save_every", self.save_every, 0, "0 saves only at the end")
        if self.keep_checkpoints is not None:
            check_int("logging.keep_checkpoints", self.keep_checkpoints, 1, "or null to keep all")
        check_bool("logging.tensorboard", self.tensorboard)
        check_bool("logging.progress", self.progress)


@dataclass(frozen=True)
class ProfileConfig:
    """Profiling for Nsight Systems and the PyTorch memory snapshot.

    Attributes:
        steps: iteration window ``"A:B"`` (``[A, B)``, 0-based) profiled with ``cudaProfilerStart/Stop`` so that
            ``nsys profile --capture-range=cudaProfilerApi`` records only those iterations; null profiles none.
        nvtx: emit NVTX ranges around rollout, reward, advantage and update phases (needs the ``nvtx`` package).
        memory_snapshot: record CUDA allocator history during the window and write ``memory_snapshot.pickle``
            to the run directory (view it at pytorch.org/memory_viz).
    """

    steps: str | None = None
    nvtx: bool = False
    memory_snapshot: bool = False

    def __post_init__(self) -> None:
        if self.steps is not None:
            parts = self.steps.split(":") if isinstance(self.steps, str) else []
            ok = len(parts) == 2 and all(p.strip().isdigit() for p in parts)
            if not ok or int(parts[0]) >= int(parts[1]):
                raise ValueError(
                    f"profile.steps must be 'A:B' with 0 <= A < B (iterations [A, B)), e.g. 10:12, or null: "
                    f"got {self.steps!r}"
                )
        check_bool("profile.nvtx", self.nvtx)
        check_bool("profile.memory_snapshot", self.memory_snapshot)
        if self.memory_snapshot and self.steps is None:
            raise ValueError("profile.memory_snapshot records during profile.steps: set profile.steps, e.g. 10:12")

    @property
    def window(self) -> tuple[int, int] | None:
        """``(A, B)`` of :attr:`steps`, or None."""
        if self.steps is None:
            return None
        start, end = self.steps.split(":")
        return int(start), int(end)
