"""The (source image, instruction) conditions of each training iteration, and the held-out evaluation set.

Iteration ``s`` has one *global* batch: ``P · W`` distinct conditions (``P`` per rank, ``W`` ranks), each repeated
``G`` times, ``P · G · W`` samples in all. Global sample ``j`` belongs to group ``j // G`` (its condition). Each
rank takes ``P · G`` of the global samples: a contiguous block with ``placement="rank"`` (every group on one
rank), every ``W``-th sample with ``placement="spread"`` (a group spread over the ranks). Everything here is a
pure function of ``(seed, s)``, so a resumed run sees exactly the batches it would have seen, and the same global
batch gives the same samples whatever ``W`` is.

Sources: the built-in synthetic task (condition ``c`` of iteration ``s`` is task sample ``s · P · W + c``) or a
data set (``EditDataset`` + the seeded ``GroupBatchSampler`` epoch schedule, one resolution bucket per batch).
A data set's reference images (records with several input images) travel in ``ConditionItem.references`` to the
model's ``encode``; when the model takes fewer input images, :func:`limit_inputs` refuses such records before
training starts (``data.multi_input=refuse``, the default) or leaves them out (``skip``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastgrpo.data.shapes import EditSpec
from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.models.base import Condition, EditModel, images_to_tensor
from fastgrpo.rewards.base import RewardBatch
from fastgrpo.train.config.sections import DataConfig

__all__ = [
    "ConditionItem",
    "ConditionPlan",
    "ConditionSource",
    "RankBatch",
    "build_condition_source",
    "encode_batch",
    "reward_batch",
]

logger = logging.getLogger(__name__)

#: held-out synthetic conditions come from this task seed offset (the same as the tiny editor's pre-training)
HELD_OUT_SEED_OFFSET = 1000


@dataclass(frozen=True, eq=False)
class ConditionItem:
    """One condition: ``source uint8 [H, W, 3]`` (the image to edit), instruction, optional mask/captions/spec
    (synthetic task), and ``references``: further input images, each ``uint8 [H, W, 3]`` at the source's
    resolution (empty for a single-image edit; :attr:`inputs` is ``(source, *references)``)."""

    id: str
    source: np.ndarray
    instruction: str
    mask: np.ndarray | None = None
    captions: tuple[str | None, str | None] | None = None
    spec: EditSpec | None = None
    references: tuple[np.ndarray, ...] = ()

    @property
    def inputs(self) -> tuple[np.ndarray, ...]:
        """Every input image, in order: ``(source, *references)``."""
        return (self.source, *self.references)


@dataclass(frozen=True)
class ConditionPlan:
    """How the global batch of an iteration is laid out over ranks (see the module docstring)."""

    prompts_per_rank: int
    group_size: int
    world_size: int
    rank: int
    placement: str = "rank"

    @property
    def global_conditions(self) -> int:
        return self.prompts_per_rank * self.world_size

    @property
    def local_samples(self) -> int:
        return self.prompts_per_rank * self.group_size

    def rank_rows(self, rank: int | None = None) -> np.ndarray:
        """Global sample indices of ``rank``'s samples (this rank by default), in local order."""
        rank = self.rank if rank is None else rank
        if self.placement == "rank":
            start = rank * self.local_samples
            return np.arange(start, start + self.local_samples)
        total = self.local_samples * self.world_size
        return np.arange(rank, total, self.world_size)


@dataclass(eq=False)
class RankBatch:
    """This rank's samples of one iteration.

    Attributes:
        items: the distinct conditions this rank needs (encode each once).
        item_of_sample: ``[P · G]`` index into ``items`` of every local sample.
        group_ids: ``[P · G]`` int64 global group ids (the same condition has the same id on every rank).
        num_groups: ``P · W``, the number of global groups.
    """

    items: list[ConditionItem]
    item_of_sample: torch.Tensor
    group_ids: torch.Tensor
    num_groups: int

    @property
    def size(self) -> int:
        return int(self.item_of_sample.numel())

    def samples(self, rows: slice | None = None) -> list[ConditionItem]:
        """The condition of every local sample (of ``rows`` only, when given)."""
        indices = self.item_of_sample.tolist()
        return [self.items[i] for i in (indices if rows is None else indices[rows])]


def encode_batch(model: EditModel, batch: RankBatch) -> Condition:
    """``batch``'s conditions encoded once each, then one row per sample (groups repeated), on the model's
    device."""
    sources = images_to_tensor([item.source for item in batch.items])
    references = [list(item.references) for item in batch.items]
    cond = model.encode(sources, [item.instruction for item in batch.items], references=references)
    return cond.index_select(batch.item_of_sample.to(model.device))


