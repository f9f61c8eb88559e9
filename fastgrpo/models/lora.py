"""LoRA on the denoising transformer (SPEC S4): attach with peft, train only the adapters, save and load them in the
diffusers LoRA format.

- :func:`attach_lora` freezes the transformer and injects LoRA layers (``transformer.add_adapter``); only the
  ``lora_A`` / ``lora_B`` weights require grad.
- :func:`disabled` is the reference policy: the same module with the adapters switched off (no second copy).
- :func:`save_lora` writes ``pytorch_lora_weights.safetensors`` through the stock pipeline class's
  ``save_lora_weights``: keys ``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` and the adapter's
  ``LoraConfig`` (rank, alpha, targets) as ``lora_adapter_metadata``, so ``pipeline.load_lora_weights(dir)``
  rebuilds exactly the trained adapter.
- :func:`load_lora` copies such a file into the attached adapter in place (resume; optimiser state stays valid).

Default target modules (suffixes of module names, peft's ``target_modules`` matching):

- FLUX.1 Kontext (:data:`FLUX_TARGET_MODULES`): in the joint (double-stream) blocks the image-stream attention
  projections ``attn.to_q/to_k/to_v/to_out.0``, the text-stream ones ``attn.add_q_proj/add_k_proj/add_v_proj``
  and ``attn.to_add_out``, and both feed-forwards ``ff.net.0.proj``, ``ff.net.2``, ``ff_context.net.0.proj``,
  ``ff_context.net.2``; the ``attn.to_q/to_k/to_v`` patterns also match the single-stream blocks' attention.
- Qwen-Image-Edit (:data:`QWEN_TARGET_MODULES`): the same attention projections, and the image and text MLPs
  ``img_mlp.net.0.proj``, ``img_mlp.net.2``, ``txt_mlp.net.0.proj``, ``txt_mlp.net.2``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "default"
_PREFIX = "transformer."
_METADATA_KEY = "lora_adapter_metadata"

_ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
              "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")  # fmt: skip
FLUX_TARGET_MODULES: tuple[str, ...] = (
    *_ATTENTION, "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)  # fmt: skip
QWEN_TARGET_MODULES: tuple[str, ...] = (
    *_ATTENTION, "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)  # fmt: skip


def has_lora(transformer: nn.Module) -> bool:
    """Whether an adapter named :data:`ADAPTER_NAME` is attached."""
    return ADAPTER_NAME in (getattr(transformer, "peft_config", None) or {})


def lora_parameters(transformer: nn.Module) -> list[nn.Parameter]:
    """The attached adapter's ``lora_A`` / ``lora_B`` weights, in module order (empty when none is attached)."""
    marker = f".{ADAPTER_NAME}."
    return [p for n, p in transformer.named_parameters() if ".lora_" in n and marker in n]


def attach_lora(
    transformer: nn.Module,
    *,
    rank: int,
    alpha: float,
    target_modules: Sequence[str],
    init_lora_weights: bool | str = True,
    dtype: torch.dtype | None = None,
) -> list[nn.Parameter]:
    """Freeze ``transformer`` and attach one LoRA adapter; return its trainable parameters.

    Args:
        transformer: a diffusers transformer (``PeftAdapterMixin``: has ``add_adapter``).
        rank: ``r ≥ 1``; alpha: ``lora_alpha > 0`` (the update is scaled by ``alpha / rank``).
        target_modules: module-name suffixes (see the module docstring for the defaults per model).
        init_lora_weights: peft's initialisation; ``True`` (default) makes ``lora_B`` zero, so the adapted model
            starts equal to the base model; ``"gaussian"`` or ``False`` are also accepted.
        dtype: dtype of the LoRA weights (e.g. ``torch.float32`` on a bf16 model, for stable optimiser updates);
            default: the base layers' dtype.

    Returns:
        The ``lora_A`` / ``lora_B`` parameters, the only ones with ``requires_grad``.

    Raises:
        ValueError: bad rank/alpha, an adapter already attached, or targets that match no module.
    """
    from peft import LoraConfig

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer ≥ 1, got {rank!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"LoRA alpha must be a number > 0, got {alpha!r}")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not targets:
        raise ValueError("target_modules is empty; pass module-name suffixes such as ['attn.to_q', 'attn.to_v']")
    if has_lora(transformer):
        raise ValueError("a LoRA adapter is already attached; attach once, or load_lora() to replace its weights")
    # peft matches a list entry to a module name that equals it or ends with "." + it; checked here because a
    # failed add_adapter leaves diffusers' model half-configured
    names = [name for name, _ in transformer.named_modules()]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if len(unmatched) == len(targets):
        raise ValueError(
            f"LoRA target_modules {targets} match no layer of {type(transformer).__name__}; use suffixes of its "
            "module names (e.g. 'attn.to_q'), or None for the model's defaults"
        )
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=init_lora_weights)
    transformer.requires_grad_(False)
    transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    params = lora_parameters(transformer)
    for p in params:
        if dtype is not None:
            p.data = p.data.to(dtype)
        p.requires_grad_(True)
    return params


