"""``fastgrpo compare``: the base model vs LoRA directories on the same held-out conditions, written as a report.

See :func:`run_compare` and :mod:`fastgrpo.train.report`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastgrpo.models.base import EditModel
from fastgrpo.train.conditions import ConditionItem
from fastgrpo.train.report.comparison import Comparison, Variant, compare_variants
from fastgrpo.train.report.render import write_report

__all__ = ["run_compare"]


def _labels(paths: Sequence[str]) -> list[str]:
    """Short unique labels for LoRA directories: the last two parts of each path (more where two would clash)."""
    parts = [Path(p).resolve().parts[1:] for p in paths]  # without the root
    for k in range(2, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels) and "base" not in labels:
            return labels
    return ["/".join(p) for p in parts]


def _lora_shape(config: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """(rank, alpha, targets) from a LoRA file's adapter metadata, None without metadata."""
    if not config.get("r"):
        return None
    targets = config.get("target_modules") or ()
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
    return int(config["r"]), float(config.get("lora_alpha") or config["r"]), targets


def _check_loras(loras: Sequence[str]) -> None:
    """Every directory exists, holds a readable LoRA file, and all of them have one rank, alpha and targets."""
    from fastgrpo.models.lora import WEIGHT_NAME, read_lora

    if not loras:
        raise ValueError("no LoRA to compare: pass --lora DIR (RUN/lora, RUN/lora/best, RUN/checkpoints/step-N/lora)")
    if len(set(map(str, (Path(p).resolve() for p in loras)))) != len(loras):
        raise ValueError(f"a LoRA directory is given twice in {list(loras)}; pass each once")
    shapes = {}
    for path in loras:
        if not Path(path).is_dir():
            raise ValueError(
                f"--lora {path}: no such directory; pass a LoRA directory written by fastgrpo train (RUN/lora, "
                "RUN/lora/best or RUN/checkpoints/step-N/lora)"
            )
        if not (Path(path) / WEIGHT_NAME).is_file():
            raise ValueError(f"--lora {path}: no {WEIGHT_NAME} in it; pass the directory fastgrpo train wrote it to")
        _, config = read_lora(path)
        shapes[path] = _lora_shape(config)
    known = {p: s for p, s in shapes.items() if s is not None}
    if len(set(known.values())) > 1:
        described = "; ".join(f"{p}: rank {s[0]}, alpha {s[1]:g}, targets {list(s[2])}" for p, s in known.items())
        raise ValueError(
            f"the LoRAs differ in rank, alpha or target modules ({described}); one comparison loads them into one "
            "adapter: compare LoRAs of one shape per run (run fastgrpo compare once per shape)"
        )


def _conditions(cfg: Any, data: str | None, limit: int | None) -> list[list[ConditionItem]]:
    """The held-out conditions of ``cfg.data`` (or every record of ``data``), at most ``limit`` in all."""
    if data is not None:
        from fastgrpo.train.evaluate import data_set_conditions

        return [g for g in data_set_conditions(cfg, data, limit) if g]
    from fastgrpo.train.conditions import build_condition_source

    groups = build_condition_source(cfg.data, cfg.runtime.seed, 1).held_out()
    out, left = [], math.inf if limit is None else limit
    for group in groups:
        if left <= 0:
            break
        take = list(group[: int(min(left, len(group)))])
        if take:
            out.append(take)
        left -= len(take)
    return out


@contextlib.contextmanager
def _loaded(model: EditModel, path: str) -> Iterator[None]:
    """The LoRA at ``path`` loaded into the model's adapter (it stays loaded afterwards)."""
    model.load_lora(path)
    yield


def run_compare(
    cfg: Any,
    loras: Sequence[str],
    *,
    data: str | None = None,
    limit: int | None = None,
    out: str | Path = "compare",
    rows: int | None = None,
) -> tuple[Comparison, dict[str, Path]]:
    """``fastgrpo compare``: the base model vs each LoRA directory on the held-out set of ``cfg.data`` (or every
    record of ``data``), ODE with ``cfg.sampler.eval_steps`` and the seed ``cfg.runtime.seed`` (the noise of
    ``fastgrpo eval``), scored by the training reward (``"train"``) and the gold reward (``"gold"``, when
    ``eval.rewards`` is set); writes the report into ``out``; returns the comparison and the files written.

    The model is built once. Every LoRA is loaded once up front (so a LoRA that does not fit fails before any
    edit); the base variant is the model with the adapter disabled (``model.reference``), each LoRA variant loads
    its file into the same adapter. LoRAs of different rank, alpha or targets are refused (one adapter holds
    them); compare them in separate runs. ``rows``: conditions shown in ``report.png`` (default
    ``eval.report_conditions``; 0 writes no PNG).

    Raises:
        ValueError: a missing or unreadable LoRA directory, LoRAs of different shapes, a LoRA that does not fit
            the model, no conditions, a bad ``limit``/``rows``, or several ranks (run it without torchrun).
    """
    from fastgrpo.rewards.registry import build_reward
    from fastgrpo.train.model_setup import build_model
    from fastgrpo.train.parallel.distributed import init_distributed

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit must be an integer >= 1, got {limit!r}")
    rows = cfg.eval.report_conditions if rows is None else rows
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"--rows must be an integer >= 0 (0: no report.png), got {rows!r}")
    loras = [str(p) for p in loras]
    _check_loras(loras)
    groups = _conditions(cfg, data, limit)
    if not groups:
        raise ValueError("nothing to compare on: set data.held_out > 0 or pass --data")
    ctx = init_distributed(cfg.runtime.device, cfg.runtime.distributed_backend)
    try:
        if ctx.active:
            raise ValueError(f"fastgrpo compare runs in one process, not {ctx.world_size}; start it without torchrun")
        model = build_model(cfg, ctx.device)
        for path in loras:
            try:
                model.load_lora(path)
            except ValueError as error:
                raise ValueError(
                    f"--lora {path} does not fit this {cfg.model.type} model ({error}); pass a LoRA trained on it, "
                    "with the config it was trained with (--config RUN/config.yaml)"
                ) from None
        variants = [Variant("base", model.reference, f"base model {cfg.model.type} (LoRA adapters off)")]
        variants += [Variant(label, lambda p=path: _loaded(model, p), f"LoRA {path}")
                     for label, path in zip(_labels(loras), loras, strict=True)]  # fmt: skip
        s = cfg.sampler
        gold_cfg = cfg.eval.gold
        with build_reward(cfg.rewards.to_reward_mapping()) as reward:
            gold = build_reward(gold_cfg.to_reward_mapping()) if gold_cfg is not None else None
            try:
                comparison = compare_variants(
                    model, groups, {"train": reward, **({"gold": gold} if gold is not None else {})}, variants,
                    eval_steps=s.eval_steps, batch_size=s.rollout_batch or s.prompts_per_step * s.group_size,
                    seed=cfg.runtime.seed, rows=rows,
                )  # fmt: skip
            finally:
                if gold is not None:
                    gold.close()
    finally:
        ctx.close()
    return comparison, write_report(comparison, out)
