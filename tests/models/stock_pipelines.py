"""Shared pieces of the adapter tests: seeded inputs, fastgrpo's own ODE loop, and stock-pipeline runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch
from PIL import Image

from fastgrpo.kernels import sde_step
from fastgrpo.models.base import Condition, EditModel

SIZE = 32  # pixels; tiny FLUX: 8x8 tokens (factor 2 x patch 2), tiny Qwen: 4x4 tokens (factor 4 x patch 2)
STEPS = 4


def flux_inputs(batch: int = 2, seed: int = 1, text_len: int = 7) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Float source images ``[B, 3, S, S]`` in [0, 1] and injected FLUX prompt embeddings."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, SIZE, SIZE, generator=g)
    embeds = {
        "prompt_embeds": torch.randn(batch, text_len, 32, generator=g),
        "pooled_prompt_embeds": torch.randn(batch, 32, generator=g),
    }
    return images, embeds


def qwen_inputs(batch: int = 2, seed: int = 1, cfg: bool = False) -> tuple[list[Image.Image], dict[str, torch.Tensor]]:
    """RGB PIL sources and injected Qwen embeddings; sample 1's prompt is padded (mask 0 on its last 2 tokens)."""
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(batch, SIZE, SIZE, 3, generator=g) * 255).to(torch.uint8)
    images = [Image.fromarray(p.numpy()) for p in pixels]
    mask = torch.ones(batch, 6, dtype=torch.int64)
    mask[-1, 4:] = 0
    embeds = {"prompt_embeds": torch.randn(batch, 6, 32, generator=g), "prompt_embeds_mask": mask}
    if cfg:
        embeds["negative_prompt_embeds"] = torch.randn(batch, 3, 32, generator=g)
        embeds["negative_prompt_embeds_mask"] = torch.ones(batch, 3, dtype=torch.int64)
    return images, embeds


def initial_noise(model: EditModel, batch: int = 2, seed: int = 2) -> torch.Tensor:
    return model.initial_noise(batch, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def ode_latents(model: EditModel, cond: Condition, noise: torch.Tensor, steps: int = STEPS, kernel: bool = True):
    """fastgrpo's ODE sampler: Euler over ``model.schedule`` (the fused step with noise_level 0, or plain)."""
    schedule = model.schedule(steps, cond.height, cond.width)
    times = schedule.to(noise.device)
    x = noise.clone()
    batch = x.shape[0]
    for k in range(schedule.num_steps):
        t, t_next = times.t[k].expand(batch), times.t_next[k].expand(batch)
        v = model.velocity(x, t, cond)
        if kernel:
            x, _ = sde_step(x, v, t, t_next, noise_level=0.0, t_cap=schedule.t_cap, backend="torch")
        else:
            x = x + (t_next - t)[:, None, None] * v.float()
    return x


@contextlib.contextmanager
def qwen_source_at_test_size() -> Iterator[None]:
    """The stock Qwen edit pipeline resizes the source to a 1024²-pixel area; keep it at the test size instead."""
    target = "diffusers.pipelines.qwenimage.pipeline_qwenimage_edit.calculate_dimensions"
    with mock.patch(target, lambda area, ratio: (SIZE, SIZE, None)):
        yield


def flux_stock(pipe, images, embeds, noise, steps: int = STEPS, output_type: str = "latent", guidance: float = 2.5):
    """The stock FluxKontextPipeline at the test size (no preferred-resolution resize)."""
    return pipe(
        image=images, prompt_embeds=embeds["prompt_embeds"], pooled_prompt_embeds=embeds["pooled_prompt_embeds"],
        latents=noise.clone(), height=SIZE, width=SIZE, max_area=SIZE * SIZE, _auto_resize=False,
        num_inference_steps=steps, guidance_scale=guidance, output_type=output_type,
    ).images  # fmt: skip


def qwen_stock(pipe, images, embeds, noise, *, true_cfg_scale: float = 1.0, steps: int = STEPS, output_type="latent"):
    """The stock QwenImageEditPipeline at the test size."""
    negative = {k: v for k, v in embeds.items() if k.startswith("negative_")}
    with qwen_source_at_test_size():
        return pipe(
            image=images, prompt_embeds=embeds["prompt_embeds"], prompt_embeds_mask=embeds["prompt_embeds_mask"],
            latents=noise.clone(), height=SIZE, width=SIZE, num_inference_steps=steps,
            true_cfg_scale=true_cfg_scale, output_type=output_type, **negative,
        ).images  # fmt: skip
