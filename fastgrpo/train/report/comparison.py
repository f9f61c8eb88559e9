"""Variants of one model edited on the same conditions, scored by every reward, and compared.

:func:`compare_variants` edits the conditions with every variant in turn and keeps the per-condition scores and the
edits of the first ``rows`` conditions; :class:`Comparison` answers the means and standard errors, the paired
differences to the baseline, ``report.json``'s content and ``report.md``'s text. See :mod:`fastgrpo.train.report`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from fastgrpo.models.base import EditModel
from fastgrpo.rewards.composite import CompositeReward
from fastgrpo.rewards.tally import RewardTally
from fastgrpo.train.conditions import ConditionItem, reward_batch
from fastgrpo.train.evaluate import edit_conditions
from fastgrpo.train.parallel.distributed import DistContext

__all__ = [
    "TOTAL",
    "Comparison",
    "ShownCondition",
    "Stat",
    "Variant",
    "compare_variants",
    "mean_se",
    "paired_difference",
]

TOTAL = "total"


class Variant(NamedTuple):
    """One variant of the model: ``label`` (unique, shown in every output), ``context`` (called with no argument,
    returns a context manager inside which the model computes this variant) and ``weights`` (what the weights are,
    in words; the label when empty)."""

    label: str
    context: Callable[[], AbstractContextManager[Any]]
    weights: str = ""


@dataclass(frozen=True)
class Stat:
    """A mean over conditions with its standard error and the number ``n`` of conditions it is over (NaN mean for
    ``n == 0``, NaN SE for ``n < 2``)."""

    mean: float
    se: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": _json_float(self.mean), "se": _json_float(self.se), "n": self.n}


def mean_se(values: Any) -> Stat:
    """Mean and standard error (population variance, ``std / sqrt(n)``) of the finite entries of ``values``."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Stat(math.nan, math.nan, 0)
    return Stat(float(x.mean()), float(x.std() / math.sqrt(n)) if n >= 2 else math.nan, n)


