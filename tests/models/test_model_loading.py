"""from_pretrained on checkpoint directories written by the stock pipelines, the registry, attention backends, and the
FLUX prompt encoder with tiny CLIP + T5 text encoders built in code (tokenizers from in-memory vocabularies)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stock_pipelines import flux_inputs, initial_noise, qwen_inputs

from fastgrpo.models.builders import tiny_flux_kontext, tiny_qwen_image_edit
from fastgrpo.models.flux_kontext import FluxKontextEditModel
from fastgrpo.models.qwen_image_edit import QwenImageEditModel
from fastgrpo.models.registry import load_model, model_types

INSTRUCTIONS = ["make the cat red", "turn the cat blue"]


def _tiny_text_encoders(directory: Path):
    """CLIP + T5 text encoders of width 32 and their tokenizers, from vocabularies written to ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    letters = [c + s for c in "abcdefghijklmnopqrstuvwxyz" for s in ("", "</w>")]
    vocab = {w: i for i, w in enumerate(["<|startoftext|>", "<|endoftext|>", *letters])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    clip_tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=16)
    words = ["<pad>", "</s>", "<unk>", "make", "the", "cat", "red", "turn", "blue"]
    unigram = Tokenizer(models.Unigram([(w, -1.0) for w in words], unk_id=2))
    unigram.pre_tokenizer = pre_tokenizers.Whitespace()
    unigram.save(str(directory / "t5.json"))
    t5_tokenizer = T5TokenizerFast(
        tokenizer_file=str(directory / "t5.json"), pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
            max_position_embeddings=16, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )).eval()  # fmt: skip
        t5 = T5EncoderModel(
            T5Config(vocab_size=len(words), d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=1)
        ).eval()
    return clip, clip_tokenizer, t5, t5_tokenizer


def test_flux_prompt_encoder_matches_the_pipelines_encode_prompt(tmp_path) -> None:
    from diffusers import FluxKontextPipeline

    from fastgrpo.models.prompts import FluxPromptEncoder, PromptEncoder

    clip, tok, t5, tok2 = _tiny_text_encoders(tmp_path)
    encoder = FluxPromptEncoder(clip, tok, t5, tok2, max_sequence_length=8)
    assert isinstance(encoder, PromptEncoder)
    ours = encoder.encode(INSTRUCTIONS)
    stock = FluxKontextPipeline(None, None, clip, tok, t5, tok2, None)
    with torch.no_grad():
        embeds, pooled, _ = stock.encode_prompt(prompt=INSTRUCTIONS, prompt_2=None, max_sequence_length=8)
    assert torch.equal(ours["prompt_embeds"], embeds) and torch.equal(ours["pooled_prompt_embeds"], pooled)
    with pytest.raises(ValueError, match=r"list of strings"):
        encoder.encode("one string")


def test_flux_from_pretrained_with_text_encoders(tmp_path) -> None:
    from diffusers import FluxKontextPipeline

    model, pipe = tiny_flux_kontext(seed=0)
    clip, tok, t5, tok2 = _tiny_text_encoders(tmp_path)
    FluxKontextPipeline(pipe.scheduler, pipe.vae, clip, tok, t5, tok2, pipe.transformer).save_pretrained(
        tmp_path / "ckpt"
    )
    loaded = FluxKontextEditModel.from_pretrained(tmp_path / "ckpt", dtype="float32", device="cpu")
    loaded.prompt_encoder.max_sequence_length = 8
    images = flux_inputs()[0]
    cond = loaded.encode(images, INSTRUCTIONS)
    assert cond.tensors["prompt_embeds"].shape == (2, 8, 32)
    x, t = initial_noise(model), torch.tensor([0.6, 0.2])
    with torch.no_grad():
        torch.testing.assert_close(loaded.velocity(x, t, cond), model.velocity(x, t, cond), rtol=0, atol=0)
    assert loaded.schedule(8, 32, 32) == model.schedule(8, 32, 32)


