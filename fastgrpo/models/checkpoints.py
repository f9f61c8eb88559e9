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
#: the backends ``fastgrpo env`` reports (any other diffusers backend name is accepted too)
COMMON_BACKENDS = ("native", "flex", "flash", "_flash_3", "xformers", "sage")
# need CUDA tensors whatever is installed (the PyTorch SDPA ones and flex also run on the CPU)
_CUDA_ONLY = ("flash", "flash_varlen", "_flash_3", "_flash_varlen_3", "sage", "sage_varlen")
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


def _backend_package(name: str) -> str:
    if name.endswith("_hub"):
        return "kernels (pip install kernels), which downloads the kernel from the Hugging Face Hub"
    return _BACKEND_PACKAGES.get(name, "the package this backend needs")


def _missing_requirement(name: str) -> str | None:
    """diffusers' reason why backend ``name`` (a known lower-case name) cannot be used here, or None."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except (RuntimeError, ImportError) as error:
        return str(error)
    return None


def check_attention_backend(backend: str | None, device: torch.device | str | None = None) -> None:
    """Refuse an attention backend that cannot run here, before any weights are loaded.

    ``None`` (PyTorch SDPA) always passes. Raises ``ValueError`` for a name diffusers does not know (listing the
    known ones), for a backend whose package is missing or too old (naming it: ``pip install flash-attn``,
    ``pip install xformers``, ...), and for a CUDA-only backend (``flash``, ``_flash_3``, ``sage``) asked for on
    a CPU ``device``. Without diffusers' attention dispatch (diffusers < 0.35) it checks nothing;
    :func:`set_attention_backend` reports that case.
    """
    if backend is None:
        return
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"attention backend must be a name such as 'native' or 'flash', or None: got {backend!r}")
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName
    except ImportError:
        return
    name = backend.lower()
    known = sorted(b.value for b in AttentionBackendName)
    if name not in known:
        raise ValueError(
            f"unknown attention backend {backend!r}: use one of {', '.join(known)}, or None for PyTorch SDPA"
        )
    reason = _missing_requirement(name)
    if reason is not None:
        raise ValueError(
            f"attention backend {backend!r} is not usable here ({reason}); install {_backend_package(name)}, or "
            "pass attention_backend=None (PyTorch SDPA) or 'native'"
        )
    if device is not None and torch.device(device).type != "cuda" and name in _CUDA_ONLY:
        raise ValueError(
            f"attention backend {backend!r} needs a CUDA device but the model is on {device}; use "
            "attention_backend=None (PyTorch SDPA, runs on the CPU) or 'native', or load the model on CUDA"
        )


def attention_backends(names: Sequence[str] = COMMON_BACKENDS) -> dict[str, str | None]:
    """``{name: None}`` for each usable backend of ``names``, ``{name: "install <package>"}`` for the others.

    Checks the installed packages only, not the device (``flash`` counts as usable wherever flash-attn is
    installed). Empty when this diffusers has no attention dispatch (< 0.35).
    """
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName
    except ImportError:
        return {}
    known = {b.value for b in AttentionBackendName}
    result: dict[str, str | None] = {}
    for name in names:
        if name in known:
            missing = _missing_requirement(name)
            result[name] = None if missing is None else f"install {_backend_package(name)}"
    return result


def set_attention_backend(transformer: torch.nn.Module, backend: str | None) -> None:
    """Select diffusers' attention backend ``backend`` for every attention layer of ``transformer``.

    ``None`` keeps the default (PyTorch ``scaled_dot_product_attention``); ``"native"`` selects it explicitly and
    runs on the CPU too. Raises ``ValueError`` when this diffusers has no attention dispatch
    (``set_attention_backend`` missing: diffusers < 0.35), and for everything :func:`check_attention_backend`
    refuses (an unknown name, a missing package — naming it —, a CUDA-only backend on the CPU).
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
    param = next(transformer.parameters(), None)
    check_attention_backend(backend, param.device if param is not None else None)
    try:
        setter(backend)
    except (RuntimeError, ImportError, ValueError) as error:
        raise ValueError(
            f"attention backend {backend!r} could not be set on {type(transformer).__name__}: {error}; install "
            f"{_backend_package(backend.lower())}, or pass attention_backend=None (PyTorch SDPA) or 'native'"
        ) from error
