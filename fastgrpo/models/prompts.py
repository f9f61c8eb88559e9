"""Prompt encoders: instructions (and, for Qwen-Image-Edit, the source images) -> the transformer's text inputs.

Two contracts:

- :class:`PromptEncoder` ``encode(instructions) -> {"prompt_embeds" [B, L, D], "pooled_prompt_embeds" [B, P]}``
  (FLUX.1 Kontext; the built-in tiny editor's word-level encoder follows it too);
- :class:`ImagePromptEncoder` ``encode(instructions, images) -> {"prompt_embeds" [B, L, D],
  "prompt_embeds_mask" [B, L]}`` (Qwen-Image-Edit, whose Qwen2.5-VL text encoder also sees the source image).

The real encoders delegate to the stock pipelines' ``encode_prompt`` (a pipeline object that holds only the text
components), so tokenisation, templates, truncation and dtype are the pipelines' own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor


@runtime_checkable
class PromptEncoder(Protocol):
    """Instructions -> ``{"prompt_embeds": [B, L, D], "pooled_prompt_embeds": [B, P]}`` (no gradient)."""

    def encode(self, instructions: Sequence[str]) -> dict[str, Tensor]: ...


@runtime_checkable
class ImagePromptEncoder(Protocol):
    """Instructions + source images ``[B, 3, H, W]`` in [0, 1] -> ``{"prompt_embeds": [B, L, D],
    "prompt_embeds_mask": [B, L]}`` (int64, 1 on real tokens)."""

    def encode(self, instructions: Sequence[str], images: Tensor) -> dict[str, Tensor]: ...


def _check_instructions(instructions: Sequence[str]) -> list[str]:
    if isinstance(instructions, str) or not all(isinstance(s, str) for s in instructions):
        raise ValueError("instructions must be a list of strings (one per source image)")
    if not instructions:
        raise ValueError("instructions is empty; pass one instruction per source image")
    return list(instructions)


def _device_of(module: Any) -> torch.device:
    return next(module.parameters()).device


class FluxPromptEncoder:
    """CLIP (pooled) + T5 (sequence) embeddings of FLUX.1 Kontext, computed by the stock ``encode_prompt``.

    Args:
        text_encoder, tokenizer: ``CLIPTextModel`` and ``CLIPTokenizer``.
        text_encoder_2, tokenizer_2: ``T5EncoderModel`` and ``T5TokenizerFast``.
        max_sequence_length: T5 tokens ``L`` (512 like the pipeline's default; prompts are padded to it).
    """

    def __init__(
        self,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
        *,
        max_sequence_length: int = 512,
    ) -> None:
        from diffusers import FluxKontextPipeline

        self.max_sequence_length = max_sequence_length
        self._pipe = FluxKontextPipeline(
            scheduler=None, vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=None,
        )  # fmt: skip

    @torch.no_grad()
    def encode(self, instructions: Sequence[str]) -> dict[str, Tensor]:
        """``{"prompt_embeds": [B, L, 4096], "pooled_prompt_embeds": [B, 768]}`` in the T5/CLIP dtypes."""
        prompts = _check_instructions(instructions)
        embeds, pooled, _ = self._pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=_device_of(self._pipe.text_encoder_2),
            max_sequence_length=self.max_sequence_length,
        )  # fmt: skip
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


class QwenEditPromptEncoder:
    """Qwen2.5-VL embeddings of Qwen-Image-Edit (edit template, source image seen at ~1024² area), computed by the
    stock ``encode_prompt``.

    The pipeline shows the text encoder the source resized to a 1024²-pixel area of the same aspect ratio
    (``calculate_dimensions``); this does the same, from float ``[B, 3, H, W]`` images in [0, 1].
    """

    def __init__(self, text_encoder: Any, tokenizer: Any, processor: Any) -> None:
        from diffusers import QwenImageEditPipeline

        self._pipe = QwenImageEditPipeline(
            scheduler=None, vae=None, text_encoder=text_encoder, tokenizer=tokenizer, processor=processor,
            transformer=None,
        )  # fmt: skip

    @torch.no_grad()
    def encode(self, instructions: Sequence[str], images: Tensor) -> dict[str, Tensor]:
        """``{"prompt_embeds": [B, L, 3584], "prompt_embeds_mask": [B, L] int64}``; rows padded to the longest."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions
        from PIL import Image

        prompts = _check_instructions(instructions)
        if images.shape[0] != len(prompts):
            raise ValueError(f"{len(prompts)} instructions for {images.shape[0]} images; pass one per image")
        height, width = images.shape[-2:]
        target_w, target_h, _ = calculate_dimensions(1024 * 1024, width / height)
        arrays = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        pil = [self._pipe.image_processor.resize(Image.fromarray(np.ascontiguousarray(a)), target_h, target_w)
               for a in arrays]  # fmt: skip
        embeds, mask = self._pipe.encode_prompt(prompt=prompts, image=pil, device=_device_of(self._pipe.text_encoder))
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], dtype=torch.int64, device=embeds.device)
        return {"prompt_embeds": embeds, "prompt_embeds_mask": mask.to(torch.int64)}
