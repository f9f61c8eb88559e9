"""fastgrpo's adapters reproduce the stock diffusers pipelines (tiny random models, injected prompt embeddings)."""

from __future__ import annotations

import pytest
import torch
from stock_pipelines import (
    SIZE,
    flux_inputs,
    flux_stock,
    initial_noise,
    ode_latents,
    qwen_inputs,
    qwen_stock,
)

from fastgrpo.models.builders import tiny_flux_kontext, tiny_qwen_image_edit

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_kontext(seed=0)


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen_image_edit(seed=0)


@pytest.mark.parametrize("kernel", [True, False], ids=["sde_step", "euler"])
def test_flux_ode_equals_stock_pipeline(flux, kernel: bool) -> None:
    model, pipe = flux
    images, embeds = flux_inputs()
    noise = initial_noise(model)
    ours = ode_latents(model, model.encode(images, prompt_embeds=embeds), noise, kernel=kernel)
    stock = flux_stock(pipe, images, embeds, noise)
    assert ours.shape == stock.shape == noise.shape
    torch.testing.assert_close(ours, stock, **TOL)


def test_flux_without_guidance_embedding_equals_stock_pipeline() -> None:
    model, pipe = tiny_flux_kontext(seed=3, guidance_embeds=False)
    assert not model.uses_guidance
    images, embeds = flux_inputs(batch=1)
    noise = initial_noise(model, batch=1)
    ours = ode_latents(model, model.encode(images, prompt_embeds=embeds), noise, steps=2)
    torch.testing.assert_close(ours, flux_stock(pipe, images, embeds, noise, steps=2), **TOL)


@pytest.mark.parametrize("cfg", [False, True], ids=["cfg_off", "true_cfg"])
def test_qwen_ode_equals_stock_pipeline(qwen, cfg: bool) -> None:
    model, pipe = qwen
    model.true_cfg_scale = 4.0 if cfg else 1.0
    try:
        images, embeds = qwen_inputs(cfg=cfg)
        noise = initial_noise(model)
        ours = ode_latents(model, model.encode(images, prompt_embeds=embeds), noise)
        stock = qwen_stock(pipe, images, embeds, noise, true_cfg_scale=model.true_cfg_scale)
    finally:
        model.true_cfg_scale = 1.0
    torch.testing.assert_close(ours, stock, **TOL)


def test_flux_source_latents_and_decode_equal_the_pipeline(flux) -> None:
    model, pipe = flux
    images, embeds = flux_inputs()
    cond = model.encode(images, prompt_embeds=embeds)
    processed = pipe.image_processor.preprocess(images, SIZE, SIZE)
    stock_latents = pipe._pack_latents(pipe._encode_vae_image(processed, None), 2, 4, SIZE // 2, SIZE // 2)
    torch.testing.assert_close(cond.tensors["source_latents"], stock_latents, rtol=0, atol=0)
    noise = initial_noise(model)
    latents = flux_stock(pipe, images, embeds, noise, steps=2)
    pixels = flux_stock(pipe, images, embeds, noise, steps=2, output_type="pt")
    decoded = model.decode(latents, SIZE, SIZE)
    assert decoded.dtype == torch.float32 and decoded.shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(decoded, pixels, **TOL)


def test_qwen_decode_equals_the_pipeline(qwen) -> None:
    model, pipe = qwen
    images, embeds = qwen_inputs()
    noise = initial_noise(model)
    latents = qwen_stock(pipe, images, embeds, noise, steps=2)
    pixels = qwen_stock(pipe, images, embeds, noise, steps=2, output_type="pt")
    torch.testing.assert_close(model.decode(latents, SIZE, SIZE), pixels, **TOL)


def test_qwen_source_latents_equal_the_pipeline(qwen) -> None:
    model, pipe = qwen
    images, embeds = qwen_inputs()
    cond = model.encode(images, prompt_embeds=embeds)
    processed = pipe.image_processor.preprocess(images, SIZE, SIZE).unsqueeze(2)
    stock_latents = pipe._pack_latents(pipe._encode_vae_image(processed, None), 2, 4, SIZE // 4, SIZE // 4)
    torch.testing.assert_close(cond.tensors["source_latents"], stock_latents, rtol=0, atol=0)


@pytest.mark.parametrize("which", ["flux", "qwen"])
def test_batched_per_sample_times_equal_single_calls(flux, qwen, which: str) -> None:
    model = (flux if which == "flux" else qwen)[0]
    if which == "flux":
        images, embeds = flux_inputs(batch=3)
    else:
        images, embeds = qwen_inputs(batch=3)
    cond = model.encode(images, prompt_embeds=embeds)
    x = initial_noise(model, batch=3)
    t = torch.tensor([0.95, 0.5, 0.1])
    with torch.no_grad():
        batched = model.velocity(x, t, cond)
        single = [model.velocity(x[i : i + 1], t[i], cond.index_select(torch.tensor([i]))) for i in range(3)]
    torch.testing.assert_close(batched, torch.cat(single), **TOL)


def test_qwen_conditions_with_different_prompt_lengths_batch_like_separate_calls(qwen) -> None:
    model = qwen[0]
    images, embeds = qwen_inputs(batch=2)
    short = {"prompt_embeds": embeds["prompt_embeds"][:1, :3], "prompt_embeds_mask": torch.ones(1, 3).long()}
    a = model.encode(images[:1], prompt_embeds=short)
    b = model.encode(images[1:], prompt_embeds={k: v[1:] for k, v in embeds.items()})
    both = type(a).cat([a, b])
    assert both.tensors["prompt_embeds"].shape == (2, 6, 32)
    assert both.tensors["prompt_embeds_mask"].tolist()[0] == [1, 1, 1, 0, 0, 0]
    x = initial_noise(model)
    t = torch.tensor([0.7, 0.7])
    with torch.no_grad():
        joint = model.velocity(x, t, both)
        apart = torch.cat([model.velocity(x[:1], t[:1], a), model.velocity(x[1:], t[1:], b)])
    torch.testing.assert_close(joint, apart, **TOL)
