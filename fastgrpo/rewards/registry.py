"""Building rewards from config by name: ``build_reward(config) -> CompositeReward``.

A reward config (YAML) names each component, its type, its weight and the type's options::

    rewards:
      device: cpu
      components:
        judge: {type: mllm_judge, weight: 1.0, endpoints: [{base_url: "http://127.0.0.1:8000/v1",
                                                            model: Qwen/Qwen2.5-VL-7B-Instruct}]}
        clip:  {type: clip, weight: 0.5, model: ViT-B-32, pretrained: /models/clip-vit-b-32.safetensors}

Types: ``mllm_judge`` (:class:`~fastgrpo.rewards.judge.JudgeConfig` options), ``clip``
(:class:`~fastgrpo.rewards.clip.ClipRewardConfig`), ``rules`` (:class:`~fastgrpo.rewards.rules.RuleRewardConfig`),
``saturation`` (:class:`~fastgrpo.rewards.saturation.SaturationReward`, deliberately hackable); more with
:func:`register_reward`. Unknown types or options are a ``ValueError`` listing the valid ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastgrpo.rewards.base import RewardFunction
from fastgrpo.rewards.composite import CompositeReward

__all__ = ["RewardComponentConfig", "RewardConfig", "build_component", "build_reward", "register_reward"]

Factory = Callable[[Mapping[str, Any]], RewardFunction]


def _judge(options: Mapping[str, Any]) -> RewardFunction:
    from fastgrpo.rewards.judge import JudgeConfig, MLLMJudge

    return MLLMJudge(JudgeConfig.from_mapping(options, "mllm_judge"))


def _clip(options: Mapping[str, Any]) -> RewardFunction:
    from fastgrpo.rewards.clip import ClipReward, ClipRewardConfig

    return ClipReward(ClipRewardConfig.from_mapping(options, "clip"))


def _rules(options: Mapping[str, Any]) -> RewardFunction:
    from fastgrpo.rewards.rules import RuleReward, RuleRewardConfig

    return RuleReward(RuleRewardConfig.from_mapping(options, "rules"))


def _saturation(options: Mapping[str, Any]) -> RewardFunction:
    from fastgrpo.rewards.saturation import SaturationReward, SaturationRewardConfig

    return SaturationReward(SaturationRewardConfig.from_mapping(options, "saturation"))


_FACTORIES: dict[str, Factory] = {"mllm_judge": _judge, "clip": _clip, "rules": _rules, "saturation": _saturation}


def register_reward(type_name: str, factory: Factory) -> None:
    """Make ``type_name`` buildable from config: ``factory(options) -> RewardFunction``."""
    if not isinstance(type_name, str) or not type_name or type_name in _FACTORIES:
        raise ValueError(f"reward type {type_name!r} is empty or already registered ({sorted(_FACTORIES)})")
    _FACTORIES[type_name] = factory


@dataclass(frozen=True)
class RewardComponentConfig:
    """One component: ``type`` (a registered name), ``weight`` in the total, and the type's ``options``."""

    type: str
    weight: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in _FACTORIES:
            raise ValueError(f"reward type {self.type!r} is unknown; use one of {sorted(_FACTORIES)}")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"reward weight must be a finite number, got {weight!r}")


@dataclass(frozen=True)
class RewardConfig:
    """Named components (``name → RewardComponentConfig``) and the ``device`` of the returned tensors."""

    components: Mapping[str, RewardComponentConfig]
    device: str = "cpu"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> RewardConfig:
        """From ``{"components": {name: {"type", "weight", **options}}, "device": ...}``."""
        if not isinstance(mapping, Mapping) or not isinstance(mapping.get("components"), Mapping):
            raise ValueError("reward config must be a mapping with 'components': {name: {type, weight, ...}}")
        unknown = sorted(set(mapping) - {"components", "device"})
        if unknown:
            raise ValueError(f"reward config has unknown keys {unknown}; valid keys are ['components', 'device']")
        components = {}
        for name, entry in mapping["components"].items():
            if isinstance(entry, RewardComponentConfig):
                components[name] = entry
                continue
            if not isinstance(entry, Mapping) or "type" not in entry:
                raise ValueError(f"reward component {name!r} must be a mapping with a 'type' ({sorted(_FACTORIES)})")
            options = {k: v for k, v in entry.items() if k not in ("type", "weight")}
            components[name] = RewardComponentConfig(entry["type"], entry.get("weight", 1.0), options)
        return cls(components=components, device=str(mapping.get("device", "cpu")))


def build_component(type_name: str, options: Mapping[str, Any] | None = None) -> RewardFunction:
    """The component of registered type ``type_name`` built from its options."""
    if type_name not in _FACTORIES:
        raise ValueError(f"reward type {type_name!r} is unknown; use one of {sorted(_FACTORIES)}")
    return _FACTORIES[type_name](dict(options or {}))


def build_reward(config: RewardConfig | Mapping[str, Any]) -> CompositeReward:
    """A :class:`CompositeReward` from a :class:`RewardConfig` or its mapping form."""
    if not isinstance(config, RewardConfig):
        config = RewardConfig.from_mapping(config)
    built: dict[str, RewardFunction] = {}
    try:
        for name, entry in config.components.items():
            built[name] = build_component(entry.type, entry.options)
        return CompositeReward(built, {n: e.weight for n, e in config.components.items()}, device=config.device)
    except BaseException:
        for component in built.values():
            component.close()
        raise
