"""ODE evaluation on held-out conditions: full ``eval_steps``, fixed noise per condition, every reward component.

The initial noise of held-out condition ``i`` depends only on ``(seed, i)``, so two evaluations of the same
weights give the same edits whatever the batch size or the number of ranks (rank ``r`` takes conditions
``r, r + W, ...``; sums are all-reduced).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fastgrpo.models.base import EditModel, images_to_tensor
from fastgrpo.rewards.composite import CompositeReward
from fastgrpo.train.conditions import ConditionItem
from fastgrpo.train.ode_sampling import sample_ode
from fastgrpo.train.parallel.distributed import DistContext

__all__ = ["build_model", "decode_uint8", "evaluate_conditions", "item_noise", "run_evaluation"]

EVAL_NOISE_SALT = 0x5EED
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_model(cfg: Any, device: torch.device) -> EditModel:
    """The editing model of ``cfg.model`` on ``device`` (``dtype: auto`` = bf16 on CUDA, fp32 on CPU)."""
    from fastgrpo.models.registry import load_model

    m = cfg.model
    dtype = m.dtype if m.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    kwargs: dict[str, Any] = {"dtype": _DTYPES[dtype], "device": device}
    if m.type != "tiny":
        kwargs["attention_backend"] = m.attention_backend
        if m.type == "flux_kontext" and m.guidance_scale is not None:
            kwargs["guidance_scale"] = m.guidance_scale
        if m.type == "qwen_image_edit":
            kwargs["true_cfg_scale"] = m.true_cfg_scale
            kwargs["negative_prompt"] = m.negative_prompt
    if m.type == "tiny" and m.path is None and cfg.data.is_synthetic:  # the packaged weights of the task's size
        kwargs["size"] = cfg.data.synthetic_size
    model = load_model(m.type, m.path, **kwargs)
    if m.type == "tiny" and m.attention_backend is not None:  # the tiny loader has no attention_backend argument
        from fastgrpo.models.checkpoints import set_attention_backend

        set_attention_backend(model.transformer, m.attention_backend)
    return model


def item_noise(model: EditModel, index: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Packed initial noise ``[1, N, C]`` of held-out condition ``index``."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + index * 7919 + EVAL_NOISE_SALT) % (2**63))
    return model.initial_noise(1, height, width, generator=gen)


def decode_uint8(model: EditModel, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Decoded images as ``uint8 [B, H, W, 3]`` on the CPU."""
    images = model.decode(latents, height, width)
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


@torch.no_grad()
def evaluate_conditions(
    model: EditModel,
    groups: Sequence[Sequence[ConditionItem]],
    reward: CompositeReward,
    *,
    eval_steps: int,
    batch_size: int,
    seed: int,
    dist: DistContext | None = None,
    keep_images: int = 0,
) -> dict[str, Any]:
    """Mean reward (``eval_reward_mean``) and per-component means (``eval/<name>``) over the held-out conditions.

    Args:
        groups: held-out conditions, each list of one resolution (:meth:`ConditionSource.held_out`).
        eval_steps: ODE steps (the model's inference count).
        batch_size: conditions per forward.
        keep_images: return the first this-many ``(source, edited, instruction, reward)`` of rank 0 under
            ``"images"`` (for sample grids).
    """
    dist = dist or DistContext(device=model.device)
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    kept: list[tuple[np.ndarray, np.ndarray, str, float]] = []
    index_base = 0
    for items in groups:
        mine = list(range(dist.rank, len(items), dist.world_size))
        for start in range(0, len(mine), batch_size):
            chunk = [items[i] for i in mine[start : start + batch_size]]
            height, width = chunk[0].source.shape[:2]
            cond = model.encode(images_to_tensor([c.source for c in chunk]), [c.instruction for c in chunk])
            rows = mine[start : start + len(chunk)]
            noise = torch.cat([item_noise(model, index_base + i, height, width, seed) for i in rows])
            latents = sample_ode(model, cond, eval_steps, noise)
            edited = decode_uint8(model, latents, height, width).numpy()
            result = reward.score(
                [c.source for c in chunk], list(edited), [c.instruction for c in chunk],
                [c.mask for c in chunk], [c.captions for c in chunk], specs=[c.spec for c in chunk],
            )  # fmt: skip
            values = {"total": result.total(), **result.breakdown.components}
            for name, value in values.items():
                finite = torch.isfinite(value)
                sums[name] = sums.get(name, 0.0) + float(torch.where(finite, value, 0.0).sum())
                counts[name] = counts.get(name, 0.0) + float(finite.sum())
            totals = values["total"].tolist()
            for c, image, r in zip(chunk, edited, totals, strict=True):
                if len(kept) < keep_images:
                    kept.append((c.source, image, c.instruction, r))
        index_base += len(items)
    names = sorted(sums)
    if dist.active:  # every rank has every component name (same reward config)
        packed = torch.tensor([sums[n] for n in names] + [counts[n] for n in names], dtype=torch.float64)
        packed = dist.all_reduce_sum(packed.to(dist.device))
        values_list = packed.cpu().tolist()
        sums = dict(zip(names, values_list[: len(names)], strict=True))
        counts = dict(zip(names, values_list[len(names) :], strict=True))
    out: dict[str, Any] = {}
    for name in names:
        mean = sums[name] / counts[name] if counts[name] else math.nan
        out["eval_reward_mean" if name == "total" else f"eval/{name}"] = mean
    out["eval_conditions"] = int(sum(len(g) for g in groups))
    if keep_images:
        out["images"] = kept
    return out