def reward_batch(items: Sequence[ConditionItem], edited: Sequence[np.ndarray]) -> RewardBatch:
    """The :class:`~fastgrpo.rewards.base.RewardBatch` of ``edited`` images (``uint8 [H, W, 3]``, one per item)."""
    return RewardBatch.build(
        [c.source for c in items], list(edited), [c.instruction for c in items], [c.mask for c in items],
        [c.captions for c in items], specs=[c.spec for c in items],
    )  # fmt: skip


class ConditionSource:
    """Conditions of iteration ``s``: :meth:`condition_indices` (global), :meth:`items`, :meth:`held_out`."""

    def condition_indices(self, step: int) -> np.ndarray:
        raise NotImplementedError

    def items(self, indices: Sequence[int]) -> list[ConditionItem]:
        raise NotImplementedError

    def held_out(self) -> list[list[ConditionItem]]:
        """Held-out conditions, grouped so that each list shares one resolution."""
        raise NotImplementedError

    def rank_batch(self, step: int, plan: ConditionPlan) -> RankBatch:
        """This rank's samples of iteration ``step``."""
        conditions = self.condition_indices(step)
        if len(conditions) != plan.global_conditions:
            raise RuntimeError(f"condition source gave {len(conditions)} conditions, expected {plan.global_conditions}")
        groups = plan.rank_rows() // plan.group_size
        unique, inverse = np.unique(groups, return_inverse=True)
        items = self.items([int(conditions[g]) for g in unique])
        return RankBatch(
            items=items,
            item_of_sample=torch.as_tensor(inverse, dtype=torch.int64),
            group_ids=torch.as_tensor(groups, dtype=torch.int64),
            num_groups=plan.global_conditions,
        )


class SyntheticSource(ConditionSource):
    """The built-in synthetic task at ``size`` pixels; held-out conditions from task seed ``seed + 1000``."""

    def __init__(self, size: int, seed: int, conditions_per_step: int, held_out: int) -> None:
        self.task = SyntheticEditTask(size=size, seed=seed)
        self.held_out_task = SyntheticEditTask(size=size, seed=seed + HELD_OUT_SEED_OFFSET)
        self.per_step, self.num_held_out = conditions_per_step, held_out

    def condition_indices(self, step: int) -> np.ndarray:
        return np.arange(step * self.per_step, (step + 1) * self.per_step)

    @staticmethod
    def _item(edit: Any) -> ConditionItem:
        return ConditionItem(edit.id, edit.source, edit.instruction, edit.mask, None, edit.spec)

    def items(self, indices: Sequence[int]) -> list[ConditionItem]:
        return [self._item(self.task.sample(int(i))) for i in indices]

    def held_out(self) -> list[list[ConditionItem]]:
        if not self.num_held_out:
            return []
        return [[self._item(self.held_out_task.sample(i)) for i in range(self.num_held_out)]]


class DatasetSource(ConditionSource):
    """A data set on disk: a seeded ``held_out`` records are kept out of training for evaluation.

    ``max_inputs`` (the model's :attr:`~fastgrpo.models.base.EditModel.max_input_images`, named ``model_type`` in
    messages) applies ``cfg.multi_input`` to records with more input images than that, before anything else: see
    :func:`limit_inputs`. ``None`` keeps every record (the model's ``encode`` then refuses what it cannot take).
    """

    def __init__(
        self,
        cfg: DataConfig,
        seed: int,
        conditions_per_step: int,
        *,
        max_inputs: int | None = None,
        model_type: str | None = None,
    ) -> None:
        from fastgrpo.data.badinput import BadInputPolicy
        from fastgrpo.data.buckets import ResolutionBuckets, parse_resolutions
        from fastgrpo.data.dataset import EditDataset
        from fastgrpo.data.loaders import load_records
        from fastgrpo.data.sampler import GroupBatchSampler

        loaded = load_records(cfg.source, preset=cfg.preset, root=cfg.root, split=cfg.split)  # type: ignore[arg-type]
        records = limit_inputs(list(loaded.records), cfg, max_inputs, model_type)
        held = cfg.held_out
        if held >= len(records):
            raise ValueError(
                f"data.held_out={held} leaves nothing to train on: {cfg.source} has {len(records)} usable records; "
                "lower data.held_out"
            )
        rng = np.random.default_rng([seed, 7])
        held_idx = set(rng.choice(len(records), size=held, replace=False).tolist()) if held else set()
        train = [r for i, r in enumerate(records) if i not in held_idx]
        evals = [r for i, r in enumerate(records) if i in held_idx]
        buckets = ResolutionBuckets(parse_resolutions(cfg.resolutions), cfg.multiple)
        policy = BadInputPolicy(max_bad_fraction=cfg.max_bad_fraction)
        self.dataset = EditDataset(train, buckets, root=loaded.root, skipped=loaded.problems, policy=policy)
        self.eval_dataset = EditDataset(evals, buckets, root=loaded.root, policy=policy) if evals else None
        counts = self.dataset.bucket_counts()
        if max(counts.values(), default=0) < conditions_per_step:
            sizes = ", ".join(f"{r}: {n}" for r, n in sorted(counts.items(), key=lambda item: -item[1]))
            raise ValueError(
                f"{cfg.source} is too small for one iteration: an iteration takes {conditions_per_step} conditions "
                f"(sampler.prompts_per_step x ranks) of one resolution bucket, and the largest bucket holds "
                f"{max(counts.values(), default=0)} training records ({sizes}; data.held_out={held} are kept for "
                "evaluation). Lower sampler.prompts_per_step, list fewer data.resolutions (each record goes to the "
                "bucket of its aspect ratio), lower data.held_out, or add records"
            )
        self.sampler = GroupBatchSampler(
            self.dataset.bucket_ids, group_size=1, groups_per_rank=conditions_per_step, seed=seed
        )

    def condition_indices(self, step: int) -> np.ndarray:
        return np.asarray(self.sampler.batch_at(step), dtype=np.int64)

    def items(self, indices: Sequence[int]) -> list[ConditionItem]:
        return [dataset_item(s) for s in self.dataset.__getitems__(list(indices))]

    def held_out(self) -> list[list[ConditionItem]]:
        return [] if self.eval_dataset is None else items_by_bucket(self.eval_dataset)


