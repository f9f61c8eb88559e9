"""The ``model`` and ``lora`` sections: the editing model being fine-tuned and its trained adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastgrpo.train.config.checks import check_choice, check_int, check_number, check_optional_str

__all__ = ["DTYPES", "LoRAConfig", "ModelConfig"]

DTYPES = ("auto", "bf16", "fp16", "fp32")
_CFG_MODELS = {"flux_kontext": "guidance_scale", "tiny": "guidance_scale", "qwen_image_edit": "true_cfg_scale"}


@dataclass(frozen=True)
class ModelConfig:
    """The editing model being fine-tuned.

    Attributes:
        type: a registered model type (``fastgrpo.models.registry``): ``tiny`` (the built-in tiny editor),
            ``flux_kontext`` or ``qwen_image_edit``.
        path: checkpoint directory or hub id (e.g. ``black-forest-labs/FLUX.1-Kontext-dev``); required except for
            ``tiny``, where null takes the packaged weights and a path names another weights file.
        dtype: dtype of the frozen base weights: ``bf16``, ``fp16``, ``fp32``, or ``auto`` (bf16 on CUDA, fp32 on
            CPU). SDE and log-prob math run in float32 whatever this is.
        attention_backend: diffusers attention backend (``flash``, ``_flash_3``, ``xformers``, ``sage``,
            ``native``; every model type, the tiny editor included); null keeps PyTorch SDPA.
        guidance_scale: distilled guidance scale of FLUX.1 Kontext (unitless; the pipeline's default is 2.5);
            null takes the model's default. Not used by Qwen-Image-Edit.
        true_cfg_scale: true classifier-free guidance scale of Qwen-Image-Edit (unitless); ``> 1`` turns CFG on
            and doubles the transformer passes, 1 turns it off. Must stay 1 for FLUX.1 Kontext.
        negative_prompt: the negative prompt of true CFG (Qwen-Image-Edit); the stock pipeline uses ``" "``.
    """

    type: str = "tiny"
    path: str | None = None
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    attention_backend: str | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float = 1.0
    negative_prompt: str = " "

    def __post_init__(self) -> None:
        from fastgrpo.models.registry import model_types

        check_choice("model.type", self.type, model_types())
        check_optional_str("model.path", self.path, "a checkpoint directory or hub id")
        if self.path is None and self.type != "tiny":
            raise ValueError(
                f"model.path is required for model.type={self.type!r}: set it to a local checkpoint directory or a "
                "hub id, e.g. model.path=black-forest-labs/FLUX.1-Kontext-dev"
            )
        check_choice("model.dtype", self.dtype, DTYPES)
        check_optional_str("model.attention_backend", self.attention_backend, "e.g. flash, xformers, or null")
        if self.guidance_scale is not None:
            check_number("model.guidance_scale", self.guidance_scale, low=0.0, low_open=True, hint="e.g. 2.5")
        check_number("model.true_cfg_scale", self.true_cfg_scale, low=1.0, hint="1 turns true CFG off, e.g. 4.0")
        if not isinstance(self.negative_prompt, str):
            raise ValueError(f"model.negative_prompt must be a string (e.g. ' '): got {self.negative_prompt!r}")
        scale = _CFG_MODELS.get(self.type)
        if scale == "guidance_scale" and self.true_cfg_scale != 1.0:
            raise ValueError(
                f"model.true_cfg_scale applies to qwen_image_edit only; set model.true_cfg_scale=1 for "
                f"model.type={self.type!r} (use model.guidance_scale instead)"
            )
        if scale == "true_cfg_scale" and self.guidance_scale is not None:
            raise ValueError(
                "model.guidance_scale applies to FLUX.1 Kontext only; set model.guidance_scale=null for "
                "qwen_image_edit (use model.true_cfg_scale instead)"
            )


@dataclass(frozen=True)
class LoRAConfig:
    """The LoRA adapter on the transformer (SPEC S4); only its weights train.

    Attributes:
        rank: ``r``, the adapter's inner dimension (>= 1); parameters grow linearly with it.
        alpha: ``lora_alpha`` (> 0); the update is scaled by ``alpha / rank``.
        target_modules: module-name suffixes to adapt (e.g. ``[attn.to_q, attn.to_v]``); null takes the model's
            defaults (attention and feed-forward projections of every block).
        init: ``default`` (``lora_B`` zero, ``lora_A`` Kaiming) or ``gaussian`` (``lora_A`` Gaussian); both start
            the adapted model equal to the base model, which GRPO's reference policy relies on.
        dtype: dtype of the adapter weights and hence of the optimiser state: ``fp32`` (stable updates on a bf16
            base model) or ``auto`` (the base weights' dtype).
    """

    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] | None = None
    init: Literal["default", "gaussian"] = "default"
    dtype: Literal["auto", "fp32"] = "fp32"

    def __post_init__(self) -> None:
        check_int("lora.rank", self.rank, 1, "e.g. 8 to 64")
        check_number("lora.alpha", self.alpha, low=0.0, low_open=True, hint="often 2 * rank")
        if self.target_modules is not None:
            modules = self.target_modules
            if isinstance(modules, str) or not modules or not all(isinstance(m, str) and m for m in modules):
                raise ValueError(
                    "lora.target_modules must be null (the model's defaults) or a non-empty list of module-name "
                    f"suffixes, e.g. [attn.to_q, attn.to_v]: got {modules!r}"
                )
        check_choice("lora.init", self.init, ("default", "gaussian"))
        check_choice("lora.dtype", self.dtype, ("auto", "fp32"))

    @property
    def init_lora_weights(self) -> bool | str:
        """The value peft's ``LoraConfig(init_lora_weights=...)`` takes for :attr:`init`."""
        return True if self.init == "default" else "gaussian"
