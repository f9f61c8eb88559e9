"""The ``data``, ``runtime``, ``logging`` and ``profile`` sections: what the run reads, where and how it executes,
what it writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastgrpo.core.sde import BACKENDS
from fastgrpo.train.config.checks import check_bool, check_choice, check_int, check_number, check_optional_str

__all__ = ["DataConfig", "LoggingConfig", "ProfileConfig", "RuntimeConfig"]


@dataclass(frozen=True)
class DataConfig:
    """Where the (source image, instruction) conditions come from.

    Attributes:
        source: ``synthetic`` (the built-in synthetic shapes task; null means the same), a path to a
            ``.jsonl``/``.json``/``.parquet`` file or a folder of them, a Hugging Face data set on disk (a
            ``save_to_disk`` folder, ``.arrow`` files), or ``hf://owner/name`` from the local Hugging Face cache.
        preset: column layout of a data set (``auto`` detects it per file; see ``fastgrpo.data.PRESETS``).
        root: folder that image paths are relative to; null: the data file's folder.
        split: the split to read (``train``, ``dev``, ...) of a Hugging Face data set, or of a folder whose file
            names give splits as ``load_dataset`` reads them (``data/dev-00000-of-00001.parquet``,
            ``test_metadata.jsonl``); null: ``train`` if it has one, else its only split (several others: an error
            listing them).
        resolutions: bucket sizes ``WIDTHxHEIGHT`` in pixels (e.g. ``[1024x1024, 1184x880]``); each image goes to
            the bucket of closest aspect ratio. The synthetic task takes one square size.
        multiple: every bucket side must be a multiple of this many pixels (16: VAE factor 8 x patch 2).
        max_bad_fraction: largest tolerated fraction of unreadable records in ``[0, 1]``; more stop the run.
        held_out: conditions kept out of training for evaluation (synthetic: task seed ``seed + 1000``; a data set:
            a seeded sample of its records); 0 turns evaluation data off.
        placement: ``rank`` (each group rolled out on one rank) or ``spread`` (a group spread over ranks).
        multi_input: what to do with records that have reference images (more than one input image) when the model
            takes fewer (every adapter so far takes one): ``refuse`` (default) stops before training with a message
            that counts them; ``skip`` leaves those records out (logged once with the count) and trains on the rest.
    """

    source: str | None = "synthetic"
    preset: str = "auto"
    root: str | None = None
    split: str | None = None
    resolutions: tuple[str, ...] = ("16x16",)
    multiple: int = 16
    max_bad_fraction: float = 0.05
    held_out: int = 64
    placement: Literal["rank", "spread"] = "rank"
    multi_input: Literal["refuse", "skip"] = "refuse"

    def __post_init__(self) -> None:
        from fastgrpo.data.buckets import ResolutionBuckets, parse_resolutions

        if self.source is None:
            object.__setattr__(self, "source", "synthetic")
        check_optional_str("data.source", self.source, "'synthetic' or a data file/folder")
        check_optional_str("data.root", self.root, "the folder image paths are relative to")
        check_optional_str("data.split", self.split, "a split of the data set, e.g. train")
        if self.split is not None and self.is_synthetic:
            raise ValueError("data.split applies to a data set; the synthetic task has none: set data.split=null")
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
        check_choice("data.multi_input", self.multi_input, ("refuse", "skip"))

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
    max_steps: int = 650
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
        check_choice("runtime.kernel_backend", self.kernel_backend, BACKENDS)
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
        wandb: also send every metrics row to a Weights & Biases run (needs the ``wandb`` package: ``pip install
            wandb`` or the ``fastgrpo[wandb]`` extra), from rank 0, named after the run directory, with the
            resolved config; :class:`fastgrpo.train.metrics.sinks.WandbSink`. The mode is W&B's ``WANDB_MODE``
            environment variable: online by default (needs ``wandb login`` or ``WANDB_API_KEY``), ``offline`` to
            write ``RUN_DIR/wandb/offline-run-*`` and upload later with ``wandb sync RUN_DIR/wandb/offline-run-*``,
            ``disabled`` to send nothing. The W&B run id is kept in ``RUN_DIR/wandb_run.json``, so a resumed run
            continues the same W&B run; the steps repeated after a resume, which W&B already holds, are not sent
            again (W&B keeps the values first logged for them). A W&B run that cannot start (no network, no login)
            raises one ``ValueError`` naming the fixes; online without network W&B first retries for about 90 s.
        wandb_project: W&B project (at most 128 characters, none of ``/ \\ # ? % :``).
        wandb_entity: W&B user or team that owns the project; null is your default entity.
    """

    output_dir: str = "runs"
    run_name: str | None = None
    log_every: int = 1
    eval_every: int = 50
    save_every: int = 50
    keep_checkpoints: int | None = 3
    tensorboard: bool = False
    progress: bool = True
    wandb: bool = False
    wandb_project: str = "fastgrpo"
    wandb_entity: str | None = None

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
        check_bool("logging.wandb", self.wandb)
        if not isinstance(self.wandb_project, str) or not self.wandb_project.strip():
            raise ValueError(
                f"logging.wandb_project must be a W&B project name, e.g. fastgrpo: got {self.wandb_project!r}"
            )
        check_optional_str("logging.wandb_entity", self.wandb_entity, "a W&B user or team, or null for your default")
        # W&B refuses these names (wandb.Settings), but only once wandb.init runs: checked here to fail early
        for key, name in (("wandb_project", self.wandb_project), ("wandb_entity", self.wandb_entity)):
            if name is not None and (len(name) > 128 or any(c in name for c in "/\\#?%:")):
                raise ValueError(
                    f"logging.{key} must be at most 128 characters without any of / \\ # ? % : (W&B's rule): "
                    f"got {name!r}"
                )


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
