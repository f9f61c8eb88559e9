"""The training config: typed sections, loaded from YAML with dotted command-line overrides, saved per run.

A config is built in three layers, later ones winning: the built-in demo defaults (the dataclass defaults, equal to
``configs/demo.yaml``), a YAML file (partial files are fine: missing keys keep their defaults), and ``key=value``
overrides such as ``sampler.group_size=16`` or ``profile.steps=10:12`` (values are YAML: ``null``, ``[a, b]``,
``1e-4``). Unknown keys are refused with the valid keys of their section and the closest match; bad values are
refused by the sections' checks, naming the dotted key and the fix.

Example::

    cfg = load_config("configs/flux_kontext.yaml", ["model.path=/ckpt/FLUX.1-Kontext-dev", "grpo.beta=0"])
    save_resolved_config(cfg, run_dir)  # run_dir/config.yaml; load_config(run_dir / "config.yaml") == cfg
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastgrpo.core.objective import GRPOConfig
from fastgrpo.core.sde import SDEConfig
from fastgrpo.train.config.sections import (
    DataConfig,
    EvalConfig,
    LoggingConfig,
    LoRAConfig,
    ModelConfig,
    OptimConfig,
    ProfileConfig,
    RewardsConfig,
    RuntimeConfig,
    SamplerConfig,
)
from fastgrpo.train.config.yaml_io import dump_yaml, parse_yaml, read_yaml_file

__all__ = [
    "CONFIG_FILENAME",
    "RESUMABLE_CHANGES",
    "TrainConfig",
    "apply_overrides",
    "config_differences",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_resolved_config",
]

CONFIG_FILENAME = "config.yaml"

#: settings a resumed run may change: its length, logging, and how (not what) it computes
RESUMABLE_CHANGES = (
    "runtime.max_steps", "logging.", "profile.", "runtime.device", "runtime.kernel_backend", "runtime.compile",
    "runtime.cuda_graphs", "model.attention_backend", "eval.patience", "eval.alarm_sigmas",
    "eval.stop_on_overoptimisation", "eval.report_conditions",
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; each section documents its own fields.

    Attributes:
        model: the editing model (:class:`ModelConfig`).
        lora: the trained adapter (:class:`LoRAConfig`).
        sampler: groups, prompts per step, step counts, SDE window (:class:`SamplerConfig`).
        sde: noise level, ``t_cap``, log-prob reduction (:class:`fastgrpo.core.sde.SDEConfig`).
        grpo: clip range, KL weight and form, advantage normalisation (:class:`fastgrpo.core.objective.GRPOConfig`).
        optim: AdamW and the update's shape (:class:`OptimConfig`).
        rewards: reward components and weights (:class:`RewardsConfig`).
        data: conditions, resolutions, held-out evaluation set (:class:`DataConfig`).
        runtime: device, seed, iterations, compile, CUDA graphs, distribution (:class:`RuntimeConfig`).
        logging: run directory and cadences (:class:`LoggingConfig`).
        profile: profiling window, NVTX, memory snapshot (:class:`ProfileConfig`).
        eval: the gold reward, best checkpoint, over-optimisation alarm, report (:class:`EvalConfig`).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            expected = _section_types()[f.name]
            if not isinstance(getattr(self, f.name), expected):
                raise ValueError(f"TrainConfig.{f.name} must be a {expected.__name__}: got {getattr(self, f.name)!r}")
        batch = self.sampler.prompts_per_step * self.sampler.group_size
        if batch % self.optim.grad_accum:
            raise ValueError(
                f"optim.grad_accum={self.optim.grad_accum} must divide sampler.prompts_per_step * "
                f"sampler.group_size = {batch} (a rank's samples per iteration); pick a divisor of {batch}"
            )
        window = self.profile.window
        if window is not None and window[1] > self.runtime.max_steps:
            raise ValueError(
                f"profile.steps={self.profile.steps} ends after runtime.max_steps={self.runtime.max_steps}; "
                "choose a window inside the run or raise runtime.max_steps"
            )
        if self.model.type == "tiny" and self.model.path is None and self.data.is_synthetic:
            from fastgrpo.models.tiny_editor import PACKAGED_WEIGHTS

            if self.data.synthetic_size not in PACKAGED_WEIGHTS:
                sizes = ", ".join(f"{s}x{s}" for s in sorted(PACKAGED_WEIGHTS))
                raise ValueError(
                    f"data.resolutions={list(self.data.resolutions)}: the packaged tiny editor has weights for "
                    f"{sizes}; pick one of those, or train weights for this size (`python -m "
                    f"fastgrpo.train.pretrain_tiny --size {self.data.synthetic_size} --out FILE`) and set "
                    "model.path=FILE"
                )
        gold = self.eval.gold
        rules = [f"rewards.components.{n}" for n, e in self.rewards.components.items() if e.get("type") == "rules"]
        rules += [f"eval.rewards.components.{n}" for n, e in (gold.components if gold else {}).items()
                  if e.get("type") == "rules"]  # fmt: skip
        if rules and not self.data.is_synthetic:
            raise ValueError(
                f"{rules[0]} (type rules) scores only the built-in synthetic task, but "
                f"data.source={self.data.source!r}: configure rewards for real edits instead, e.g. "
                "rewards.components='{clip: {type: clip, weight: 1.0, model: ViT-B-32, pretrained: FILE}}' or an "
                "mllm_judge component (both in configs/flux_kontext.yaml; or start from that --config)"
            )
        if self.logging.eval_every > 0 and self.data.held_out == 0:
            raise ValueError(
                "logging.eval_every > 0 evaluates held-out data: set data.held_out > 0 or logging.eval_every=0"
            )

    @property
    def rollout_seed(self) -> int:
        """Seed of the rollout noise: ``sampler.seed``, else ``runtime.seed``."""
        return self.sampler.seed if self.sampler.seed is not None else self.runtime.seed


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


# --- building typed sections from plain data --------------------------------------------------------------------


def _suggest(key: str, valid: Sequence[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return (
        f"did you mean '{prefix}.{close[0]}'? " if close and prefix else f"did you mean '{close[0]}'? " if close else ""
    )


def _unknown_key(prefix: str, key: str, valid: Sequence[str], origin: str) -> ValueError:
    dotted = f"{prefix}.{key}" if prefix else key
    where = f"the {prefix} section" if prefix else "the config"
    hint = _suggest(str(key), valid, prefix)
    return ValueError(f"unknown key '{dotted}' in {origin}; {hint}valid keys of {where}: {', '.join(valid)}")


def _is_mapping_type(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Mapping, dict) or annotation in (Mapping, dict)


_UnionType = type(int | None)


def _coerce(annotation: Any, value: Any) -> Any:
    """Lists to tuples for tuple fields, ints to floats for float fields; anything else unchanged."""
    is_union = typing.get_origin(annotation) in (typing.Union, _UnionType)
    options = [a for a in typing.get_args(annotation) if a is not type(None)] if is_union else [annotation]
    for option in options:
        if option is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if typing.get_origin(option) is tuple and isinstance(value, list | tuple):
            items = typing.get_args(option)
            item_type = items[0] if items else Any
            return tuple(_coerce(item_type, v) for v in value)
    return value


def _type_name(annotation: Any) -> str | None:
    """A readable expected type for a scalar field, or None when the section's own check decides."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = type(None) in typing.get_args(annotation)
    base = args[0] if optional and len(args) == 1 else annotation
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if base not in names:
        return None
    return names[base] + (" or null" if optional else "")


