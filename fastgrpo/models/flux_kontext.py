"""FLUX.1 Kontext as an :class:`~fastgrpo.models.base.EditModel`.

The transformer sees ``[x_t ; source]``: the noisy edited-image tokens followed by the source image's tokens, both
2x2-packed latents, with position ids ``(0, row, col)`` for the edited image and ``(1, row, col)`` for the source
(text tokens: all zero). The velocity is the output's first ``N`` tokens. Everything follows
``FluxKontextPipeline.__call__`` (diffusers 0.34-0.42), so an ODE run over :meth:`EditModel.schedule` with the
plain Euler step reproduces the pipeline's ``output_type="latent"`` result:

- ``timestep = (t * num_train_timesteps).to(dtype) / 1000`` (the scheduler's timestep, cast to the latent dtype,
  then divided, as the pipeline does);
- ``guidance = guidance_scale`` per sample when ``transformer.config.guidance_embeds`` (Kontext-dev is guidance
  distilled; true CFG is not used);
- the source image is encoded at the batch resolution (the pipeline first resizes it to a preferred Kontext
  resolution; the data layer's buckets take that role here).
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
from fastgrpo.models.lora import FLUX_TARGET_MODULES, LoRAAdapterMixin
from fastgrpo.models.packing import PackedLatentsMixin, pack_latents, patch_position_ids
from fastgrpo.models.prompts import PromptEncoder

PIPELINE_CLASSES = ("FluxKontextPipeline",)
HUB_ID = "black-forest-labs/FLUX.1-Kontext-dev"
_EMBED_KEYS = ("prompt_embeds", "pooled_prompt_embeds")


def check_velocity_inputs(model: EditModel, x_t: Tensor, t: Tensor, cond: Condition) -> Tensor:
    """Shape checks shared by the adapters; returns ``t`` as ``[B]`` on the latents' device (no host sync)."""
    n, c = model.latent_shape(cond.height, cond.width)
    if x_t.dim() != 3 or tuple(x_t.shape[1:]) != (n, c) or x_t.shape[0] != cond.batch_size:
        raise ValueError(
            f"x_t must be packed latents [{cond.batch_size}, {n}, {c}] for {cond.batch_size} conditions at "
            f"{cond.height}x{cond.width}, got {tuple(x_t.shape)}"
        )
    if not isinstance(t, Tensor):  # a fill on the device: no host-to-device copy
        t = torch.full((x_t.shape[0],), float(t), dtype=torch.float32, device=x_t.device)
    if t.dim() == 0:
        t = t.expand(x_t.shape[0])
    if t.dim() != 1 or t.shape[0] != x_t.shape[0]:
        raise ValueError(f"t must be a 0-d tensor or one time per sample [{x_t.shape[0]}], got {tuple(t.shape)}")
    return t.to(device=x_t.device)


def model_timestep(t: Tensor, scheduler_config: Mapping[str, Any], dtype: torch.dtype) -> Tensor:
    """The pipelines' ``timestep / 1000``: ``t * num_train_timesteps`` in float32, cast to ``dtype``, then / 1000."""
    steps = scheduler_config.get("num_train_timesteps", 1000)
    return (t.float() * steps).to(dtype) / 1000