@contextlib.contextmanager
def disabled(transformer: nn.Module) -> Iterator[None]:
    """Context in which the adapters are off: the transformer computes the base (reference) model exactly.

    Nothing is copied. ``requires_grad`` of the LoRA weights is restored on exit (peft's toggle changes it).
    Without an attached adapter this is a no-op.
    """
    if not has_lora(transformer):
        yield
        return
    flags = [(p, p.requires_grad) for p in lora_parameters(transformer)]
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()
        for p, flag in flags:
            p.requires_grad_(flag)


def lora_state_dict(transformer: nn.Module) -> dict[str, Tensor]:
    """The adapter's weights under diffusers/peft names without prefix: ``<module>.lora_A.weight`` -> tensor."""
    if not has_lora(transformer):
        raise ValueError("no LoRA adapter is attached; call add_lora() first")
    marker = f".{ADAPTER_NAME}."
    return {n.replace(marker, "."): p.detach() for n, p in transformer.named_parameters()
            if ".lora_" in n and marker in n}  # fmt: skip


def _adapter_metadata(transformer: nn.Module) -> dict[str, Any]:
    config = transformer.peft_config[ADAPTER_NAME].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def save_lora(
    transformer: nn.Module, directory: str | Path, pipeline_class: Any, weights: Mapping[str, Tensor] | None = None
) -> Path:
    """Write the adapter as ``directory/pytorch_lora_weights.safetensors`` in the diffusers LoRA format.

    Args:
        transformer: the model with an attached adapter.
        directory: created if missing; an existing weights file is replaced.
        pipeline_class: the stock pipeline class whose ``save_lora_weights`` writes the file
            (``FluxKontextPipeline``, ``QwenImageEditPipeline``).
        weights: the tensors to write instead of the live ones, named as :func:`lora_state_dict` names them
            (e.g. whole tensors gathered from FSDP shards); ``ValueError`` when the names differ.

    Returns:
        The path of the weights file.
    """
    live = lora_state_dict(transformer)
    if weights is not None and set(weights) != set(live):
        raise ValueError(f"LoRA weights to write do not fit the adapter (e.g. {sorted(set(live) ^ set(weights))[:3]})")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in (live if weights is None else weights).items()}
    pipeline_class.save_lora_weights(
        save_directory=str(directory),
        transformer_lora_layers=state,
        weight_name=WEIGHT_NAME,
        transformer_lora_adapter_metadata=_adapter_metadata(transformer),
    )
    return directory / WEIGHT_NAME


