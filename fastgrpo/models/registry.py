"""Model types by name: ``load_model("flux_kontext", path, dtype=..., device=...)`` -> an EditModel.

Loaders are ``"module:function"`` strings imported on first use, so this module stays light (no diffusers import).
Built in: ``flux_kontext`` (:meth:`FluxKontextEditModel.from_pretrained`), ``qwen_image_edit``
(:meth:`QwenImageEditModel.from_pretrained`) and ``tiny`` (the built-in tiny editor; ``path`` is its weights
file, ``None`` for the packaged one).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastgrpo.models.base import EditModel

_LOADERS: dict[str, str | Callable[..., EditModel]] = {
    "flux_kontext": "fastgrpo.models.flux_kontext:FluxKontextEditModel.from_pretrained",
    "qwen_image_edit": "fastgrpo.models.qwen_image_edit:QwenImageEditModel.from_pretrained",
    "tiny": "fastgrpo.models.registry:_load_tiny",
}


def model_types() -> list[str]:
    """The known model type names, sorted."""
    return sorted(_LOADERS)


def register_model(model_type: str, loader: str | Callable[..., EditModel]) -> None:
    """Add a model type: ``loader(path, **kw) -> EditModel``, or its ``"module:qualified.name"``.

    Raises ``ValueError`` when the name is taken (pick another) or empty.
    """
    if not model_type or not isinstance(model_type, str):
        raise ValueError(f"model_type must be a non-empty string, got {model_type!r}")
    if model_type in _LOADERS:
        raise ValueError(f"model type {model_type!r} is already registered; pick another name")
    _LOADERS[model_type] = loader


def _resolve(spec: str | Callable[..., EditModel]) -> Callable[..., EditModel]:
    if callable(spec):
        return spec
    module_name, _, qualname = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _load_tiny(
    path: str | Path | None = None, *, size: int | None = None, attention_backend: str | None = None, **kwargs: Any
) -> EditModel:
    """The tiny editor from ``path``, or (``None``) its packaged weights for ``size``-pixel images (default 32);
    ``attention_backend`` as for the other models (None: PyTorch SDPA)."""
    from fastgrpo.models import tiny_editor

    weights = tiny_editor.packaged_weights(size or tiny_editor.TINY_SIZE) if path is None else path
    model = tiny_editor.build_tiny_editor(weights, **kwargs)
    if attention_backend is not None:
        from fastgrpo.models.checkpoints import set_attention_backend

        set_attention_backend(model.transformer, attention_backend)
    return model


def load_model(model_type: str, path: str | Path | None, **kwargs: Any) -> EditModel:
    """Load model ``model_type`` from ``path`` (checkpoint directory, hub id, or weights file).

    ``kwargs`` go to the loader (e.g. ``dtype``, ``device``, ``attention_backend``).

    Raises:
        ValueError: an unknown model type (listing the known ones), or whatever the loader refuses (a missing or
            wrong checkpoint directory, …).
    """
    if model_type not in _LOADERS:
        raise ValueError(f"unknown model type {model_type!r}; known model types: {', '.join(model_types())}")
    loader = _resolve(_LOADERS[model_type])
    if model_type != "tiny" and path is None:
        raise ValueError(f"model type {model_type!r} needs a checkpoint path or hub id; pass path=")
    return loader(path, **kwargs)