def paired_difference(values: Any, baseline: Any) -> Stat:
    """The paired difference ``values - baseline`` over the conditions where both are finite: its mean, standard
    error (``std`` of the per-condition differences ``/ sqrt(n)``) and ``n``. Both are ``[n]`` arrays in the same
    condition order; ``ValueError`` when their lengths differ."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    b = np.asarray(baseline, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must cover the same conditions: got {a.size} and {b.size} values")
    return mean_se(np.where(np.isfinite(a) & np.isfinite(b), a - b, math.nan))


@dataclass(eq=False)
class ShownCondition:
    """A condition shown in ``report.png``: its global ``index``, the condition and every variant's edit
    (label -> ``uint8 [H, W, 3]``)."""

    index: int
    item: ConditionItem
    edits: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(eq=False)
class Comparison:
    """The scores of every variant on the same conditions (see the module docstring).

    Attributes:
        variants: the variants in order; the first is the baseline of the differences.
        rewards: the reward names in order (e.g. ``["train", "gold"]``).
        names: reward -> its score names, ``"total"`` first, then the components and sub-terms sorted.
        scores: label -> reward -> name -> float64 ``[n]`` per-condition scores (NaN where not scored).
        ids: the ``n`` condition ids, in the order of the scores.
        shown: the first ``rows`` conditions with their edits.
        eval_steps, seed, batch_size: how the edits were made.
    """

    variants: list[Variant]
    rewards: list[str]
    names: dict[str, list[str]]
    scores: dict[str, dict[str, dict[str, np.ndarray]]]
    ids: list[str]
    shown: list[ShownCondition]
    eval_steps: int
    seed: int
    batch_size: int

    @property
    def labels(self) -> list[str]:
        return [v.label for v in self.variants]

    @property
    def baseline(self) -> str:
        """The first variant's label (the differences are to it)."""
        return self.variants[0].label

    @property
    def conditions(self) -> int:
        """The number of conditions every variant was scored on."""
        return len(self.ids)

    def stats(self) -> dict[str, dict[str, dict[str, Stat]]]:
        """label -> reward -> name -> mean and SE over the conditions."""
        return {
            label: {r: {name: mean_se(values) for name, values in by_name.items()} for r, by_name in by_reward.items()}
            for label, by_reward in self.scores.items()
        }

    def differences(self) -> dict[str, dict[str, dict[str, Stat]]]:
        """label -> reward -> name -> the paired difference to the baseline, for every variant but the first."""
        base = self.scores[self.baseline]
        return {
            label: {
                r: {name: paired_difference(values, base[r][name]) for name, values in by_name.items()}
                for r, by_name in self.scores[label].items()
            }
            for label in self.labels[1:]
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything ``report.json`` holds (JSON types; NaN as None)."""

        def nested(stats: Mapping[str, Mapping[str, Mapping[str, Stat]]]) -> dict[str, Any]:
            return {k: {r: {n: s.to_dict() for n, s in by.items()} for r, by in v.items()} for k, v in stats.items()}

        return {
            "conditions": self.conditions,
            "eval_steps": self.eval_steps,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "baseline": self.baseline,
            "variants": [{"label": v.label, "weights": v.weights or v.label} for v in self.variants],
            "rewards": {r: list(self.names[r]) for r in self.rewards},
            "stats": nested(self.stats()),
            "differences": nested(self.differences()),
            "shown": [s.item.id for s in self.shown],
            "per_condition": {
                "ids": list(self.ids),
                "scores": {
                    label: {
                        r: {name: [_json_float(v) for v in values.tolist()] for name, values in by_name.items()}
                        for r, by_name in by_reward.items()
                    }
                    for label, by_reward in self.scores.items()
                },
            },
        }

    def markdown(self) -> str:
        """``report.md``: a short header, the variants' weights, then one table per reward."""
        stats, diffs = self.stats(), self.differences()
        labels = self.labels
        lines = [
            f"# {' vs '.join(labels)}",
            "",
            f"{self.conditions} conditions, {self.eval_steps} ODE steps, seed {self.seed}. Mean ± standard error over "
            f"the conditions; the differences to {self.baseline} are paired (the same condition from the same noise).",
            "",
        ]
        lines += [f"- **{_md(v.label)}**: {_md(v.weights or v.label)}" for v in self.variants]
        for reward in self.rewards:
            header = ["component", *labels, *(f"{label} − {self.baseline}" for label in labels[1:])]
            lines += ["", f"## {reward} reward", "", _md_row(header), "|" + "---|" + "---:|" * (len(header) - 1)]
            for name in self.names[reward]:
                cells = [f"**{name}**" if name == TOTAL else name]
                cells += [_format_stat(stats[label][reward][name], self.conditions) for label in labels]
                cells += [_format_stat(diffs[label][reward][name], self.conditions, sign=True) for label in labels[1:]]
                lines.append(_md_row(cells))
        return "\n".join(lines) + "\n"


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_md(c) for c in cells) + " |"


def _format_stat(stat: Stat, conditions: int, *, sign: bool = False) -> str:
    if stat.n == 0:
        return "–"
    mean = f"{stat.mean:+.4f}" if sign else f"{stat.mean:.4f}"
    text = mean if math.isnan(stat.se) else f"{mean} ± {stat.se:.4f}"
    return text if stat.n == conditions else f"{text} (n={stat.n})"


def _variants(variants: Sequence[Variant | tuple[Any, ...]]) -> list[Variant]:
    out = []
    for i, v in enumerate(variants):
        if not isinstance(v, tuple) or len(v) not in (2, 3):
            raise ValueError(f"variants[{i}] must be (label, context) or (label, context, weights): got {v!r}")
        variant = Variant(*v)
        if not isinstance(variant.label, str) or not variant.label.strip() or not callable(variant.context):
            raise ValueError(
                f"variants[{i}]: the label must be a non-empty string and the context a callable that returns a "
                f"context manager (e.g. model.reference): got {v!r}"
            )
        out.append(variant)
    if not out:
        raise ValueError("no variants: pass at least one, e.g. [('base', model.reference), ('trained', ...)]")
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"variant labels must be unique: got {labels}")
    return out


