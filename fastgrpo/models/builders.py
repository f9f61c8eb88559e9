"""Tiny random-initialised FLUX.1 Kontext and Qwen-Image-Edit models, built in code (no download, no tokenizer).

Tests and benchmarks use them to run the real adapter code paths against the stock diffusers pipelines. Each
builder returns ``(model, pipeline)``: the fastgrpo adapter and the stock pipeline sharing the same transformer
and VAE modules, with text encoders and tokenizers set to None (prompt embeddings are injected). The same ``seed``
gives identical weights, so a second call builds an independent copy of the same model (e.g. a fresh pipeline to
load a saved LoRA into). The global RNG state is left untouched.

Scheduler configs are the real checkpoints' (``scheduler/scheduler_config.json``):

- FLUX.1 Kontext-dev: ``shift 3.0, use_dynamic_shifting, base_shift 0.5, max_shift 1.15, base_image_seq_len 256,
  max_image_seq_len 4096`` (exponential time shift, no terminal stretch);
- Qwen-Image-Edit: ``shift 1.0, use_dynamic_shifting, base_shift 0.5, max_shift 0.9, base_image_seq_len 256,
  max_image_seq_len 8192, shift_terminal 0.02, time_shift_type "exponential"``.
"""

from __future__ import annotations

from typing import Any

import torch

FLUX_KONTEXT_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
QWEN_IMAGE_EDIT_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
}
# FLUX VAE normalisation constants (vae/config.json of FLUX.1), so the tiny codec exercises a non-trivial shift/scale
_FLUX_SHIFT, _FLUX_SCALE = 0.1159, 0.3611


def tiny_flux_kontext(
    seed: int = 0,
    *,
    latent_channels: int = 4,
    vae_blocks: int = 2,
    num_layers: int = 1,
    num_single_layers: int = 1,
    guidance_embeds: bool = True,
    text_dim: int = 32,
    pooled_dim: int = 32,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[Any, Any]:
    """A tiny FLUX.1 Kontext ``(FluxKontextEditModel, FluxKontextPipeline)``.

    Transformer: ``num_layers`` joint + ``num_single_layers`` single blocks, 2 heads of 16 (rotary axes 4/6/6),
    ``in_channels = 4 * latent_channels``, guidance embedding like Kontext-dev (``guidance_embeds``). VAE:
    ``AutoencoderKL`` with ``vae_blocks`` levels (spatial factor ``2 ** (vae_blocks - 1)``; 2 by default, so image
    sides must be multiples of 4), the real FLUX shift/scaling factors. Prompt embeddings: ``[B, L, text_dim]``
    and pooled ``[B, pooled_dim]``.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

    from fastgrpo.models.codecs import DiffusersVAECodec
    from fastgrpo.models.flux_kontext import FluxKontextEditModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * latent_channels, num_layers=num_layers, num_single_layers=num_single_layers,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=text_dim,
            pooled_projection_dim=pooled_dim, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
        )  # fmt: skip
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * vae_blocks,
            up_block_types=("UpDecoderBlock2D",) * vae_blocks, block_out_channels=(8, 16, 16, 16)[:vae_blocks],
            layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4, sample_size=32,
            shift_factor=_FLUX_SHIFT, scaling_factor=_FLUX_SCALE, use_quant_conv=False, use_post_quant_conv=False,
        )  # fmt: skip
    _place(transformer, vae, dtype=dtype, device=device)
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_KONTEXT_SCHEDULER)
    pipe = FluxKontextPipeline(
        scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    model = FluxKontextEditModel(transformer, DiffusersVAECodec(vae), dict(scheduler.config))
    return model, pipe


def tiny_qwen_image_edit(
    seed: int = 0,
    *,
    z_dim: int = 4,
    num_layers: int = 1,
    text_dim: int = 32,
    true_cfg_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[Any, Any]:
    """A tiny Qwen-Image-Edit ``(QwenImageEditModel, QwenImageEditPipeline)``.

    Transformer: ``num_layers`` blocks, 2 heads of 16 (rotary axes 4/6/6), ``in_channels = 4 * z_dim``. VAE:
    ``AutoencoderKLQwenImage`` with two downsamplings (spatial factor 4, so image sides must be multiples of 8) and
    non-trivial ``latents_mean`` / ``latents_std``. Prompt embeddings: ``[B, L, text_dim]`` with a mask ``[B, L]``.
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageTransformer2DModel,
    )

    from fastgrpo.models.codecs import QwenImageVAECodec
    from fastgrpo.models.qwen_image_edit import QwenImageEditModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=4 * z_dim, out_channels=z_dim, num_layers=num_layers, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=text_dim, guidance_embeds=False, axes_dims_rope=(4, 6, 6),
        )  # fmt: skip
        stats = torch.Generator().manual_seed(seed + 1)
        mean = (torch.randn(z_dim, generator=stats) * 0.3).tolist()
        std = (torch.rand(z_dim, generator=stats) + 0.5).tolist()
        vae = AutoencoderKLQwenImage(
            base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
            latents_mean=mean, latents_std=std,
        )  # fmt: skip
    _place(transformer, vae, dtype=dtype, device=device)
    scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_EDIT_SCHEDULER)
    pipe = QwenImageEditPipeline(
        scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, processor=None, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    model = QwenImageEditModel(transformer, QwenImageVAECodec(vae), dict(scheduler.config),
                               true_cfg_scale=true_cfg_scale)  # fmt: skip
    return model, pipe


def _place(*modules: torch.nn.Module, dtype: torch.dtype, device: torch.device | str) -> None:
    """Move, cast (only when not float32: diffusers warns on any dtype cast), freeze and set eval mode."""
    for module in modules:
        module.to(device)
        if dtype != torch.float32:
            module.to(dtype)
        module.eval().requires_grad_(False)