def read_lora(directory: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(weights without the "transformer." prefix, adapter config dict)`` of a file written by :func:`save_lora`.

    Raises ``ValueError`` for a missing file or one without transformer LoRA weights.
    """
    from safetensors import safe_open

    path = Path(directory)
    path = path if path.is_file() else path / WEIGHT_NAME
    if not path.is_file():
        raise ValueError(f"no {WEIGHT_NAME} under {directory}; pass the directory that save_lora() wrote")
    from safetensors import SafetensorError

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = [k for k in handle.keys() if k.startswith(_PREFIX)]  # noqa: SIM118 (safe_open is not a dict)
            weights = {k[len(_PREFIX) :]: handle.get_tensor(k) for k in names}
    except SafetensorError as error:  # never a pickle fallback: a file that is not safetensors is refused
        raise ValueError(f"{path} is not a readable safetensors LoRA file ({error}); pass an intact LoRA") from None
    if not weights:
        raise ValueError(f"{path} holds no 'transformer.' LoRA weights; it is not a transformer LoRA of this format")
    packed = json.loads(metadata.get(_METADATA_KEY, "{}"))
    config = {k[len(_PREFIX) :]: v for k, v in packed.items() if k.startswith(_PREFIX)}
    return weights, config


def load_lora(transformer: nn.Module, directory: str | Path) -> None:
    """Copy the weights saved by :func:`save_lora` into the attached adapter, in place and bit-exactly.

    When no adapter is attached yet, one is attached first from the file's metadata (rank, alpha, targets).
    Raises ``ValueError`` when the file's tensors do not match the attached adapter (names or shapes: a different
    rank or different target modules), naming a few of the differences.
    """
    weights, config = read_lora(directory)
    if not has_lora(transformer):
        if not config.get("r") or not config.get("target_modules"):
            raise ValueError(f"{directory} has no adapter metadata (rank/targets); attach with add_lora() first")
        attach_lora(transformer, rank=int(config["r"]), alpha=config.get("lora_alpha", config["r"]),
                    target_modules=config["target_modules"])  # fmt: skip
    attached = transformer.peft_config[ADAPTER_NAME]
    if config.get("lora_alpha") is not None and float(config["lora_alpha"]) / int(config["r"]) != float(
        attached.lora_alpha
    ) / int(attached.r):
        raise ValueError(
            f"LoRA file {directory} was saved with alpha/rank {config['lora_alpha']}/{config['r']} but the attached "
            f"adapter has {attached.lora_alpha}/{attached.r}; attach with the alpha and rank it was saved with"
        )
    marker = f".{ADAPTER_NAME}."
    params = {n.replace(marker, "."): p for n, p in transformer.named_parameters() if ".lora_" in n and marker in n}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    wrong = sorted(k for k in set(params) & set(weights) if params[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"LoRA file {directory} does not fit the attached adapter (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shapes {wrong[:3]}); attach with the rank and target modules it was saved "
            "with"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])


class LoRAAdapterMixin:
    """``add_lora`` / ``reference`` / ``save_lora`` / ``load_lora`` of :class:`~fastgrpo.models.base.EditModel` for
    diffusers transformers. A subclass provides ``transformer``, ``default_target_modules`` and
    ``lora_pipeline_class()`` (the stock pipeline class that writes the diffusers LoRA file)."""

    default_target_modules: tuple[str, ...] = ()
    transformer: nn.Module

    def lora_pipeline_class(self) -> Any:
        raise NotImplementedError

    def add_lora(
        self,
        rank: int,
        alpha: float,
        target_modules: Sequence[str] | None = None,
        *,
        init_lora_weights: bool | str = True,
        dtype: torch.dtype | None = None,
    ) -> list[nn.Parameter]:
        """Attach LoRA (``target_modules=None``: :attr:`default_target_modules`); see :func:`attach_lora`."""
        targets = self.default_target_modules if target_modules is None else target_modules
        return attach_lora(self.transformer, rank=rank, alpha=alpha, target_modules=targets,
                           init_lora_weights=init_lora_weights, dtype=dtype)  # fmt: skip

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA weights (empty before :meth:`add_lora`)."""
        return lora_parameters(self.transformer)

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The adapter's weights by name (see :func:`lora_state_dict`)."""
        return lora_state_dict(self.transformer)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The reference policy: adapters off (see :func:`disabled`)."""
        with disabled(self.transformer):
            yield

    def save_lora(self, directory: str | Path, weights: Mapping[str, Tensor] | None = None) -> Path:
        """``directory/pytorch_lora_weights.safetensors`` in the diffusers format (see :func:`save_lora`)."""
        return save_lora(self.transformer, directory, self.lora_pipeline_class(), weights)

    def load_lora(self, directory: str | Path) -> None:
        """Restore adapters written by :meth:`save_lora` (see :func:`load_lora`)."""
        load_lora(self.transformer, directory)