class FluxKontextEditModel(PackedLatentsMixin, LoRAAdapterMixin, EditModel):
    """FLUX.1 Kontext from components (see the module docstring for the exact semantics).

    Args:
        transformer: ``FluxTransformer2DModel`` whose ``in_channels`` is ``4 * codec.latent_channels``.
        codec: any :class:`~fastgrpo.models.codecs.LatentCodec` (the FLUX VAE, or a pixel-space codec).
        scheduler_config: the checkpoint's ``FlowMatchEulerDiscreteScheduler`` config.
        prompt_encoder: instructions -> ``prompt_embeds [B, L, D]`` and ``pooled_prompt_embeds [B, P]``; without
            one, :meth:`encode` needs injected ``prompt_embeds``.
        guidance_scale: the distilled guidance fed to the transformer when ``config.guidance_embeds`` (2.5 is the
            pipeline example's value for Kontext-dev; ignored otherwise).

    Raises:
        ValueError: a transformer/codec channel mismatch, or a guidance-distilled transformer whose ``forward`` has
            no ``guidance`` argument.
    """

    model_type = "flux_kontext"
    default_target_modules = FLUX_TARGET_MODULES

    def __init__(
        self,
        transformer: torch.nn.Module,
        codec: LatentCodec,
        scheduler_config: Mapping[str, Any],
        prompt_encoder: PromptEncoder | None = None,
        guidance_scale: float = 2.5,
    ) -> None:
        in_channels = int(transformer.config.in_channels)
        if in_channels != 4 * codec.latent_channels:
            raise ValueError(
                f"transformer in_channels={in_channels} does not fit 2x2-packed {codec.latent_channels}-channel "
                f"latents (needs {4 * codec.latent_channels}); pair the transformer with its own VAE/codec"
            )
        self._transformer = transformer
        self.codec = codec
        self._scheduler_config = dict(scheduler_config)
        self.prompt_encoder = prompt_encoder
        self.guidance_scale = float(guidance_scale)
        self.uses_guidance = bool(getattr(transformer.config, "guidance_embeds", False))
        if self.uses_guidance and "guidance" not in inspect.signature(transformer.forward).parameters:
            raise ValueError(
                "the transformer config sets guidance_embeds but its forward() takes no `guidance`; this diffusers "
                "version cannot run a guidance-distilled FLUX transformer: upgrade diffusers"
            )
        self._ids: dict[tuple[Any, ...], Tensor] = {}

    @property
    def transformer(self) -> torch.nn.Module:
        return self._transformer

    def lora_pipeline_class(self) -> Any:
        from diffusers import FluxKontextPipeline

        return FluxKontextPipeline

    def scheduler_config(self) -> dict[str, Any]:
        return dict(self._scheduler_config)

    # encoding ------------------------------------------------------------------------------------------------

    def _prompt_inputs(
        self, instructions: Sequence[str] | None, prompt_embeds: Mapping[str, Tensor] | None, batch: int
    ) -> dict[str, Tensor]:
        if prompt_embeds is None:
            if self.prompt_encoder is None or instructions is None:
                raise ValueError(
                    "no prompt encoder: pass prompt_embeds={'prompt_embeds': [B, L, D], 'pooled_prompt_embeds': "
                    "[B, P]}, or build the model with a prompt_encoder (from_pretrained loads CLIP + T5)"
                )
            if len(instructions) != batch:
                raise ValueError(f"{len(instructions)} instructions for {batch} source images; pass one per image")
            prompt_embeds = self.prompt_encoder.encode(list(instructions))
        missing = [k for k in _EMBED_KEYS if k not in prompt_embeds]
        if missing:
            raise ValueError(f"prompt_embeds lacks {missing}; FLUX.1 Kontext needs {list(_EMBED_KEYS)}")
        embeds, pooled = prompt_embeds["prompt_embeds"], prompt_embeds["pooled_prompt_embeds"]
        if embeds.dim() != 3 or pooled.dim() != 2 or embeds.shape[0] != batch or pooled.shape[0] != batch:
            raise ValueError(
                f"prompt_embeds must be [{batch}, L, D] and pooled_prompt_embeds [{batch}, P], got "
                f"{tuple(embeds.shape)} and {tuple(pooled.shape)}"
            )
        return {"prompt_embeds": embeds.to(self.device, self.dtype),
                "pooled_prompt_embeds": pooled.to(self.device, self.dtype)}  # fmt: skip

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
        """Source images (see :func:`images_to_tensor`) + instructions or injected embeddings -> :class:`Condition`
        with ``prompt_embeds [B, L, D]``, ``pooled_prompt_embeds [B, P]``, ``source_latents [B, N, C]``.

        FLUX.1 Kontext takes one input image per condition: ``references`` (per condition, its reference images)
        must be empty (:meth:`~fastgrpo.models.base.EditModel.check_references`).

        Raises ``ValueError`` for images of the wrong mode/size/range, missing or mis-shaped embeddings, and
        reference images.
        """
        self.check_references(references)
        images = images_to_tensor(sources)
        height, width = images.shape[-2:]
        self.latent_shape(height, width)
        tensors = self._prompt_inputs(instructions, prompt_embeds, images.shape[0])
        tensors["source_latents"] = self.encode_source(images)
        return Condition(tensors, height, width)

    # denoising -----------------------------------------------------------------------------------------------

    def _position_ids(self, cond: Condition, text_len: int) -> tuple[Tensor, Tensor]:
        """``(txt_ids [L, 3], img_ids [N + N_src, 3])`` cached per shape (no host-to-device copy per step)."""
        m = self.size_multiple
        key = (cond.height, cond.width, text_len, self.device, self.dtype)
        if key not in self._ids:
            hp, wp = cond.height // m, cond.width // m
            target = patch_position_ids(hp, wp, 0, device=self.device, dtype=self.dtype)
            source = patch_position_ids(hp, wp, 1, device=self.device, dtype=self.dtype)
            self._ids[key] = torch.cat([target, source])
            self._ids[(*key, "txt")] = torch.zeros(text_len, 3, device=self.device, dtype=self.dtype)
        return self._ids[(*key, "txt")], self._ids[key]

    def velocity(self, x_t: Tensor, t: Tensor, cond: Condition) -> Tensor:
        """``v(x_t, t | cond)`` ``[B, N, C]`` in the model dtype for packed ``x_t [B, N, C]`` and ``t [B]`` (or 0-d).

        Differentiable w.r.t. the transformer's trainable weights; no host synchronisation.
        """
        t = check_velocity_inputs(self, x_t, t, cond)
        x = x_t.to(self.dtype)
        embeds = cond.tensors["prompt_embeds"]
        txt_ids, img_ids = self._position_ids(cond, embeds.shape[1])
        kwargs: dict[str, Any] = {}
        if self.uses_guidance:
            kwargs["guidance"] = torch.full((x.shape[0],), self.guidance_scale, device=x.device, dtype=torch.float32)
        out = self._transformer(
            hidden_states=torch.cat([x, cond.tensors["source_latents"]], dim=1),
            timestep=model_timestep(t, self._scheduler_config, self.dtype),
            pooled_projections=cond.tensors["pooled_prompt_embeds"],
            encoder_hidden_states=embeds,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
            **kwargs,
        )[0]
        return out[:, : x.shape[1]]

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
        guidance_scale: float = 2.5,
    ) -> FluxKontextEditModel:
        """Load transformer, VAE, scheduler config and (``text_encoders=True``) CLIP + T5 from a FLUX.1 Kontext
        checkpoint directory or hub id.

        Args:
            dtype: transformer/VAE/text-encoder dtype (``torch.bfloat16`` or a name such as ``"bf16"``).
            device: where all modules go.
            attention_backend: diffusers attention dispatch backend (``"flash"``, ``"_flash_3"``,
                ``"xformers"``, ``"sage"``, ``"native"``, …); None keeps PyTorch SDPA.
            text_encoders: load CLIP + T5 as the prompt encoder; ``False`` saves their memory when prompt
                embeddings are precomputed and injected.

        Raises:
            ValueError: missing/incomplete/wrong checkpoint directory (naming the missing file or the class it
                holds), missing text encoders when requested, or an unusable attention backend (naming the
                package to install).
        """
        from diffusers import AutoencoderKL, FluxTransformer2DModel

        from fastgrpo.models import checkpoints as ck
        from fastgrpo.models.codecs import DiffusersVAECodec

        torch_dtype = ck.torch_dtype(dtype)
        ck.check_attention_backend(attention_backend, device)  # before gigabytes of weights are read
        path = ck.resolve_checkpoint(
            path_or_hub_id, pipeline_classes=PIPELINE_CLASSES, description="FLUX.1 Kontext", example_hub_id=HUB_ID,
            required=("transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json"),
        )  # fmt: skip
        transformer = ck.load_component(FluxTransformer2DModel, path, "transformer", torch_dtype=torch_dtype)
        vae = ck.load_component(AutoencoderKL, path, "vae", torch_dtype=torch_dtype)
        scheduler_config = ck.load_scheduler_config(path)
        transformer.to(device).eval()
        vae.to(device).eval()
        vae.requires_grad_(False)
        transformer.requires_grad_(False)
        ck.set_attention_backend(transformer, attention_backend)
        encoder = _load_prompt_encoder(path, torch_dtype, device) if text_encoders else None
        return cls(transformer, DiffusersVAECodec(vae), scheduler_config, encoder, guidance_scale)


def _load_prompt_encoder(path: str, dtype: torch.dtype, device: torch.device | str) -> PromptEncoder:
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from fastgrpo.models import checkpoints as ck
    from fastgrpo.models.prompts import FluxPromptEncoder

    names = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    missing = [n for n in names if not ck.has_component(path, n)]
    if missing:
        raise ValueError(
            f"{path} has no {missing}: pass text_encoders=False and inject prompt embeddings, or use a complete "
            "FLUX.1 Kontext checkpoint"
        )
    clip = ck.load_component(CLIPTextModel, path, "text_encoder", torch_dtype=dtype).to(device).eval()
    t5 = ck.load_component(T5EncoderModel, path, "text_encoder_2", torch_dtype=dtype).to(device).eval()
    tokenizer = ck.load_component(CLIPTokenizer, path, "tokenizer")
    tokenizer_2 = ck.load_component(T5TokenizerFast, path, "tokenizer_2")
    clip.requires_grad_(False)
    t5.requires_grad_(False)
    return FluxPromptEncoder(clip, tokenizer, t5, tokenizer_2)
