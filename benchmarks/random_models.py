"""FLUX.1-Kontext-architecture models with random weights, for the end-to-end benchmarks (no download, no tokenizer).

Speed does not depend on the weights' values, so the benchmarks and the device check train these instead of the
real checkpoint. A model is a :class:`~fastgrpo.models.flux_kontext.FluxKontextEditModel` built from:

- a diffusers ``FluxTransformer2DModel`` of the size's shape, randomly initialised (PyTorch's default init, seeded),
  built directly on the target device in the target dtype (the full size is 11.9 billion weights: 24 GB in bf16);
- a randomly initialised ``AutoencoderKL`` of the FLUX.1 VAE's architecture (``vae/config.json`` of FLUX.1:
  16 latent channels, blocks 128/256/512/512, 2 layers per block, spatial factor 8, shift 0.1159, scale 0.3611);
- :class:`RandomPromptEncoder` in place of CLIP + T5: each instruction gets fixed random ``prompt_embeds
  [L, joint_attention_dim]`` and ``pooled_prompt_embeds [pooled_dim]`` (the shapes the real encoders give; L = 512
  T5 tokens, the pipeline's default).

Sizes (:data:`SIZES`): ``full`` is FLUX.1 Kontext [dev] (19 double + 38 single blocks, 24 heads x 128, text 4096,
pooled 768, guidance embedding); ``mid`` keeps its widths but has 8 + 16 blocks of 12 heads x 128 (hidden 1536,
1.27 billion weights); ``micro`` is a CPU-sized shape for tests.

The training config reaches these models through the model registry: :func:`register` adds the model type
``flux_kontext_random`` whose ``model.path`` names the size, e.g. ``model.type=flux_kontext_random
model.path=full``. ``benchmarks/train_random.py`` registers it and runs ``fastgrpo train``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastgrpo.models.builders import FLUX_KONTEXT_SCHEDULER

MODEL_TYPE = "flux_kontext_random"

# FLUX.1 Kontext-dev's scheduler/scheduler_config.json
SCHEDULER_CONFIG: dict[str, Any] = FLUX_KONTEXT_SCHEDULER
# FLUX.1 vae/config.json
FLUX_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}
# A two-level VAE of 4 latent channels (spatial factor 2) for the CPU-sized shape.
MICRO_VAE_CONFIG: dict[str, Any] = {
    **FLUX_VAE_CONFIG,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
    "mid_block_add_attention": True,
}


@dataclass(frozen=True)
class KontextSize:
    """The shape of one random Kontext-architecture model.

    Attributes:
        double_blocks, single_blocks: ``num_layers`` (joint text/image blocks) and ``num_single_layers``.
        heads, head_dim: attention heads and their width (hidden = heads x head_dim).
        text_dim, pooled_dim: ``joint_attention_dim`` (T5 width) and ``pooled_projection_dim`` (CLIP width).
        text_tokens: ``L`` of the injected prompt embeddings.
        rope_axes: ``axes_dims_rope`` (sums to ``head_dim``).
        vae: the VAE architecture's config (``AutoencoderKL`` keyword arguments).
    """

    double_blocks: int
    single_blocks: int
    heads: int
    head_dim: int
    text_dim: int
    pooled_dim: int
    text_tokens: int
    rope_axes: tuple[int, int, int]
    vae: dict[str, Any]

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    def transformer_config(self) -> dict[str, Any]:
        """``FluxTransformer2DModel`` keyword arguments (2x2-packed latents: ``in_channels = 4 x latent channels``)."""
        return {
            "patch_size": 1,
            "in_channels": 4 * int(self.vae["latent_channels"]),
            "num_layers": self.double_blocks,
            "num_single_layers": self.single_blocks,
            "attention_head_dim": self.head_dim,
            "num_attention_heads": self.heads,
            "joint_attention_dim": self.text_dim,
            "pooled_projection_dim": self.pooled_dim,
            "guidance_embeds": True,
            "axes_dims_rope": self.rope_axes,
        }


SIZES: dict[str, KontextSize] = {
    "full": KontextSize(19, 38, 24, 128, 4096, 768, 512, (16, 56, 56), FLUX_VAE_CONFIG),
    "mid": KontextSize(8, 16, 12, 128, 4096, 768, 512, (16, 56, 56), FLUX_VAE_CONFIG),
    "micro": KontextSize(1, 1, 2, 16, 32, 32, 8, (4, 6, 6), MICRO_VAE_CONFIG),
}


def _stable_seed(seed: int, text: str) -> int:
    """A 63-bit seed from ``seed`` and ``text`` that does not change between processes (unlike ``hash``)."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RandomPromptEncoder:
    """Instructions -> fixed random ``{"prompt_embeds" [B, L, D], "pooled_prompt_embeds" [B, P]}`` (no gradient).

    The same instruction always gets the same embedding (drawn from a generator seeded by its text), as with a real
    encoder; values are standard normal. Drawn on ``device`` in float32, returned in ``dtype``.
    """

    def __init__(
        self, text_tokens: int, dim: int, pooled_dim: int, *, device: torch.device | str, dtype: torch.dtype, seed: int
    ) -> None:
        self.text_tokens, self.dim, self.pooled_dim = text_tokens, dim, pooled_dim
        self.device, self.dtype, self.seed = torch.device(device), dtype, seed

    @torch.no_grad()
    def encode(self, instructions: Sequence[str]) -> dict[str, Tensor]:
        if isinstance(instructions, str) or not instructions:
            raise ValueError("instructions must be a non-empty list of strings (one per source image)")
        embeds, pooled = [], []
        for text in instructions:
            gen = torch.Generator(device=self.device).manual_seed(_stable_seed(self.seed, text))
            embeds.append(torch.randn(self.text_tokens, self.dim, generator=gen, device=self.device))
            pooled.append(torch.randn(self.pooled_dim, generator=gen, device=self.device))
        return {
            "prompt_embeds": torch.stack(embeds).to(self.dtype),
            "pooled_prompt_embeds": torch.stack(pooled).to(self.dtype),
        }


