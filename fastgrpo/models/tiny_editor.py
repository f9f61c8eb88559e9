"""The built-in tiny editor: a small FLUX.1-Kontext-architecture transformer on 32x32 pixels.

It runs through exactly the adapter code of FLUX.1 Kontext
(:class:`~fastgrpo.models.flux_kontext.FluxKontextEditModel`: 2x2 packing, the source image as context tokens, the
same ``velocity``), with two substitutions that need no download: a lossless pixel-space codec
(:class:`~fastgrpo.models.tiny_text.PixelCodec`) instead of a VAE, and a word-level prompt encoder
(:class:`~fastgrpo.models.tiny_text.VocabPromptEncoder`) instead of CLIP + T5; like FLUX.1 Kontext it takes one
input image per condition (reference images are refused). Two sets of weights ship,
one per image size of the synthetic task of :mod:`fastgrpo.data.synthetic`: ``weights/tiny_editor.safetensors``
(32x32 pixels, rebuilt by ``python -m fastgrpo.train.pretrain_tiny``) and ``weights/tiny_editor_16.safetensors``
(16x16, ``... pretrain_tiny --size 16 --steps 4000``; the demo's: a quarter of the pixels makes each GRPO gradient
estimate far less noisy and each iteration about four times cheaper). Both come from supervised flow matching;
the ``.json`` beside each file records its command and held-out scores. The architecture is the same for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_SIZE = 32
WEIGHTS = Path(__file__).parent / "weights" / "tiny_editor.safetensors"
#: the packaged weights per image side (pixels) of the synthetic task they were trained on
PACKAGED_WEIGHTS: dict[int, Path] = {32: WEIGHTS, 16: WEIGHTS.with_name("tiny_editor_16.safetensors")}
# 6 heads x 16 = hidden 96; rotary axes (4, 6, 6) split the 16-wide heads; 2x2 packing of the codec's
# 12 channels (3 colours folded 2x2) -> 48 per token, 64 tokens for a 32x32 image
TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 48,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 6,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "guidance_embeds": False,
    "axes_dims_rope": (4, 6, 6),
}
# rectified-flow schedule without shift (pixel space at 32x32 needs none)
SCHEDULER_CONFIG: dict[str, Any] = {"shift": 1.0, "use_dynamic_shifting": False}
TRAIN_STEPS, EVAL_STEPS = 8, 20


def packaged_weights(size: int = TINY_SIZE) -> Path:
    """The packaged weights for ``size x size`` images; ``ValueError`` naming the sizes and the rebuild command."""
    if size not in PACKAGED_WEIGHTS:
        raise ValueError(
            f"the tiny editor ships weights for {' and '.join(f'{s}x{s}' for s in sorted(PACKAGED_WEIGHTS))} images, "
            f"not {size}x{size}; train some with `python -m fastgrpo.train.pretrain_tiny --size {size} --out FILE` "
            "and pass model.path=FILE"
        )
    return PACKAGED_WEIGHTS[size]


def build_tiny_editor(
    weights: str | Path | None = WEIGHTS,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Any:
    """The tiny editor as a :class:`FluxKontextEditModel`; ``weights=None`` gives random initialisation (seeded).

    Raises ``FileNotFoundError`` naming the rebuild command when the weights file is missing.
    """
    from diffusers import FluxTransformer2DModel

    from fastgrpo.models.flux_kontext import FluxKontextEditModel
    from fastgrpo.models.tiny_text import PixelCodec, VocabPromptEncoder

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**TRANSFORMER_CONFIG)
        encoder = VocabPromptEncoder(
            dim=TRANSFORMER_CONFIG["joint_attention_dim"], pooled_dim=TRANSFORMER_CONFIG["pooled_projection_dim"]
        )
    if weights is not None:
        load_weights(transformer, encoder, weights)
    transformer.to(device=device)
    if dtype != torch.float32:
        transformer.to(dtype=dtype)
    transformer.eval()
    encoder.to(device=device).eval()
    for p in (*transformer.parameters(), *encoder.parameters()):
        p.requires_grad_(False)
    return FluxKontextEditModel(
        transformer=transformer, codec=PixelCodec(), scheduler_config=dict(SCHEDULER_CONFIG), prompt_encoder=encoder
    )


def load_weights(transformer: torch.nn.Module, encoder: torch.nn.Module, path: str | Path) -> None:
    """Load ``transformer.*`` and ``prompt_encoder.*`` tensors from a safetensors file (strict)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"tiny editor weights not found at {path}; rebuild them with `python -m fastgrpo.train.pretrain_tiny`"
        )
    state = load_file(str(path))
    for prefix, module in (("transformer.", transformer), ("prompt_encoder.", encoder)):
        part = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)


def save_weights(transformer: torch.nn.Module, encoder: torch.nn.Module, path: str | Path) -> Path:
    """Write both modules to one safetensors file atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"transformer.{k}": v.detach().cpu().contiguous() for k, v in transformer.state_dict().items()}
    state |= {f"prompt_encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "model": "fastgrpo-tiny-editor"})
    tmp.replace(path)
    return path
