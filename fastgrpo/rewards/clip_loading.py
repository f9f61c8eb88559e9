"""Loading an open_clip model for the CLIP reward, from local files only (no download, ever).

Where the weights come from (``model`` / ``pretrained`` of :class:`~fastgrpo.rewards.clip.ClipRewardConfig`):

- ``model="ViT-B-32", pretrained="/path/weights.safetensors"``: a built-in open_clip architecture and a checkpoint
  file (``.safetensors``, ``.bin``, ``.pt``, ``.pth``; a plain state dict or ``{"state_dict": ...}``).
- ``model="/path/arch.json", pretrained="/path/weights.pt"``: an architecture given as an open_clip model config
  file (``{"embed_dim", "vision_cfg", "text_cfg"}``, optionally under ``"model_cfg"`` with a ``"preprocess_cfg"``)
  and a checkpoint file.
- ``model="local-dir:/path/folder"``: a folder with ``open_clip_config.json`` and the weights (open_clip's layout).
- ``model="ViT-B-32", pretrained="openai"``: an open_clip pretrained tag whose weights are already in the cache
  (``cache_dir``, else the Hugging Face hub cache or ``~/.cache/clip``, where open_clip puts them). A tag that is
  not cached is a ``ValueError`` saying how to fetch it on a machine with network.

The model is put in eval mode with gradients off. Errors a user can cause are ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["LoadedClip", "load_clip", "resolve_cached_tag"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, eq=False)
class LoadedClip:
    """An open_clip model with what scoring needs: tokenizer, input size (pixels) and normalisation."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _pair(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


def _finish(model: torch.nn.Module, tokenizer: Any, preprocess: dict[str, Any] | None) -> LoadedClip:
    model.eval().requires_grad_(False)
    preprocess = preprocess or {}
    size = getattr(getattr(model, "visual", None), "image_size", None) or preprocess.get("size", 224)
    mean = tuple(preprocess.get("mean") or _OPENAI_MEAN)
    std = tuple(preprocess.get("std") or _OPENAI_STD)
    return LoadedClip(model, tokenizer, _pair(size), mean, std)  # type: ignore[arg-type]


def resolve_cached_tag(model: str, tag: str, cache_dir: str | None = None) -> Path:
    """The cached checkpoint file of open_clip pretrained ``tag`` for architecture ``model``; never downloads.

    Raises ``ValueError`` for an unknown tag (listing the known ones) or a tag that is not in the cache.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        tags = list_pretrained_tags_by_model(model)
        raise ValueError(f"{tag!r} is neither a file nor an open_clip pretrained tag of {model}; tags: {tags}")
    candidates: list[Path] = []
    if cfg.get("file"):
        candidates.append(Path(cfg["file"]))
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        hub = str(cfg["hf_hub"])
        if hub.endswith("/"):  # a repository id: open_clip's default file names
            repo, names = hub.rstrip("/"), ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        else:  # repository id + file name; open_clip prefers a .safetensors twin
            repo, filename = os.path.split(hub)
            names = [str(Path(filename).with_suffix(".safetensors")), filename]
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str):
                candidates.append(Path(found))
    if cfg.get("url"):
        candidates.append(Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(cfg["url"]))
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(
        f"open_clip weights {model}/{tag} are not in the local cache (looked at {[str(p) for p in candidates]}). "
        f"On a machine with network run: python -c \"import open_clip; open_clip.create_model('{model}', "
        f"pretrained='{tag}')\" and copy the cache over, or set pretrained to a checkpoint file. "
        f"(open_clip {open_clip.__version__} never downloads from here.)"
    )


def _load_config_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"CLIP model config {path} is not a readable JSON file: {error}") from None
    model_cfg = raw.get("model_cfg", raw) if isinstance(raw, dict) else None
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(model_cfg):
        raise ValueError(f"CLIP model config {path} needs embed_dim, vision_cfg and text_cfg (open_clip's layout)")
    return dict(model_cfg), dict(raw.get("preprocess_cfg", {}))


def _build_from_config(path: Path, checkpoint: Path) -> LoadedClip:
    import open_clip

    model_cfg, preprocess = _load_config_file(path)
    text_cfg = model_cfg.get("text_cfg", {})
    custom = model_cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    model = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**model_cfg)
    _load_weights(model, checkpoint, f"architecture {path}")
    context = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name"):
        tokenizer = open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context)
    else:
        tokenizer = open_clip.SimpleTokenizer(context_length=context)
    return _finish(model, tokenizer, preprocess)


def _load_weights(model: torch.nn.Module, checkpoint: Path, what: str) -> None:
    import open_clip

    if not checkpoint.is_file():
        raise ValueError(f"CLIP checkpoint {checkpoint} does not exist; set pretrained to a weights file")
    try:
        open_clip.load_checkpoint(model, str(checkpoint), strict=True)
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ValueError(f"CLIP checkpoint {checkpoint} does not fit {what}: {first}") from None


def _load_local_dir(spec: str) -> LoadedClip:
    import open_clip

    folder = Path(spec[len("local-dir:") :])
    weights = [p for p in sorted(folder.glob("*")) if p.suffix in _WEIGHT_SUFFIXES] if folder.is_dir() else []
    if not (folder / "open_clip_config.json").is_file() or not weights:
        raise ValueError(
            f"CLIP folder {folder} needs open_clip_config.json and a weights file ({', '.join(_WEIGHT_SUFFIXES)})"
        )
    try:
        model = open_clip.create_model(spec, load_weights=True)
    except (RuntimeError, KeyError, ValueError) as error:
        raise ValueError(f"CLIP folder {folder} could not be loaded: {str(error)[:300]}") from None
    return _finish(model, open_clip.get_tokenizer(spec), open_clip.get_model_preprocess_cfg(model))


def load_clip(model: str, pretrained: str | None, cache_dir: str | None = None) -> LoadedClip:
    """Load an open_clip model from local files (see the module docstring for the accepted forms)."""
    import open_clip

    if model.startswith("local-dir:"):
        return _load_local_dir(model)
    if model.endswith(".json"):
        if not pretrained:
            raise ValueError(f"CLIP model {model} is an architecture file; set pretrained to its weights file")
        return _build_from_config(Path(model), Path(pretrained))
    if model not in open_clip.list_models():
        raise ValueError(
            f"CLIP model {model!r} is not an open_clip architecture, a .json model config or local-dir:PATH; "
            f"architectures include {open_clip.list_models()[:8]}..."
        )
    if not pretrained:
        raise ValueError(
            f"CLIP model {model} has no weights: set pretrained to a checkpoint file or a cached pretrained tag "
            f"(e.g. {open_clip.list_pretrained_tags_by_model(model)[:3]}); a random CLIP is no reward"
        )
    tag_cfg: dict[str, Any] = {}
    if Path(pretrained).suffix in _WEIGHT_SUFFIXES or os.sep in pretrained:
        checkpoint = Path(pretrained)
    else:
        from open_clip.pretrained import get_pretrained_cfg

        checkpoint = resolve_cached_tag(model, pretrained, cache_dir)
        tag_cfg = get_pretrained_cfg(model, pretrained)
    built = open_clip.create_model(model, pretrained=None, force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)))
    _load_weights(built, checkpoint, f"open_clip architecture {model}")
    preprocess = dict(open_clip.get_model_preprocess_cfg(built))
    preprocess.update({k: tag_cfg[k] for k in ("mean", "std") if k in tag_cfg})
    return _finish(built, open_clip.get_tokenizer(model), preprocess)
