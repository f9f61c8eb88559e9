"""The tiny editor's prompt encoder and pixel codec."""

from __future__ import annotations

import pytest
import torch

from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.models.tiny_text import UNK, VOCAB, PixelCodec, VocabPromptEncoder


def test_every_synthetic_instruction_is_in_vocabulary():
    enc = VocabPromptEncoder()
    task = SyntheticEditTask(seed=0)
    ids = enc.token_ids([task.sample(i).instruction for i in range(300)])
    assert not (ids == VOCAB.index(UNK)).any()


def test_word_order_changes_the_embedding_and_padding_does_not_leak():
    enc = VocabPromptEncoder()
    a = enc.encode(["make the red circle blue"])
    b = enc.encode(["make the blue circle red"])
    assert not torch.allclose(a["pooled_prompt_embeds"], b["pooled_prompt_embeds"])
    assert a["prompt_embeds"].shape == (1, 12, 32) and a["pooled_prompt_embeds"].shape == (1, 32)
    assert torch.equal(a["prompt_embeds"][0, 5:], torch.zeros(7, 32))


def test_too_long_instruction_is_refused():
    with pytest.raises(ValueError, match="at most 12"):
        VocabPromptEncoder().token_ids([" ".join(["red"] * 13)])


@pytest.mark.parametrize("factor", [1, 2])
def test_pixel_codec_round_trip(factor):
    images = torch.rand(2, 3, 8, 8)
    codec = PixelCodec(factor)
    latents = codec.encode(images)
    assert latents.shape == (2, 3 * factor**2, 8 // factor, 8 // factor)
    assert latents.min() >= -1 and latents.max() <= 1
    torch.testing.assert_close(codec.decode(latents), images)
