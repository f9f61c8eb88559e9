"""LoRA: attach, freeze, reference policy, diffusers-format save that a stock pipeline loads, exact resume."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from stock_pipelines import flux_inputs, flux_stock, initial_noise, ode_latents, qwen_inputs, qwen_stock

from fastgrpo.models import lora
from fastgrpo.models.builders import tiny_flux_kontext, tiny_qwen_image_edit

BUILDERS = {"flux": tiny_flux_kontext, "qwen": tiny_qwen_image_edit}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _setup(which: str):
    model, pipe = BUILDERS[which](seed=0)
    images, embeds = flux_inputs() if which == "flux" else qwen_inputs()
    return model, pipe, images, embeds, model.encode(images, prompt_embeds=embeds)


def _perturb_lora_b(model, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("which", ["flux", "qwen"])
def test_only_lora_trains_and_reference_is_the_base_model(which: str) -> None:
    model, _, _, _, cond = _setup(which)
    x, t = initial_noise(model), torch.tensor([0.9, 0.4])
    with torch.no_grad():
        base = model.velocity(x, t, cond)
    params = model.add_lora(rank=4, alpha=8)
    trainable = [n for n, p in model.transformer.named_parameters() if p.requires_grad]
    assert len(trainable) == len(params) > 0 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    total = sum(p.numel() for p in model.transformer.parameters())
    assert sum(p.numel() for p in params) < total
    with torch.no_grad():
        torch.testing.assert_close(model.velocity(x, t, cond), base, rtol=0, atol=0)  # lora_B starts at zero
    _perturb_lora_b(model)
    with torch.no_grad():
        adapted = model.velocity(x, t, cond)
        with model.reference():
            reference = model.velocity(x, t, cond)
        again = model.velocity(x, t, cond)
    assert torch.equal(reference, base) and torch.equal(again, adapted)
    assert not torch.allclose(adapted, base)
    assert all(p.requires_grad for p in params)  # the reference context restores requires_grad
    loss = model.velocity(x, t, cond).square().mean()
    loss.backward()
    no_grad = [n for n, p in model.transformer.named_parameters() if p.requires_grad and p.grad is None]
    # only the last joint block's text-stream outputs can be gradient-free: they never reach the image tokens
    assert all("to_add_out" in n or "txt_mlp" in n or "ff_context" in n for n in no_grad), no_grad
    assert len(no_grad) < len(params)


@pytest.mark.parametrize("which", ["flux", "qwen"])
def test_saved_lora_loads_in_a_fresh_stock_pipeline(which: str, tmp_path) -> None:
    model, _, images, embeds, cond = _setup(which)
    model.add_lora(rank=4, alpha=2)
    _perturb_lora_b(model)
    path = model.save_lora(tmp_path)
    assert path.name == "pytorch_lora_weights.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert keys and all(k.startswith("transformer.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in keys)
    assert '"transformer.r": 4' in metadata["lora_adapter_metadata"]
    assert '"transformer.lora_alpha": 2' in metadata["lora_adapter_metadata"]

    fresh_model, fresh_pipe = BUILDERS[which](seed=0)
    fresh_pipe.load_lora_weights(str(tmp_path))
    x, t = initial_noise(model), torch.tensor([0.8, 0.3])
    with torch.no_grad():
        torch.testing.assert_close(fresh_model.velocity(x, t, cond), model.velocity(x, t, cond), rtol=0, atol=0)
    noise = initial_noise(model)
    ours = ode_latents(model, cond, noise, steps=2)
    stock = (
        flux_stock(fresh_pipe, images, embeds, noise, 2)
        if which == "flux"
        else qwen_stock(fresh_pipe, images, embeds, noise, steps=2)
    )
    torch.testing.assert_close(ours, stock, **TOL)


def test_load_lora_restores_exact_tensors_in_place(tmp_path) -> None:
    model, _, _, _, _ = _setup("flux")
    model.add_lora(rank=4, alpha=4)
    _perturb_lora_b(model)
    saved = {k: v.clone() for k, v in lora.lora_state_dict(model.transformer).items()}
    model.save_lora(tmp_path)

    resumed = tiny_flux_kontext(seed=0)[0]
    params = resumed.add_lora(rank=4, alpha=4)
    ids = [id(p) for p in params]
    resumed.load_lora(tmp_path)
    restored = lora.lora_state_dict(resumed.transformer)
    assert restored.keys() == saved.keys()
    assert all(torch.equal(restored[k], saved[k]) for k in saved)
    assert [id(p) for p in resumed.trainable_parameters()] == ids  # optimiser references stay valid

    unattached = tiny_flux_kontext(seed=0)[0]  # attaches from the file's metadata
    unattached.load_lora(tmp_path)
    assert all(torch.equal(lora.lora_state_dict(unattached.transformer)[k], saved[k]) for k in saved)


def test_float32_lora_on_a_bfloat16_model() -> None:
    model = tiny_flux_kontext(seed=0, dtype=torch.bfloat16)[0]
    params = model.add_lora(rank=2, alpha=2, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in params)
    images, embeds = flux_inputs(batch=1)
    cond = model.encode(images, prompt_embeds=embeds)
    v = model.velocity(initial_noise(model, batch=1), torch.tensor([0.5]), cond)
    assert v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all()


def test_lora_mismatches_are_refused(tmp_path) -> None:
    model = tiny_flux_kontext(seed=0)[0]
    with pytest.raises(ValueError, match=r"rank must be an integer"):
        model.add_lora(rank=0, alpha=1)
    with pytest.raises(ValueError, match=r"match no layer"):
        model.add_lora(rank=2, alpha=2, target_modules=["no_such_layer"])
    model.add_lora(rank=4, alpha=4)
    with pytest.raises(ValueError, match=r"already attached"):
        model.add_lora(rank=4, alpha=4)
    model.save_lora(tmp_path / "r4")
    other = tiny_flux_kontext(seed=0)[0]
    other.add_lora(rank=2, alpha=2)
    with pytest.raises(ValueError, match=r"does not fit the attached adapter"):
        other.load_lora(tmp_path / "r4")
    scaled = tiny_flux_kontext(seed=0)[0]
    scaled.add_lora(rank=4, alpha=16)
    with pytest.raises(ValueError, match=r"alpha/rank"):
        scaled.load_lora(tmp_path / "r4")
    with pytest.raises(ValueError, match=r"no pytorch_lora_weights.safetensors"):
        other.load_lora(tmp_path / "missing")
