"""Qwen-Image-Edit as an :class:`~fastgrpo.models.base.EditModel`.

The transformer sees ``[x_t ; source]`` (2x2-packed latents of the edited and the source image) and the
Qwen2.5-VL prompt embeddings with their padding mask; ``img_shapes = [[(1, h/2, w/2), (1, h/2, w/2)]] * B``
gives the rotary positions of both images. Everything follows ``QwenImageEditPipeline.__call__`` (diffusers 0.42),
so an ODE run over :meth:`EditModel.schedule` with the plain Euler step reproduces its ``output_type="latent"``
result:

- ``timestep = (t * num_train_timesteps).to(dtype) / 1000`` (as in the pipeline);
- the mask is passed as ``encoder_hidden_states_mask`` (older diffusers, whose forward also takes
  ``txt_seq_lens``, get the per-sample token counts there: a host sync those versions need);
- true classifier-free guidance when ``true_cfg_scale > 1``: ``comb = v_neg + s (v_pos - v_neg)``, rescaled to the
  conditional norm over the channel dimension, ``comb * ||v_pos|| / ||comb||`` (computed in float32);
- the text embeddings depend on the source image (the text encoder sees it): a condition is the pair (source
  image, instruction), never the instruction alone;
- the source image is encoded at the batch resolution (the pipeline resizes it to a ~1024² area first; pass images
  of that size to reproduce it exactly).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastgrpo.models.base import Condition, EditModel, images_to_tensor
from fastgrpo.models.codecs import LatentCodec
from fastgrpo.models.flux_kontext import check_velocity_inputs, model_timestep
from fastgrpo.models.lora import QWEN_TARGET_MODULES, LoRAAdapterMixin
from fastgrpo.models.packing import PackedLatentsMixin, pack_latents
from fastgrpo.models.prompts import ImagePromptEncoder

PIPELINE_CLASSES = ("QwenImageEditPipeline",)
HUB_ID = "Qwen/Qwen-Image-Edit"
_SEQ_MASKS = {"prompt_embeds": "prompt_embeds_mask", "negative_prompt_embeds": "negative_prompt_embeds_mask"}


def _checked_embeds(prompt_embeds: Mapping[str, Tensor], prefix: str, batch: int) -> tuple[Tensor, Tensor]:
    """``(embeds [B, L, D], mask [B, L] int64)``; a missing mask means no padding (all ones)."""
    name = f"{prefix}prompt_embeds"
    embeds = prompt_embeds[name]
    mask = prompt_embeds.get(f"{name}_mask")
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.int64, device=embeds.device)
    if embeds.dim() != 3 or embeds.shape[0] != batch or tuple(mask.shape) != tuple(embeds.shape[:2]):
        raise ValueError(
            f"{name} must be [{batch}, L, D] with {name}_mask [{batch}, L], got {tuple(embeds.shape)} and "
            f"{tuple(mask.shape)}"
        )
    return embeds, mask.to(torch.int64)


class QwenImageEditModel(PackedLatentsMixin, LoRAAdapterMixin, EditModel):
    """Qwen-Image-Edit from components (see the module docstring for the exact semantics).

    Args:
        transformer: ``QwenImageTransformer2DModel`` whose ``in_channels`` is ``4 * codec.latent_channels``.
        codec: a :class:`~fastgrpo.models.codecs.LatentCodec`, normally
            :class:`~fastgrpo.models.codecs.QwenImageVAECodec`.
        scheduler_config: the checkpoint's ``FlowMatchEulerDiscreteScheduler`` config.
        prompt_encoder: ``encode(instructions, images) -> {"prompt_embeds", "prompt_embeds_mask"}``; without one,
            :meth:`encode` needs injected embeddings.
        true_cfg_scale: classifier-free guidance scale; ``> 1`` turns true CFG on (two transformer passes per
            velocity) and needs negative embeddings (from ``negative_prompt`` or injected).
        negative_prompt: the negative instruction encoded by the prompt encoder when CFG is on (``" "`` as in the
            Qwen-Image-Edit model card).

    Raises:
        ValueError: a transformer/codec channel mismatch, or a guidance-distilled transformer (not supported by
            the stock pipeline either).
    """

    model_type = "qwen_image_edit"
    default_target_modules = QWEN_TARGET_MODULES

    def __init__(
        self,
        transformer: torch.nn.Module,
        codec: LatentCodec,
        scheduler_config: Mapping[str, Any],
        prompt_encoder: ImagePromptEncoder | None = None,
        *,
        true_cfg_scale: float = 1.0,
        negative_prompt: str = " ",
    ) -> None:
        in_channels = int(transformer.config.in_channels)
        if in_channels != 4 * codec.latent_channels:
            raise ValueError(
                f"transformer in_channels={in_channels} does not fit 2x2-packed {codec.latent_channels}-channel "
                f"latents (needs {4 * codec.latent_channels}); pair the transformer with its own VAE"
            )
        if getattr(transformer.config, "guidance_embeds", False):
            raise ValueError("guidance-distilled Qwen-Image transformers (guidance_embeds=True) are not supported")
        if not true_cfg_scale >= 1.0:
            raise ValueError(f"true_cfg_scale must be ≥ 1 (1 turns CFG off), got {true_cfg_scale!r}")
        self._transformer = transformer
        self.codec = codec
        self._scheduler_config = dict(scheduler_config)
        self.prompt_encoder = prompt_encoder
        self.true_cfg_scale = float(true_cfg_scale)
        self.negative_prompt = negative_prompt
        self._takes_txt_seq_lens = "txt_seq_lens" in inspect.signature(transformer.forward).parameters

    @property
    def transformer(self) -> torch.nn.Module:
        return self._transformer

    @property
    def do_true_cfg(self) -> bool:
        return self.true_cfg_scale > 1.0

    def lora_pipeline_class(self) -> Any:
        from diffusers import QwenImageEditPipeline

        return QwenImageEditPipeline

    def scheduler_config(self) -> dict[str, Any]:
        return dict(self._scheduler_config)

    # encoding ------------------------------------------------------------------------------------------------

    def _prompt_inputs(
        self, instructions: Sequence[str] | None, images: Tensor, prompt_embeds: Mapping[str, Tensor] | None
    ) -> dict[str, Tensor]:
        batch = images.shape[0]
        if prompt_embeds is None:
            if self.prompt_encoder is None or instructions is None:
                raise ValueError(
                    "no prompt encoder: pass prompt_embeds={'prompt_embeds': [B, L, D], 'prompt_embeds_mask': "
                    "[B, L]} (plus negative_* for true CFG), or build the model with a prompt_encoder"
                )
            if len(instructions) != batch:
                raise ValueError(f"{len(instructions)} instructions for {batch} source images; pass one per image")
            prompt_embeds = dict(self.prompt_encoder.encode(list(instructions), images))
            if self.do_true_cfg:
                negative = self.prompt_encoder.encode([self.negative_prompt] * batch, images)
                prompt_embeds |= {f"negative_{k}": v for k, v in negative.items()}
        if "prompt_embeds" not in prompt_embeds:
            raise ValueError("prompt_embeds lacks 'prompt_embeds' [B, L, D]")
        if self.do_true_cfg and "negative_prompt_embeds" not in prompt_embeds:
            raise ValueError(
                f"true_cfg_scale={self.true_cfg_scale} needs 'negative_prompt_embeds' (and its mask) in prompt_embeds; "
                "pass them, or set true_cfg_scale=1 to turn CFG off"
            )
        tensors: dict[str, Tensor] = {}
        for prefix in ("", "negative_") if self.do_true_cfg else ("",):
            embeds, mask = _checked_embeds(prompt_embeds, prefix, batch)
            tensors[f"{prefix}prompt_embeds"] = embeds.to(self.device, self.dtype)
            tensors[f"{prefix}prompt_embeds_mask"] = mask.to(self.device)
        return tensors

    @torch.no_grad()
    def encode_source(self, images: Tensor) -> Tensor:
        """float ``[B, 3, H, W]`` in [0, 1] -> packed source latents ``[B, N, C]`` in the model dtype."""
        self.latent_shape(images.shape[-2], images.shape[-1])
        return pack_latents(self.codec.encode(images.to(self.device))).to(self.dtype)

    def encode(
        self,
        sources: Any,
        instructions: Sequence[str] | None = None,
        *,
        prompt_embeds: Mapping[str, Tensor] | None = None,
        references: Sequence[Sequence[Any]] | None = None,
    ) -> Condition:
        """Source images + instructions (or injected embeddings) -> :class:`Condition` with ``prompt_embeds``,
        ``prompt_embeds_mask``, ``source_latents`` (and ``negative_*`` with true CFG); prompts of different
        lengths can be concatenated later (:meth:`Condition.cat` pads them).

        The original Qwen-Image-Edit takes one input image per condition: ``references`` (per condition, its
        reference images) must be empty (:meth:`~fastgrpo.models.base.EditModel.check_references`; the 2509/2511
        releases, which take several, have no adapter yet).

        Raises ``ValueError`` for images of the wrong mode/size/range, missing or mis-shaped embeddings, and
        reference images.
        """
        self.check_references(references)
        images = images_to_tensor(sources)
        height, width = images.shape[-2:]
        self.latent_shape(height, width)
        tensors = self._prompt_inputs(instructions, images, prompt_embeds)
        tensors["source_latents"] = self.encode_source(images)
        masks = {k: v for k, v in _SEQ_MASKS.items() if k in tensors}
        return Condition(tensors, height, width, seq_masks=masks)

    # denoising -----------------------------------------------------------------------------------------------

    def _forward(self, hidden: Tensor, timestep: Tensor, embeds: Tensor, mask: Tensor, cond: Condition) -> Tensor:
        m = self.size_multiple
        shape = (1, cond.height // m, cond.width // m)
        kwargs: dict[str, Any] = {}
        if self._takes_txt_seq_lens:
            kwargs["txt_seq_lens"] = mask.sum(dim=1).tolist()
        return self._transformer(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states_mask=mask,
            encoder_hidden_states=embeds,
            img_shapes=[[shape, shape]] * hidden.shape[0],
            return_dict=False,
            **kwargs,
        )[0]

    def velocity(self, x_t: Tensor, t: Tensor, cond: Condition) -> Tensor:
        """``v(x_t, t | cond)`` ``[B, N, C]`` in the model dtype (true CFG applied when on).

        Differentiable w.r.t. the transformer's trainable weights; no host synchronisation on diffusers ≥ 0.40.
        """
        t = check_velocity_inputs(self, x_t, t, cond)
        x = x_t.to(self.dtype)
        n = x.shape[1]
        hidden = torch.cat([x, cond.tensors["source_latents"]], dim=1)
        timestep = model_timestep(t, self._scheduler_config, self.dtype)
        tensors = cond.tensors
        v = self._forward(hidden, timestep, tensors["prompt_embeds"], tensors["prompt_embeds_mask"], cond)[:, :n]
        if not self.do_true_cfg:
            return v
        v_neg = self._forward(
            hidden, timestep, tensors["negative_prompt_embeds"], tensors["negative_prompt_embeds_mask"], cond
        )[:, :n]
        pos, neg = v.float(), v_neg.float()
        comb = neg + self.true_cfg_scale * (pos - neg)
        scale = torch.linalg.vector_norm(pos, dim=-1, keepdim=True) / torch.linalg.vector_norm(
            comb, dim=-1, keepdim=True
        )
        return (comb * scale).to(v.dtype)

    # loading -------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        *,
        dtype: torch.dtype | str = torch.bfloat16,
        device: torch.device | str = "cuda",
        attention_backend: str | None = None,
        text_encoders: bool = True,
        true_cfg_scale: float = 1.0,
        negative_prompt: str = " ",
    ) -> QwenImageEditModel:
        """Load transformer, VAE, scheduler config and (``text_encoders=True``) Qwen2.5-VL + processor from a
        Qwen-Image-Edit checkpoint directory or hub id (arguments as in
        :meth:`FluxKontextEditModel.from_pretrained`).

        Raises:
            ValueError: missing/incomplete/wrong checkpoint directory, missing text encoder when requested, or an
                unusable attention backend (naming the package to install).
        """
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

        from fastgrpo.models import checkpoints as ck
        from fastgrpo.models.codecs import QwenImageVAECodec

        torch_dtype = ck.torch_dtype(dtype)
        ck.check_attention_backend(attention_backend, device)  # before gigabytes of weights are read
        path = ck.resolve_checkpoint(
            path_or_hub_id, pipeline_classes=PIPELINE_CLASSES, description="Qwen-Image-Edit", example_hub_id=HUB_ID,
            required=("transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json"),
        )  # fmt: skip
        transformer = ck.load_component(QwenImageTransformer2DModel, path, "transformer", torch_dtype=torch_dtype)
        vae = ck.load_component(AutoencoderKLQwenImage, path, "vae", torch_dtype=torch_dtype)
        scheduler_config = ck.load_scheduler_config(path)
        for module in (transformer, vae):
            module.to(device).eval()
            module.requires_grad_(False)
        ck.set_attention_backend(transformer, attention_backend)
        encoder = _load_prompt_encoder(path, torch_dtype, device) if text_encoders else None
        return cls(transformer, QwenImageVAECodec(vae), scheduler_config, encoder,
                   true_cfg_scale=true_cfg_scale, negative_prompt=negative_prompt)  # fmt: skip


def _load_prompt_encoder(path: str, dtype: torch.dtype, device: torch.device | str) -> ImagePromptEncoder:
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor

    from fastgrpo.models import checkpoints as ck
    from fastgrpo.models.prompts import QwenEditPromptEncoder

    missing = [n for n in ("text_encoder", "tokenizer", "processor") if not ck.has_component(path, n)]
    if missing:
        raise ValueError(
            f"{path} has no {missing}: pass text_encoders=False and inject prompt embeddings, or use a complete "
            "Qwen-Image-Edit checkpoint"
        )
    text_encoder = ck.load_component(Qwen2_5_VLForConditionalGeneration, path, "text_encoder", torch_dtype=dtype)
    text_encoder.to(device).eval()
    text_encoder.requires_grad_(False)
    tokenizer = ck.load_component(Qwen2Tokenizer, path, "tokenizer")
    processor = ck.load_component(Qwen2VLProcessor, path, "processor")
    return QwenEditPromptEncoder(text_encoder, tokenizer, processor)