def _type_ok(annotation: Any, value: Any) -> bool:
    args = typing.get_args(annotation)
    if value is None:
        return type(None) in args
    base = next((a for a in args if a is not type(None)), annotation)
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def _build_section(cls: type, values: Mapping[str, Any], name: str) -> Any:
    """``cls(**values)`` with coerced values and a type check per scalar field (the section checks the rest)."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        annotation = hints[key]
        value = _coerce(annotation, value)
        expected = _type_name(annotation)
        if expected is not None and not _type_ok(annotation, value):
            f = defaults[key]
            example = f"; the default is {f.default!r}" if f.default is not dataclasses.MISSING else ""
            if expected.startswith("a string") and isinstance(value, int | float):
                example += f" (quote text that reads as a number or boolean: {name}.{key}='{value}')"
            raise ValueError(f"{name}.{key} must be {expected}{example}: got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any], origin: str = "the config") -> TrainConfig:
    """A :class:`TrainConfig` from nested plain data; missing sections and keys keep their defaults.

    Raises:
        ValueError: an unknown section or key (listing the valid ones, suggesting the closest), a section that is
            not a mapping, or a bad value (naming its dotted key and the fix). ``origin`` names the data's source.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{origin} must be a mapping of sections ({', '.join(_section_types())}): got {data!r}")
    sections = _section_types()
    built = {}
    for name, values in data.items():
        if name not in sections:
            raise _unknown_key("", name, list(sections), origin)
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise ValueError(f"'{name}' in {origin} must be a mapping of its keys: got {values!r}")
        valid = [f.name for f in dataclasses.fields(sections[name])]
        for key in values:
            if key not in valid:
                raise _unknown_key(name, key, valid, origin)
        built[name] = _build_section(sections[name], values, name)
    return TrainConfig(**built)


