"""Bad inputs to the adapters give one clear ValueError naming the fix; packing matches the pipelines'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from stock_pipelines import SIZE, flux_inputs, initial_noise, qwen_inputs

from fastgrpo.models.base import Condition, images_to_tensor
from fastgrpo.models.builders import tiny_flux_kontext, tiny_qwen_image_edit
from fastgrpo.models.flux_kontext import FluxKontextEditModel
from fastgrpo.models.packing import pack_latents, unpack_latents


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_kontext(seed=0)[0]


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen_image_edit(seed=0)[0]


def _pil(size: int, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (size, size))


def test_mixed_resolutions_are_refused(flux) -> None:
    with pytest.raises(ValueError, match=r"several sizes in one batch.*bucket the data set by resolution"):
        images_to_tensor([_pil(32), _pil(64)])
    images, embeds = flux_inputs(batch=1)
    small = flux.encode(images, prompt_embeds=embeds)
    large = flux.encode(torch.rand(1, 3, 64, 64), prompt_embeds=embeds)
    with pytest.raises(ValueError, match=r"cannot batch conditions of 64x64 with 32x32.*one resolution"):
        Condition.cat([small, large])
    with pytest.raises(ValueError, match=r"encode all of them with the same model"):
        Condition.cat([small, Condition({"other": torch.zeros(1, 2)}, SIZE, SIZE)])
    with pytest.raises(ValueError, match=r"at least one condition"):
        Condition.cat([])


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK"])
def test_non_rgb_images_are_refused(flux, mode: str) -> None:
    _, embeds = flux_inputs(batch=1)
    with pytest.raises(ValueError, match=rf"mode '{mode}'.*convert\('RGB'\)"):
        flux.encode([_pil(SIZE, mode)], prompt_embeds=embeds)


def test_accepted_image_forms_agree() -> None:
    pixels = (np.random.default_rng(0).random((2, SIZE, SIZE, 3)) * 255).astype(np.uint8)
    from_pil = images_to_tensor([Image.fromarray(p) for p in pixels])
    assert from_pil.shape == (2, 3, SIZE, SIZE) and from_pil.dtype == torch.float32
    assert torch.equal(images_to_tensor(list(pixels)), from_pil)
    assert torch.equal(images_to_tensor(torch.from_numpy(pixels)), from_pil)
    assert torch.equal(images_to_tensor(Image.fromarray(pixels[0])), from_pil[:1])
    with pytest.raises(ValueError, match=r"values span .* pass float images in \[0, 1\]"):
        images_to_tensor(from_pil * 2 - 1)


@pytest.mark.parametrize(("which", "multiple"), [("flux", 4), ("qwen", 8)])
def test_sizes_must_be_multiples_of_what_the_model_needs(flux, qwen, which: str, multiple: int) -> None:
    model = flux if which == "flux" else qwen
    _, embeds = flux_inputs(batch=1) if which == "flux" else qwen_inputs(batch=1)
    bad = SIZE + multiple // 2
    with pytest.raises(ValueError, match=rf"{bad}x{bad} is not a multiple of {multiple}.*resize or crop"):
        model.encode(torch.rand(1, 3, bad, bad), prompt_embeds=embeds)
    with pytest.raises(ValueError, match=rf"not a multiple of {multiple}"):
        model.schedule(4, bad, SIZE)
    with pytest.raises(ValueError, match=r"not a multiple of the VAE factor"):
        model.codec.encode(torch.rand(1, 3, SIZE + 1, SIZE))


def test_missing_or_misshaped_prompt_embeddings(flux, qwen) -> None:
    images, embeds = flux_inputs(batch=2)
    with pytest.raises(ValueError, match=r"no prompt encoder: pass prompt_embeds="):
        flux.encode(images, ["a", "b"])
    with pytest.raises(ValueError, match=r"lacks \['pooled_prompt_embeds'\]"):
        flux.encode(images, prompt_embeds={"prompt_embeds": embeds["prompt_embeds"]})
    with pytest.raises(ValueError, match=r"must be \[2, L, D\]"):
        flux.encode(images, prompt_embeds={**embeds, "prompt_embeds": embeds["prompt_embeds"][:1]})
    qimages, qembeds = qwen_inputs(batch=2)
    qwen.true_cfg_scale = 4.0
    try:
        with pytest.raises(ValueError, match=r"needs 'negative_prompt_embeds'.*true_cfg_scale=1"):
            qwen.encode(qimages, prompt_embeds=qembeds)
    finally:
        qwen.true_cfg_scale = 1.0
    with pytest.raises(ValueError, match=r"prompt_embeds_mask"):
        qwen.encode(qimages, prompt_embeds={**qembeds, "prompt_embeds_mask": qembeds["prompt_embeds_mask"][:, :2]})


def test_velocity_and_decode_check_shapes(flux) -> None:
    images, embeds = flux_inputs(batch=2)
    cond = flux.encode(images, prompt_embeds=embeds)
    x = initial_noise(flux, batch=2)
    with pytest.raises(ValueError, match=r"x_t must be packed latents \[2, 64, 16\]"):
        flux.velocity(x[:, :10], torch.tensor([0.5, 0.5]), cond)
    with pytest.raises(ValueError, match=r"one time per sample \[2\]"):
        flux.velocity(x, torch.tensor([0.5, 0.5, 0.5]), cond)
    assert flux.velocity(x, torch.tensor(0.5), cond).shape == x.shape  # a 0-d time is broadcast
    with pytest.raises(ValueError, match=r"do not fit a 8x16 latent image"):
        flux.decode(x, SIZE // 2, SIZE)
    with pytest.raises(ValueError, match=r"in_channels=16 does not fit 2x2-packed 3-channel"):
        FluxKontextEditModel(flux.transformer, type("Pixels", (), {"latent_channels": 3, "spatial_factor": 1})(), {})


def test_packing_matches_the_pipelines() -> None:
    from diffusers import FluxKontextPipeline, QwenImageEditPipeline

    latents = torch.randn(2, 4, 6, 8)
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxKontextPipeline._pack_latents(latents, 2, 4, 6, 8))
    assert torch.equal(packed, pack_latents(latents[:, :, None]))
    assert torch.equal(unpack_latents(packed, 6, 8), latents)
    assert torch.equal(unpack_latents(packed, 6, 8), FluxKontextPipeline._unpack_latents(packed, 48, 64, 8))
    assert torch.equal(
        unpack_latents(packed, 6, 8)[:, :, None], QwenImageEditPipeline._unpack_latents(packed, 48, 64, 8)
    )
    with pytest.raises(ValueError, match=r"must be even"):
        pack_latents(torch.randn(1, 4, 5, 8))


def test_qwen_prompt_encoder_shows_the_text_encoder_a_1024_area_source() -> None:
    from fastgrpo.models.prompts import ImagePromptEncoder, QwenEditPromptEncoder

    encoder = QwenEditPromptEncoder(torch.nn.Linear(2, 2), None, None)
    assert isinstance(encoder, ImagePromptEncoder)
    seen: dict = {}

    def fake_encode_prompt(prompt, image, device):
        seen.update(prompt=prompt, sizes=[im.size for im in image], device=device)
        return torch.zeros(len(prompt), 5, 8), None

    encoder._pipe.encode_prompt = fake_encode_prompt
    out = encoder.encode(["make it red", "make it blue"], torch.rand(2, 3, 32, 64))
    assert seen["prompt"] == ["make it red", "make it blue"]
    assert seen["sizes"] == [(1440, 736)] * 2  # the pipeline's calculate_dimensions(1024², 2.0), (width, height)
    assert out["prompt_embeds"].shape == (2, 5, 8)
    assert out["prompt_embeds_mask"].dtype == torch.int64 and bool(out["prompt_embeds_mask"].all())
    with pytest.raises(ValueError, match=r"2 instructions for 1 images"):
        encoder.encode(["a", "b"], torch.rand(1, 3, 32, 32))


def test_qwen_encodes_instructions_and_the_negative_prompt_with_its_prompt_encoder(qwen) -> None:
    calls: list[list[str]] = []

    class Encoder:
        def encode(self, instructions, images):
            calls.append(list(instructions))
            length = 2 + len(instructions[0].split())
            return {"prompt_embeds": torch.ones(len(instructions), length, 32),
                    "prompt_embeds_mask": torch.ones(len(instructions), length, dtype=torch.int64)}  # fmt: skip

    images, _ = qwen_inputs(batch=2)
    qwen.prompt_encoder, qwen.true_cfg_scale = Encoder(), 3.0
    try:
        cond = qwen.encode(images, ["make the sky pink", "make the sky pink"])
    finally:
        qwen.prompt_encoder, qwen.true_cfg_scale = None, 1.0
    assert calls == [["make the sky pink"] * 2, [" "] * 2]
    assert cond.tensors["prompt_embeds"].shape == (2, 6, 32)
    assert cond.tensors["negative_prompt_embeds"].shape == (2, 2, 32)
    assert cond.seq_masks == {
        "prompt_embeds": "prompt_embeds_mask",
        "negative_prompt_embeds": "negative_prompt_embeds_mask",
    }


def test_reference_images_are_refused_by_the_single_image_adapters(flux, qwen) -> None:
    from fastgrpo.models.tiny_editor import build_tiny_editor

    reference = np.zeros((SIZE, SIZE, 3), np.uint8)
    tiny = build_tiny_editor(weights=None)
    cases = [(flux, *flux_inputs(batch=2)), (qwen, *qwen_inputs(batch=2)), (tiny, torch.rand(2, 3, 32, 32), None)]
    for model, images, embeds in cases:
        assert model.max_input_images == 1
        kwargs = {"prompt_embeds": embeds} if embeds is not None else {}
        instructions = None if embeds is not None else ["make it red", "make it blue"]
        with pytest.raises(ValueError) as info:
            model.encode(images, instructions, references=[[], [reference]], **kwargs)
        message = str(info.value)
        assert f"{type(model).__name__} takes one input image per condition" in message
        assert "1 of 2 conditions also have reference images (up to 1 each); it would not use them" in message
        assert "no model adapter takes several input images yet" in message and "data.multi_input=skip" in message
        # no references (the usual single-image edit) encodes as before
        assert model.encode(images, instructions, references=[[], []], **kwargs).batch_size == 2
