"""The sections of a training config: model, LoRA, sampler, optimiser, rewards, data, runtime, logging, profiling.

Each section is a small frozen dataclass whose ``__post_init__`` checks its own values; checks that relate two
sections live in :class:`fastgrpo.train.config.TrainConfig`. The SDE and GRPO sections are
:class:`fastgrpo.core.sde.SDEConfig` and :class:`fastgrpo.core.objective.GRPOConfig`. Registries (models, rewards,
data presets) are imported inside the checks that need them, so importing this module stays cheap.
"""

from fastgrpo.train.config.sections.evaluation import EvalConfig
from fastgrpo.train.config.sections.method import OptimConfig, RewardsConfig, SamplerConfig
from fastgrpo.train.config.sections.model import DTYPES, LoRAConfig, ModelConfig
from fastgrpo.train.config.sections.run import DataConfig, LoggingConfig, ProfileConfig, RuntimeConfig

__all__ = [
    "DTYPES",
    "DataConfig",
    "EvalConfig",
    "LoRAConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ProfileConfig",
    "RewardsConfig",
    "RuntimeConfig",
    "SamplerConfig",
]