def dataset_item(sample: Any) -> ConditionItem:
    """The :class:`ConditionItem` of a decoded ``EditSample`` (the spec only for synthetic records)."""
    record = sample.record
    captions = (record.input_caption, record.output_caption)
    spec = record.metadata.get("spec") if isinstance(record.metadata.get("spec"), EditSpec) else None
    return ConditionItem(record.id, sample.source, record.instruction, sample.mask, captions, spec, sample.references)


def items_by_bucket(dataset: Any, count: int | None = None) -> list[list[ConditionItem]]:
    """The first ``count`` (all) conditions of an ``EditDataset``, one list per resolution bucket."""
    groups: dict[int, list[int]] = {}
    for i, bucket in enumerate(dataset.bucket_ids[:count].tolist()):
        groups.setdefault(bucket, []).append(i)
    return [[dataset_item(s) for s in dataset.__getitems__(idx)] for _, idx in sorted(groups.items())]


def limit_inputs(records: list[Any], cfg: DataConfig, max_inputs: int | None, model_type: str | None) -> list[Any]:
    """``records`` (``EditRecord`` s) with at most ``max_inputs`` input images each, by ``cfg.multi_input``.

    Raises:
        ValueError: with ``refuse``, some records have more input images (the message counts the records per number
            of inputs, names ``model.type`` and the fix); with ``skip``, every record has more.
    """
    if max_inputs is None:
        return records
    counts = Counter(len(r.inputs) for r in records)
    over = sum(n for inputs, n in counts.items() if inputs > max_inputs)
    if not over:
        return records
    per_record = ", ".join(f"{inputs} x {n}" for inputs, n in sorted(counts.items()))
    model = f"model.type={model_type}" if model_type else "the model"
    takes = "one input image" if max_inputs == 1 else f"{max_inputs} input images"
    kept = [r for r in records if len(r.inputs) <= max_inputs]
    if cfg.multi_input == "refuse" or not kept:
        fix = (
            f"set data.multi_input=skip to train on the {len(kept)} records with {takes} or fewer, or use a data set "
            "without reference images"
            if kept
            else "use a data set whose records have one input image"
        )
        raise ValueError(
            f"data.source={cfg.source}: {over} of {len(records)} records have reference images (input images per "
            f"record: {per_record}), but {model} takes {takes} per condition (the image to edit) and would not use "
            f"them; no model adapter takes several input images yet. To fix: {fix}"
        )
    logger.warning(
        "data.multi_input=skip: left out %d of %d records of %s that have reference images (%s takes %s)",
        over, len(records), cfg.source, model, takes,
    )  # fmt: skip
    return kept


def build_condition_source(
    cfg: DataConfig,
    seed: int,
    conditions_per_step: int,
    *,
    max_inputs: int | None = None,
    model_type: str | None = None,
) -> ConditionSource:
    """The source ``cfg`` names; ``conditions_per_step`` is ``P · W``; ``max_inputs`` and ``model_type`` as for
    :class:`DatasetSource` (the synthetic task has one input image)."""
    if cfg.is_synthetic:
        return SyntheticSource(cfg.synthetic_size, seed, conditions_per_step, cfg.held_out)
    return DatasetSource(cfg, seed, conditions_per_step, max_inputs=max_inputs, model_type=model_type)
