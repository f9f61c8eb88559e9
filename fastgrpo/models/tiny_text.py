"""The built-in tiny editor's own parts: a word-level prompt encoder and a lossless pixel-space codec.

The synthetic task's instructions use a closed vocabulary (edit verbs, colours, shapes, grid cells), so a
word-level embedding with learned positions is all the tiny editor needs: no tokenizer files, no download. Word
order matters ("make the red circle blue": the first colour names the object, the second the new colour), hence
the positional embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastgrpo.data.shapes import CELLS, COLOURS, SHAPES

PAD, UNK = "<pad>", "<unk>"
_WORDS = {"make", "the", "move", "to", "remove", "add", "a", "an", "at"}
VOCAB: tuple[str, ...] = (
    PAD,
    UNK,
    *sorted(_WORDS | set(COLOURS) | set(SHAPES) | {w for cell in CELLS for w in cell.split()}),
)


class VocabPromptEncoder(nn.Module):
    """Instructions -> ``prompt_embeds [B, L, D]`` and ``pooled_prompt_embeds [B, P]`` (float32).

    Args:
        dim: token embedding width ``D`` (the transformer's ``joint_attention_dim``).
        pooled_dim: pooled width ``P`` (the transformer's ``pooled_projection_dim``).
        max_words: ``L``; longer instructions raise ``ValueError`` (the synthetic task needs at most 8 words).

    Unknown words map to ``<unk>`` (the editor has never seen them; the embedding is still defined).
    """

    def __init__(self, dim: int = 32, pooled_dim: int = 32, max_words: int = 12) -> None:
        super().__init__()
        self.index = {w: i for i, w in enumerate(VOCAB)}
        self.max_words = max_words
        self.tokens = nn.Embedding(len(VOCAB), dim)
        self.positions = nn.Parameter(torch.zeros(max_words, dim))
        self.pool = nn.Linear(dim, pooled_dim)
        nn.init.normal_(self.tokens.weight, std=0.5)
        nn.init.normal_(self.positions, std=0.1)

    def token_ids(self, instructions: Sequence[str]) -> Tensor:
        """int64 ``[B, L]`` word ids, padded with ``<pad>``."""
        ids = torch.zeros((len(instructions), self.max_words), dtype=torch.int64)
        for row, text in enumerate(instructions):
            words = text.lower().replace(",", " ").replace(".", " ").split()
            if len(words) > self.max_words:
                raise ValueError(f"instruction {text!r} has {len(words)} words; the tiny editor reads at most "
                                 f"{self.max_words}")  # fmt: skip
            ids[row, : len(words)] = torch.tensor(
                [self.index.get(w, self.index[UNK]) for w in words], dtype=torch.int64
            )
        return ids

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        mask = (ids != 0).unsqueeze(-1).to(self.positions.dtype)
        embeds = (self.tokens(ids) + self.positions) * mask
        # a nonlinearity before pooling keeps word order in the pooled vector (a plain mean would lose it)
        pooled = self.pool((torch.tanh(embeds) * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        return embeds, pooled

    @torch.no_grad()
    def encode(self, instructions: Sequence[str]) -> dict[str, Tensor]:
        """The :class:`~fastgrpo.models.prompts.PromptEncoder` contract (no gradient)."""
        device = self.positions.device
        embeds, pooled = self(self.token_ids(instructions).to(device))
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


class PixelCodec:
    """Lossless pixel-space latents: ``2 x - 1`` in [-1, 1], folded ``factor x factor`` into channels.

    ``encode``: images ``[B, 3, H, W]`` in [0, 1] -> ``[B, 3 f^2, H / f, W / f]`` (``pixel_unshuffle``); ``decode``
    inverts it and clamps to [0, 1]. With the 2x2 packing of the Kontext path a 32x32 image becomes 64 tokens of
    48 channels (f = 2), which keeps the tiny editor cheap enough to train and run on a CPU.
    """

    def __init__(self, factor: int = 2) -> None:
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        self.spatial_factor = factor
        self.latent_channels = 3 * factor * factor

    def encode(self, images: Tensor) -> Tensor:
        return torch.nn.functional.pixel_unshuffle(images * 2.0 - 1.0, self.spatial_factor)

    def decode(self, latents: Tensor) -> Tensor:
        images = torch.nn.functional.pixel_shuffle(latents.float(), self.spatial_factor)
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)