@pytest.mark.parametrize("which", ["flux", "qwen"])
def test_from_pretrained_without_text_encoders_equals_the_built_model(which: str, tmp_path) -> None:
    build, cls = (tiny_flux_kontext, FluxKontextEditModel) if which == "flux" else (tiny_qwen_image_edit,
                                                                                    QwenImageEditModel)  # fmt: skip
    model, pipe = build(seed=0)
    pipe.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"text_encoders=False"):
        cls.from_pretrained(tmp_path, dtype=torch.float32, device="cpu")
    loaded = load_model(model.model_type, tmp_path, dtype=torch.float32, device="cpu", text_encoders=False,
                        attention_backend="native")  # fmt: skip
    assert type(loaded) is cls and loaded.prompt_encoder is None
    images, embeds = flux_inputs() if which == "flux" else qwen_inputs()
    cond, loaded_cond = model.encode(images, prompt_embeds=embeds), loaded.encode(images, prompt_embeds=embeds)
    x, t = initial_noise(model), torch.tensor([0.6, 0.2])
    with torch.no_grad():
        torch.testing.assert_close(loaded.velocity(x, t, loaded_cond), model.velocity(x, t, cond), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"no prompt encoder"):
        loaded.encode(images, ["an instruction"] * 2)


def test_missing_incomplete_and_wrong_checkpoints_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"nowhere is not a directory: pass a FLUX.1 Kontext checkpoint directory"):
        FluxKontextEditModel.from_pretrained(tmp_path / "nowhere", dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match=r"no model_index.json / transformer/config.json"):
        FluxKontextEditModel.from_pretrained(tmp_path, dtype=torch.float32, device="cpu")
    _, qwen_pipe = tiny_qwen_image_edit(seed=0)
    qwen_pipe.save_pretrained(tmp_path / "qwen")
    with pytest.raises(ValueError, match=r"holds a QwenImageEditPipeline checkpoint, not FluxKontextPipeline"):
        FluxKontextEditModel.from_pretrained(tmp_path / "qwen", dtype=torch.float32, device="cpu")
    (tmp_path / "qwen" / "transformer" / "config.json").unlink()
    with pytest.raises(ValueError, match=r"no transformer/config.json"):
        QwenImageEditModel.from_pretrained(tmp_path / "qwen", dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match=r"dtype 'float8'"):
        QwenImageEditModel.from_pretrained(tmp_path / "qwen", dtype="float8", device="cpu")
    from fastgrpo.models.checkpoints import resolve_checkpoint

    hub_id = "black-forest-labs/FLUX.1-Kontext-dev"  # no such local path: passed through to diffusers untouched
    kwargs = {"pipeline_classes": ("FluxKontextPipeline",), "required": (), "description": "x", "example_hub_id": "x"}
    assert resolve_checkpoint(hub_id, **kwargs) == hub_id


def test_unknown_model_type_lists_the_known_ones() -> None:
    assert {"flux_kontext", "qwen_image_edit", "tiny"} <= set(model_types())
    with pytest.raises(ValueError, match=r"unknown model type 'flux'.*flux_kontext, qwen_image_edit"):
        load_model("flux", "/some/path")
    with pytest.raises(ValueError, match=r"needs a checkpoint path"):
        load_model("flux_kontext", None)


def test_attention_backend_errors_name_the_fix() -> None:
    from fastgrpo.models.checkpoints import set_attention_backend

    model, _ = tiny_flux_kontext(seed=0)
    with pytest.raises(ValueError, match=r"unknown attention backend 'bogus'"):
        set_attention_backend(model.transformer, "bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"install flash-attn"):
            set_attention_backend(model.transformer, "flash")

    class Old(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match=r"upgrade diffusers"):
        set_attention_backend(Old(), "flash")
    set_attention_backend(model.transformer, None)  # no-op


def test_adapter_modules_import_without_diffusers_or_peft() -> None:
    import subprocess
    import sys

    modules = ["flux_kontext", "qwen_image_edit", "lora", "codecs", "prompts", "registry", "builders", "checkpoints"]
    code = "; ".join(f"import fastgrpo.models.{m}" for m in modules)
    code += "; import sys; print(sorted(m for m in ('diffusers', 'peft', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
