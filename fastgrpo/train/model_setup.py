"""The model a run trains: the editing model of ``cfg.model`` with its LoRA attached, then compiled and sharded as
``cfg.runtime`` asks, in that order (peft wraps the Linears that compilation traces, and FSDP renames the block
classes that regional compilation looks for).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastgrpo.models.base import EditModel
from fastgrpo.train.config import TrainConfig
from fastgrpo.train.errors import TrainingError
from fastgrpo.train.parallel.distributed import DistContext

__all__ = ["TrainedModel", "build_model", "build_trained_model", "check_local_path"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def check_local_path(path: str | None) -> None:
    """``ValueError`` at once for a ``model.path`` that can only mean a local path and does not exist (absolute,
    ``./``, ``../`` or ``~``, more than one ``/``, or a weights file), rather than letting it be tried as a hub id
    (``org/name``) against the network."""
    if path is None or Path(path).expanduser().exists():
        return
    looks_local = path.startswith(("/", "./", "../", "~", ".\\")) or path.count("/") > 1 or "\\" in path
    looks_local = looks_local or Path(path).suffix in (".safetensors", ".bin", ".pt", ".json")
    if looks_local:
        raise ValueError(
            f"model.path={path!r} does not exist (resolved: {Path(path).expanduser().resolve()}); point it at the "
            "checkpoint directory, or use a hub id such as black-forest-labs/FLUX.1-Kontext-dev"
        )


def build_model(cfg: TrainConfig, device: torch.device) -> EditModel:
    """The editing model of ``cfg.model`` on ``device`` (``dtype: auto`` = bf16 on CUDA, fp32 on CPU), no LoRA."""
    from fastgrpo.models.registry import load_model

    m = cfg.model
    check_local_path(m.path)
    dtype = m.dtype if m.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    kwargs: dict[str, Any] = {"dtype": _DTYPES[dtype], "device": device, "attention_backend": m.attention_backend}
    if m.type == "flux_kontext" and m.guidance_scale is not None:
        kwargs["guidance_scale"] = m.guidance_scale
    if m.type == "qwen_image_edit":
        kwargs["true_cfg_scale"] = m.true_cfg_scale
        kwargs["negative_prompt"] = m.negative_prompt
    if m.type == "tiny" and m.path is None and cfg.data.is_synthetic:  # the packaged weights of the task's size
        kwargs["size"] = cfg.data.synthetic_size
    return load_model(m.type, m.path, **kwargs)


@dataclass(eq=False)
class TrainedModel:
    """What :func:`build_trained_model` returns.

    Attributes:
        model: the editing model, LoRA attached (compiled / sharded in place).
        params: the trainable LoRA weights as the optimiser must see them (sharded ``DTensor`` s under FSDP).
        compiled: the compile report under ``runtime.compile`` (``read()`` gives the seconds spent compiling since
            the last read), else None.
    """

    model: EditModel
    params: list[nn.Parameter]
    compiled: Any = None


def build_trained_model(cfg: TrainConfig, dist: DistContext, log: Callable[[str], None]) -> TrainedModel:
    """Build the model of ``cfg`` on ``dist.device`` and attach the LoRA of ``cfg.lora`` (seeded with
    ``runtime.seed``, so every rank starts from the same adapter; checked), then ``runtime.compile`` and
    ``runtime.fsdp``.

    Raises :class:`~fastgrpo.train.errors.TrainingError` when the LoRA attaches no weights, and ``ValueError`` for
    a model that cannot be loaded, compiled or sharded (the message names the fix).
    """
    torch.manual_seed(cfg.runtime.seed)  # identical LoRA initialisation on every rank
    model = build_model(cfg, dist.device)
    lora = cfg.lora
    dtype = torch.float32 if lora.dtype == "fp32" else None
    params = model.add_lora(
        lora.rank, lora.alpha, lora.target_modules, init_lora_weights=lora.init_lora_weights, dtype=dtype
    )
    if not params:
        raise TrainingError("LoRA attached no trainable parameters: check lora.target_modules")
    dist.check_same(params, "the initial LoRA weights")
    compiled = None
    if cfg.runtime.compile:
        compiled = model.compile_blocks()
        log(f"torch.compile: {compiled.describe()}; first calls compile (time/compile in metrics)")
    if cfg.runtime.fsdp:  # from here on the optimiser must see the sharded LoRA weights
        from fastgrpo.train.parallel.fsdp import shard_transformer

        params = shard_transformer(model, dist)
    return TrainedModel(model, params, compiled)
