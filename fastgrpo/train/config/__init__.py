"""The training config: typed sections, loaded from YAML with dotted command-line overrides, saved per run.

- :mod:`~fastgrpo.train.config.loading`: :class:`TrainConfig` and loading (YAML file + ``key=value`` overrides);
- :mod:`~fastgrpo.train.config.sections`: the sections (model, LoRA, sampler, optimiser, rewards, data, ...);
- :mod:`~fastgrpo.train.config.checks`: the value checks every section shares;
- :mod:`~fastgrpo.train.config.yaml_io`: YAML 1.2 numbers on PyYAML's safe loader.
"""

from fastgrpo.train.config import loading
from fastgrpo.train.config.loading import *  # noqa: F403  (the public names of loading.py, listed there once)

__all__ = list(loading.__all__)
