"""Checkpoint resolution and attention-backend selection shared by the diffusers-based adapters.

:func:`resolve_checkpoint` turns a user's ``path_or_hub_id`` into something diffusers' ``from_pretrained`` can load,
failing early with one clear message for a missing, incomplete or wrong-model directory. :func:`set_attention_backend`
selects diffusers' attention dispatch backend (``"native"``, ``"flash"``, ``"_flash_3"``, ``"xformers"``,
``"sage"``, …) and names the package to install when the backend cannot be used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_BACKEND_PACKAGES = {
    "flash": "flash-attn (pip install flash-attn)",
    "flash_varlen": "flash-attn (pip install flash-attn)",
    "_flash_3": "flash-attn 3 (the hopper/ build of the flash-attention repository)",
    "_flash_varlen_3": "flash-attn 3 (the hopper/ build of the flash-attention repository)",
    "xformers": "xformers (pip install xformers)",
    "sage": "sageattention (pip install sageattention)",
    "sage_varlen": "sageattention (pip install sageattention)",
}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}  # fmt: skip


def resolve_checkpoint(
    path_or_hub_id: str | Path,
    *,
    pipeline_classes: Sequence[str],
    required: Sequence[str],
    description: str,
    example_hub_id: str,
) -> str:
    """Check a local checkpoint directory (or pass a hub id through) before any weights are loaded.

    Args:
        path_or_hub_id: a local directory laid out like ``pipeline.save_pretrained`` writes it, or a hub id
            ``"org/name"`` (passed through unchanged when no such local path exists).
        pipeline_classes: accepted ``_class_name`` values of ``model_index.json``.
        required: files that must exist under the directory (e.g. ``"transformer/config.json"``).
        description: the model family for messages (``"FLUX.1 Kontext"``).
        example_hub_id: a hub id for messages.

    Returns:
        The directory as a string, or the hub id.

    Raises:
        ValueError: a path that does not exist and is not a hub id, a directory without ``model_index.json`` or
            one of ``required``, or a ``model_index.json`` of another pipeline class.
    """
    text = str(path_or_hub_id)
    path = Path(text).expanduser()
    if not path.exists() and _HUB_ID.match(text) and not text.startswith((".", "~")):
        return text
    fix = (f"pass a {description} checkpoint directory (as written by {pipeline_classes[0]}.save_pretrained) or a "
           f"hub id such as {example_hub_id}")  # fmt: skip
    if not path.is_dir():
        raise ValueError(f"{text} is not a directory: {fix}")
    missing = [name for name in ("model_index.json", *required) if not (path / name).is_file()]
    if missing:
        raise ValueError(f"no {' / '.join(missing)} under {text}: {fix}")
    class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    if class_name not in pipeline_classes:
        raise ValueError(
            f"{text} holds a {class_name} checkpoint, not {' / '.join(pipeline_classes)}: pass a {description} "
            f"checkpoint (e.g. {example_hub_id}) or pick the model_type that matches {class_name}"
        )
    return str(path)


def has_component(checkpoint: str, name: str) -> bool:
    """Whether a local checkpoint lists component ``name`` in ``model_index.json`` (hub ids: assumed True)."""
    index = Path(checkpoint) / "model_index.json"
    if not index.is_file():
        return True
    entry = json.loads(index.read_text()).get(name)
    return isinstance(entry, list) and entry[0] is not None and (Path(checkpoint) / name).is_dir()


def load_component(cls: Any, checkpoint: str, subfolder: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(checkpoint, subfolder=...)`` with download/parse failures turned into ValueError."""
    try:
        return cls.from_pretrained(checkpoint, subfolder=subfolder, **kwargs)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"could not load {cls.__name__} from {checkpoint}/{subfolder}: {error}; check the path or hub id, the "
            "network and your Hugging Face token, or pass a complete local checkpoint directory"
        ) from error


def load_scheduler_config(checkpoint: str) -> dict[str, Any]:
    """The ``scheduler/scheduler_config.json`` of a checkpoint as a plain dict (ValueError when unreadable)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    try:
        return dict(FlowMatchEulerDiscreteScheduler.load_config(checkpoint, subfolder="scheduler"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"could not read the scheduler config of {checkpoint}: {error}; pass a complete checkpoint directory"
        ) from error


def torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.bfloat16`` or a name (``"bf16"``, ``"bfloat16"``, ``"fp16"``, ``"float32"``, …) -> a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype such as torch.bfloat16, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)} or a torch floating dtype")


def set_attention_backend(transformer: torch.nn.Module, backend: str | None) -> None:
    """Select diffusers' attention backend ``backend`` for every attention layer of ``transformer``.

    ``None`` keeps the default (PyTorch ``scaled_dot_product_attention``). Raises ``ValueError`` when this diffusers
    has no attention dispatch (``set_attention_backend`` missing: diffusers < 0.35), when the name is unknown
    (listing the known ones) or when the backend's package is missing (naming it: flash-attn, xformers, …).
    """
    if backend is None:
        return
    setter = getattr(transformer, "set_attention_backend", None)
    if setter is None:
        import diffusers

        raise ValueError(
            f"attention_backend={backend!r} needs diffusers' attention dispatch, which diffusers "
            f"{diffusers.__version__} lacks; upgrade diffusers (>= 0.35) or pass attention_backend=None"
        )
    try:
        setter(backend)
    except (RuntimeError, ImportError) as error:
        package = _BACKEND_PACKAGES.get(backend.lower(), "the package this backend needs")
        raise ValueError(
            f"attention backend {backend!r} is not usable here ({error}); install {package}, or pass "
            "attention_backend=None (PyTorch SDPA) or 'native'"
        ) from error
    except ValueError as error:
        raise ValueError(f"unknown attention backend {backend!r}: {error}") from error