@contextlib.contextmanager
def _build_on(device: torch.device, dtype: torch.dtype, seed: int) -> Iterator[None]:
    """Modules created inside are allocated on ``device`` in ``dtype`` and initialised from ``seed``; the global
    RNG states and the default dtype are restored afterwards."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            with device:
                yield
        finally:
            torch.set_default_dtype(previous)


def build_random_kontext(
    size: str,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cuda",
    seed: int = 0,
    attention_backend: str | None = None,
    guidance_scale: float = 2.5,
) -> Any:
    """A :class:`FluxKontextEditModel` of shape ``SIZES[size]`` with random weights (see the module docstring).

    Raises ``ValueError`` for an unknown size (naming the known ones) or an unusable attention backend.
    """
    if size not in SIZES:
        raise ValueError(f"unknown random Kontext size {size!r}; choose one of {', '.join(sorted(SIZES))}")
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from fastgrpo.models.checkpoints import set_attention_backend
    from fastgrpo.models.codecs import DiffusersVAECodec
    from fastgrpo.models.flux_kontext import FluxKontextEditModel

    spec = SIZES[size]
    device = torch.device(device)
    with _build_on(device, dtype, seed):
        transformer = FluxTransformer2DModel(**spec.transformer_config())
        vae = AutoencoderKL(**spec.vae)
    for module in (transformer, vae):
        module.eval().requires_grad_(False)
    set_attention_backend(transformer, attention_backend)
    encoder = RandomPromptEncoder(
        spec.text_tokens, spec.text_dim, spec.pooled_dim, device=device, dtype=dtype, seed=seed + 1
    )
    return FluxKontextEditModel(transformer, DiffusersVAECodec(vae), dict(SCHEDULER_CONFIG), encoder, guidance_scale)


def load_random_kontext(path: str | Path, **kwargs: Any) -> Any:
    """Registry loader of ``flux_kontext_random``: ``path`` is the size name (``full``, ``mid``, ``micro``)."""
    allowed = {"dtype", "device", "attention_backend", "guidance_scale", "seed"}
    return build_random_kontext(str(path), **{k: v for k, v in kwargs.items() if k in allowed})


def register() -> str:
    """Make ``model.type=flux_kontext_random`` known to the config and the trainer (idempotent); returns the name."""
    from fastgrpo.models.registry import model_types, register_model

    if MODEL_TYPE not in model_types():
        register_model(MODEL_TYPE, load_random_kontext)
    return MODEL_TYPE


def parameter_count(size: str) -> int:
    """Weights of the transformer of ``SIZES[size]``, counted on the meta device (nothing allocated)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**SIZES[size].transformer_config())
    return sum(p.numel() for p in transformer.parameters())