def compare_variants(
    model: EditModel,
    groups: Sequence[Sequence[ConditionItem]],
    rewards: Mapping[str, CompositeReward],
    variants: Sequence[Variant | tuple[Any, ...]],
    *,
    eval_steps: int,
    batch_size: int,
    seed: int,
    rows: int = 8,
    dist: DistContext | None = None,
) -> Comparison:
    """Edit ``groups`` with every variant in turn (inside its context) and score the edits with every reward.

    Args:
        model: the model the variants' contexts act on.
        groups: the conditions, each list of one resolution (:meth:`ConditionSource.held_out`); condition ``i``
            (over the groups in order) starts from the noise of ``(seed, i)`` in every variant.
        rewards: reward name -> reward (e.g. ``{"train": ..., "gold": ...}``); the caller closes them.
        variants: ``(label, context[, weights])``, the baseline first (see :class:`Variant`).
        eval_steps: ODE steps; batch_size: conditions per forward; seed: the evaluation noise seed.
        rows: how many of the first conditions keep their edits (shown in ``report.png``), ``>= 0``.
        dist: None or a single-process context; several ranks are refused.

    Raises:
        ValueError: no conditions, no rewards, bad variants (not ``(label, callable)``, duplicate labels), a bad
            ``rows``, ``eval_steps`` or ``batch_size``, or several ranks. A reward's or a context's own error
            propagates unchanged.
    """
    if dist is not None and dist.active:
        raise ValueError(
            f"the base-vs-trained report runs in one process, but this run has {dist.world_size} ranks; write it "
            "from a single-process run or with `fastgrpo compare` (without torchrun)"
        )
    chosen = _variants(variants)
    if not rewards:
        raise ValueError("no rewards to score the variants with: pass e.g. {'train': reward}")
    for what, value, low in (("rows", rows, 0), ("eval_steps", eval_steps, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{what} must be an integer >= {low}: got {value!r}")
    items = [item for group in groups for item in group]
    if not items:
        raise ValueError("no conditions to compare the variants on: set data.held_out > 0 or pass a data set")
    n = len(items)
    shown = [ShownCondition(i, item) for i, item in enumerate(items[:rows])]
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for variant in chosen:
        tallies = {name: RewardTally() for name in rewards}
        order: list[int] = []
        with variant.context():
            for indices, batch_items, edited in edit_conditions(
                model, groups, eval_steps=eval_steps, batch_size=batch_size, seed=seed
            ):
                batch = reward_batch(batch_items, edited)
                for name, scorer in rewards.items():
                    tallies[name].add(scorer.evaluate(batch), len(batch_items))
                order.extend(indices)
                for j, i in enumerate(indices):
                    if i < rows:
                        shown[i].edits[variant.label] = np.array(edited[j], copy=True)
        scores[variant.label] = {}
        for reward_name, tally in tallies.items():
            by_name = {}
            for name in tally.names:
                values = np.full(n, math.nan)
                values[np.asarray(order, dtype=np.int64)] = tally.values(name).double().numpy()
                by_name[name] = values
            scores[variant.label][reward_name] = by_name
    names = {}
    for reward_name in rewards:
        seen = set().union(*(scores[v.label][reward_name] for v in chosen))
        names[reward_name] = [TOTAL, *sorted(seen - {TOTAL})]
        for v in chosen:  # a name one variant lacks (not expected for one reward config) is NaN for it
            for name in names[reward_name]:
                scores[v.label][reward_name].setdefault(name, np.full(n, math.nan))
            scores[v.label][reward_name] = {name: scores[v.label][reward_name][name] for name in names[reward_name]}
    return Comparison(
        variants=chosen, rewards=list(rewards), names=names, scores=scores, ids=[item.id for item in items],
        shown=shown, eval_steps=eval_steps, seed=seed, batch_size=batch_size,
    )  # fmt: skip