def _all_conditions(cfg: Any, path: str, limit: int | None) -> list[list[ConditionItem]]:
    """Every usable record of the data set at ``path``, grouped by resolution bucket."""
    from fastgrpo.data.badinput import BadInputPolicy
    from fastgrpo.data.buckets import ResolutionBuckets, parse_resolutions
    from fastgrpo.data.dataset import EditDataset
    from fastgrpo.train.conditions import items_by_bucket

    buckets = ResolutionBuckets(parse_resolutions(cfg.data.resolutions), cfg.data.multiple)
    dataset = EditDataset.from_path(
        path, buckets, preset=cfg.data.preset, root=cfg.data.root,
        policy=BadInputPolicy(max_bad_fraction=cfg.data.max_bad_fraction),
    )  # fmt: skip
    return items_by_bucket(dataset, limit)


def run_evaluation(
    cfg: Any,
    *,
    lora: str | None = None,
    checkpoint: str | None = None,
    data: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """``fastgrpo eval``: the base model, a LoRA directory or a checkpoint, on the held-out set of ``cfg.data``
    (or every record of ``data``), ODE with ``cfg.sampler.eval_steps``; returns the means and what was evaluated.

    Raises:
        ValueError: a LoRA/checkpoint directory without LoRA weights, or no conditions to evaluate.
    """
    from pathlib import Path

    from fastgrpo.rewards.registry import build_reward
    from fastgrpo.train.conditions import build_condition_source
    from fastgrpo.train.parallel.distributed import init_distributed

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    ctx = init_distributed(cfg.runtime.device, cfg.runtime.distributed_backend)
    model = build_model(cfg, ctx.device)
    weights = "base model"
    if checkpoint is not None:
        lora = str(Path(checkpoint) / "lora")
        if not (Path(checkpoint) / "COMPLETE").is_file():
            raise ValueError(f"{checkpoint} is not a complete checkpoint (no COMPLETE marker); pick another one")
    if lora is not None:
        model.load_lora(lora)
        weights = f"LoRA {lora}"
    if data is not None:
        groups = _all_conditions(cfg, data, limit)
    else:
        groups = build_condition_source(cfg.data, cfg.runtime.seed, 1).held_out()
        if limit is not None:
            groups = [g[:limit] for g in groups][:1] if groups else []
    if not groups or not any(groups):
        raise ValueError("nothing to evaluate: set data.held_out > 0 or pass --data")
    s = cfg.sampler
    with build_reward(cfg.rewards.to_reward_mapping()) as reward:
        out = evaluate_conditions(
            model, groups, reward, eval_steps=s.eval_steps,
            batch_size=s.rollout_batch or s.prompts_per_step * s.group_size, seed=cfg.runtime.seed, dist=ctx,
        )  # fmt: skip
    ctx.close()
    out.update({"eval_steps": s.eval_steps, "weights": weights})
    return out
