"""ODE evaluation on held-out conditions: full ``eval_steps``, fixed noise per condition, every reward component.

The initial noise of held-out condition ``i`` depends only on ``(seed, i)``, so two evaluations of the same
weights give the same edits whatever the batch size or the number of ranks (rank ``r`` takes conditions
``r, r + W, ...``; sums are all-reduced).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastgrpo.models.base import EditModel, images_to_tensor
from fastgrpo.rewards.composite import CompositeReward
from fastgrpo.rewards.tally import RewardTally
from fastgrpo.train.conditions import ConditionItem, reward_batch
from fastgrpo.train.ode_sampling import sample_ode
from fastgrpo.train.parallel.distributed import DistContext

__all__ = [
    "HeldOutEvaluation",
    "data_set_conditions",
    "edit_conditions",
    "evaluate_conditions",
    "item_noise",
    "run_evaluation",
    "summarise",
]

EVAL_NOISE_SALT = 0x5EED


def item_noise(model: EditModel, index: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Packed initial noise ``[1, N, C]`` of held-out condition ``index``."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + index * 7919 + EVAL_NOISE_SALT) % (2**63))
    return model.initial_noise(1, height, width, generator=gen)


@torch.no_grad()
def edit_conditions(
    model: EditModel,
    groups: Sequence[Sequence[ConditionItem]],
    *,
    eval_steps: int,
    batch_size: int,
    seed: int,
    dist: DistContext | None = None,
) -> Iterator[tuple[list[int], list[ConditionItem], np.ndarray]]:
    """ODE edits of this rank's share of the held-out conditions, batch by batch: ``(indices, items, edited)`` with
    each condition's global index (over ``groups`` in order), the conditions and ``uint8 [b, H, W, 3]`` edits.
    Rank ``r`` of ``W`` takes conditions ``r, r + W, ...`` of each group; condition ``i`` always starts from the noise
    of ``(seed, i)``."""
    dist = dist or DistContext(device=model.device)
    index_base = 0
    for items in groups:
        mine = list(range(dist.rank, len(items), dist.world_size))
        for start in range(0, len(mine), batch_size):
            rows = mine[start : start + batch_size]
            chunk = [items[i] for i in rows]
            height, width = chunk[0].source.shape[:2]
            cond = model.encode(images_to_tensor([c.source for c in chunk]), [c.instruction for c in chunk],
                                references=[list(c.references) for c in chunk])  # fmt: skip
            noise = torch.cat([item_noise(model, index_base + i, height, width, seed) for i in rows])
            latents = sample_ode(model, cond, eval_steps, noise)
            yield [index_base + i for i in rows], chunk, model.decode_uint8(latents, height, width).numpy()
        index_base += len(items)


def summarise(tally: RewardTally, prefix: str) -> dict[str, float]:
    """The metrics of a tally of held-out scores: ``<prefix>_reward_mean``, ``<prefix>_reward_se`` (its standard
    error over the conditions) and ``<prefix>/<component>`` for every component and sub-term."""
    out: dict[str, float] = {}
    for name, mean in tally.means().items():
        out[f"{prefix}_reward_mean" if name == "total" else f"{prefix}/{name}"] = mean
    out[f"{prefix}_reward_se"] = tally.stderrs().get("total", math.nan)
    return out


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
    gold: CompositeReward | None = None,
) -> dict[str, Any]:
    """The held-out ODE evaluation: the training reward's mean (``eval_reward_mean``), standard error
    (``eval_reward_se``) and component means (``eval/<name>``), the same for the gold reward (``gold_reward_mean``,
    ``gold_reward_se``, ``gold/<name>``: scored on the same edits; the training reward's figures when ``gold`` is
    None), and the number of conditions (``eval_conditions``).

    Args:
        groups: held-out conditions, each list of one resolution (:meth:`ConditionSource.held_out`).
        eval_steps: ODE steps (the model's inference count).
        batch_size: conditions per forward.
        seed: the evaluation noise seed (condition ``i`` always starts from the same noise).
        dist: ranks (conditions are split over them, sums all-reduced); None: one process.
        gold: the gold reward (``eval.rewards``), or None.
    """
    dist = dist or DistContext(device=model.device)
    rewards = {"eval": reward, **({"gold": gold} if gold is not None else {})}
    tallies = {prefix: RewardTally() for prefix in rewards}
    for _, items, edited in edit_conditions(model, groups, eval_steps=eval_steps, batch_size=batch_size, seed=seed,
                                            dist=dist):  # fmt: skip
        batch = reward_batch(items, edited)
        for prefix, scorer in rewards.items():
            tallies[prefix].add(scorer.evaluate(batch), len(items))
    out: dict[str, Any] = {}
    for prefix, tally in tallies.items():
        if dist.active:  # every rank has every component name (same reward config)
            tally.all_reduce(lambda packed: dist.all_reduce_sum(packed.to(dist.device)).cpu())
        out.update(summarise(tally, prefix))
    if gold is None:  # the gold reward is the training reward
        out.update({"gold" + k[4:]: v for k, v in list(out.items()) if k.startswith("eval")})
    out["eval_conditions"] = int(sum(len(g) for g in groups))
    return out


@dataclass(frozen=True, eq=False)
class HeldOutEvaluation:
    """The trainer's ODE evaluation of the held-out ``groups`` with ``sampler.eval_steps`` (the arguments of
    :func:`evaluate_conditions`); ``groups`` is empty when evaluation is off."""

    model: EditModel
    groups: Sequence[Sequence[ConditionItem]]
    reward: CompositeReward
    eval_steps: int
    batch_size: int
    seed: int
    dist: DistContext
    gold: CompositeReward | None = None

    def __call__(self) -> dict[str, Any]:
        """The keys of :func:`evaluate_conditions` for the current weights."""
        e = self
        return evaluate_conditions(e.model, e.groups, e.reward, eval_steps=e.eval_steps, batch_size=e.batch_size,
                                   seed=e.seed, dist=e.dist, gold=e.gold)  # fmt: skip


def data_set_conditions(cfg: Any, path: str, limit: int | None) -> list[list[ConditionItem]]:
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
    from fastgrpo.train.model_setup import build_model
    from fastgrpo.train.parallel.distributed import init_distributed

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    ctx = init_distributed(cfg.runtime.device, cfg.runtime.distributed_backend)
    model = build_model(cfg, ctx.device)
    weights = "base model"
    if checkpoint is not None:
        from fastgrpo.train.storage.checkpoint_dir import CheckpointDirectory

        lora = str(Path(checkpoint) / "lora")
        problem = CheckpointDirectory(Path(checkpoint).parent).verify(Path(checkpoint))
        if problem is not None:
            raise ValueError(f"{checkpoint} is not an intact checkpoint ({problem}); pick another one")
    if lora is not None:
        model.load_lora(lora)
        weights = f"LoRA {lora}"
    if data is not None:
        groups = data_set_conditions(cfg, data, limit)
    else:
        groups = build_condition_source(cfg.data, cfg.runtime.seed, 1, max_inputs=model.max_input_images,
                                        model_type=cfg.model.type).held_out()  # fmt: skip
        if limit is not None:
            groups = [g[:limit] for g in groups][:1] if groups else []
    if not groups or not any(groups):
        raise ValueError("nothing to evaluate: set data.held_out > 0 or pass --data")
    s = cfg.sampler
    gold_cfg = cfg.eval.gold
    with build_reward(cfg.rewards.to_reward_mapping()) as reward:
        gold = build_reward(gold_cfg.to_reward_mapping()) if gold_cfg is not None else None
        try:
            out = evaluate_conditions(
                model, groups, reward, eval_steps=s.eval_steps,
                batch_size=s.rollout_batch or s.prompts_per_step * s.group_size, seed=cfg.runtime.seed, dist=ctx,
                gold=gold,
            )  # fmt: skip
        finally:
            if gold is not None:
                gold.close()
    ctx.close()
    out.update({"eval_steps": s.eval_steps, "weights": weights})
    return out