def config_to_dict(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """Plain nested data (dicts, lists, scalars) of ``cfg``, in field order; ``config_from_dict`` inverts it."""

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return {
        f.name: {g.name: plain(getattr(getattr(cfg, f.name), g.name)) for g in dataclasses.fields(getattr(cfg, f.name))}
        for f in dataclasses.fields(cfg)
    }


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"section.key: saved X, now Y"`` for every setting of ``current`` (plain data, :func:`config_to_dict`) that
    differs from ``saved`` and that a resumed run may not change (:data:`RESUMABLE_CHANGES` may)."""
    diffs = []
    for section, values in current.items():
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if any(dotted == c or (c.endswith(".") and dotted.startswith(c)) for c in RESUMABLE_CHANGES):
                continue
            old = saved.get(section, {}).get(key)
            if old != value:
                diffs.append(f"{dotted}: saved {old!r}, now {value!r}")
    return diffs


# --- overrides and loading -------------------------------------------------------------------------------------


def _assign(data: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    sections = _section_types()
    if parts[0] not in sections:
        raise _unknown_key("", parts[0], list(sections), f"override {text!r}")
    if len(parts) == 1:
        if not isinstance(value, Mapping):
            raise ValueError(f"override {text!r} sets a whole section: give a mapping, e.g. {parts[0]}={{key: value}}")
        for sub, sub_value in value.items():
            _assign(data, [parts[0], str(sub)], sub_value, text)
        return
    cls = sections[parts[0]]
    valid = [f.name for f in dataclasses.fields(cls)]
    if parts[1] not in valid:
        raise _unknown_key(parts[0], parts[1], valid, f"override {text!r}")
    section = data.setdefault(parts[0], {})
    if len(parts) == 2:
        section[parts[1]] = value
        return
    if not _is_mapping_type(typing.get_type_hints(cls)[parts[1]]):
        raise ValueError(f"override {text!r}: {parts[0]}.{parts[1]} is not a mapping; use {parts[0]}.{parts[1]}=VALUE")
    target = section.setdefault(parts[1], {})
    for i, part in enumerate(parts[2:-1], start=2):
        if not isinstance(target.setdefault(part, {}), dict):
            raise ValueError(f"override {text!r}: {'.'.join(parts[: i + 1])} is not a mapping")
        target = target[part]
    target[parts[-1]] = value


def _set_override(data: dict[str, Any], text: str) -> None:
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ValueError(f"override {text!r} must look like key=value, e.g. sampler.group_size=16 or grpo.beta=0")
    value = parse_yaml(raw, f"the value of override {text!r}") if raw.strip() else ""
    _assign(data, [p.strip() for p in parts], value, text)


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """``cfg`` with dotted ``key=value`` overrides applied (values parsed as YAML), validated again.

    Free-form mappings (``rewards.components``) may be entered deeper: ``rewards.components.clip.weight=0.5``.

    Raises:
        ValueError: an override without ``=``, an unknown key (with the closest valid one), bad YAML in a value,
            or a bad resulting value.
    """
    if isinstance(overrides, str):
        raise ValueError(f"overrides must be a list of key=value strings, got the string {overrides!r}")
    data = config_to_dict(cfg)
    for text in overrides:
        if not isinstance(text, str):
            raise ValueError(f"override {text!r} must be a string like key=value")
        _set_override(data, text)
    return config_from_dict(data, "the overrides")


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of YAML file ``path`` (None: the built-in demo) with ``overrides`` applied.

    Args:
        path: a YAML file whose top-level keys are sections (``model``, ``sampler``, …); missing sections and
            keys keep the demo defaults. None gives the demo (identical to ``configs/demo.yaml``).
        overrides: ``key=value`` strings, e.g. ``["sampler.group_size=16", "lora.target_modules=[to_q,to_k]"]``.

    Raises:
        ValueError: a missing file or bad YAML (file, line, column), an unknown key (valid keys, closest match),
            or a bad value (its dotted key and the fix).
    """
    cfg = TrainConfig()
    if path is not None:
        data = read_yaml_file(path)
        cfg = config_from_dict({} if data is None else data, f"config file {path}")
    return apply_overrides(cfg, overrides) if overrides else cfg


def save_resolved_config(cfg: TrainConfig, run_dir: str | Path) -> Path:
    """Write ``cfg`` to ``run_dir/config.yaml`` atomically (temporary file, fsync, rename); returns the path.

    ``load_config`` of the written file gives a config equal to ``cfg``. The run directory is created if needed;
    on any failure no temporary file is left behind and an existing ``config.yaml`` is untouched.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / CONFIG_FILENAME
    text = "# resolved fastgrpo training config of this run; reload it with load_config(path)\n"
    text += dump_yaml(config_to_dict(cfg))
    from fastgrpo.train.storage.files import atomic_write_bytes

    atomic_write_bytes(target, text.encode("utf-8"))
    return target
