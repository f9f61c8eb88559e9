"""The CLIP reward (SPEC S2): text alignment of the edit, preservation outside the mask, edit direction.

``score = text_weight · text + keep_weight · keep + direction_weight · direction``, each term a cosine in
``[-1, 1]`` between L2-normalised open_clip embeddings ``E``:

- ``text = cos(E_img(edited), E_txt(output caption, else the instruction))``;
- ``keep``: with a mask, ``cos(E_img(edited ⊙ outside), E_img(source ⊙ outside))`` where the region meant to change
  is painted with the encoder's mean colour in both images (see :meth:`ClipReward.keep_inputs` for why pixels and
  not features are masked); without a mask the whole images, ``cos(E_img(edited), E_img(source))``;
- ``direction = cos(E_img(edited) - E_img(source), E_txt(output caption) - E_txt(input caption))`` where both
  captions exist; where they do not, the term is NaN in ``details`` and contributes nothing to ``score`` (a GRPO
  group shares its captions, so its samples stay comparable).

Images are resized whole (no centre crop) to the model's input size on the device, batched ``batch_size`` at a
time, in reduced precision by default on CUDA (bf16 weights and activations; the cosines are taken in float32).
On CUDA the reward runs on its own stream, so that it overlaps with the trainer's work when called from the
:class:`~fastgrpo.rewards.async_eval.AsyncRewardEvaluator` thread. A sample whose source or edited image has a
non-finite pixel scores NaN.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fastgrpo.rewards.base import RewardBatch, RewardFunction, RewardResult
from fastgrpo.rewards.clip_loading import LoadedClip, load_clip
from fastgrpo.rewards.config import dataclass_from_mapping
from fastgrpo.rewards.images import is_finite_image, resize_batch, to_mask_tensor

__all__ = ["ClipReward", "ClipRewardConfig"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ClipRewardConfig:
    """Configuration of :class:`ClipReward`.

    Attributes:
        model: open_clip architecture name, ``local-dir:FOLDER`` or an architecture ``.json`` file
            (:mod:`~fastgrpo.rewards.clip_loading`).
        pretrained: checkpoint file, or an open_clip pretrained tag already in the cache (never downloaded).
        cache_dir: where cached tags are looked up (default: the Hugging Face hub cache and ``~/.cache/clip``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        batch_size: images per encoder call.
        text_weight, keep_weight, direction_weight: weights of the three terms (finite, >= 0, not all zero).
    """

    model: str = "ViT-B-32"
    pretrained: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    text_weight: float = 1.0
    keep_weight: float = 0.5
    direction_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.precision not in ("auto", *_DTYPES):
            raise ValueError(f"ClipRewardConfig.precision={self.precision!r}; use auto, fp32, bf16 or fp16")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"ClipRewardConfig.batch_size must be an integer >= 1, got {self.batch_size!r}")
        weights = (self.text_weight, self.keep_weight, self.direction_weight)
        if not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
            raise ValueError(f"ClipRewardConfig weights (text, keep, direction)={weights}: finite, >= 0, not all 0")

    @classmethod
    def from_mapping(cls, mapping: Any, where: str = "clip") -> ClipRewardConfig:
        return dataclass_from_mapping(cls, mapping, where)


def _unique(keys: Sequence[object]) -> tuple[list[int], list[int]]:
    """``(first index of each distinct key, slot of every key among the distinct ones)``."""
    slots: dict[object, int] = {}
    firsts: list[int] = []
    inverse: list[int] = []
    for index, key in enumerate(keys):
        if key not in slots:
            slots[key] = len(firsts)
            firsts.append(index)
        inverse.append(slots[key])
    return firsts, inverse


class ClipReward(RewardFunction):
    """CLIP reward in ``[-W, W]`` with ``W = text_weight + keep_weight + direction_weight``; NaN for non-finite images.

    Args:
        config: a :class:`ClipRewardConfig` or a mapping of its fields.
        loaded: an already loaded model (then ``model``/``pretrained`` of the config are not used); see
            :meth:`from_model`.

    ``details`` of a result: ``text``, ``keep``, ``direction`` (each ``[B]`` float32 in ``[-1, 1]``).
    """

    def __init__(
        self, config: ClipRewardConfig | Mapping[str, Any] | None = None, *, loaded: LoadedClip | None = None
    ) -> None:
        if config is None:
            config = ClipRewardConfig()
        self.config = config if isinstance(config, ClipRewardConfig) else ClipRewardConfig.from_mapping(config)
        cfg = self.config
        want = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(want)
        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        self.dtype = _DTYPES[precision]
        self._clip: LoadedClip = loaded if loaded is not None else load_clip(cfg.model, cfg.pretrained, cfg.cache_dir)
        self.model = self._clip.model.to(device=self.device, dtype=self.dtype)
        self._mean = torch.tensor(self._clip.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self._clip.std, device=self.device).view(1, 3, 1, 1)
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        total = cfg.text_weight + cfg.keep_weight + cfg.direction_weight
        self.score_range = (-total, total)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        config: ClipRewardConfig | None = None,
        *,
        image_size: int | tuple[int, int] = 224,
        mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073),
        std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711),
    ) -> ClipReward:
        """A reward around a model already in memory (it is moved to the config's device and precision in place)."""
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        model.eval().requires_grad_(False)
        loaded = LoadedClip(model, tokenizer, size, tuple(mean), tuple(std))  # type: ignore[arg-type]
        return cls(config or ClipRewardConfig(), loaded=loaded)

    @property
    def image_size(self) -> tuple[int, int]:
        """Encoder input ``(height, width)`` in pixels."""
        return self._clip.image_size

    # --- encoders ------------------------------------------------------------------------------------------------

    def _chunks(self, count: int) -> Iterator[slice]:
        for start in range(0, count, self.config.batch_size):
            yield slice(start, min(start + self.config.batch_size, count))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``float32 [N, D]`` unit image embeddings of normalised pixels ``[N, 3, *image_size]`` on the device."""
        parts = [self.model.encode_image(pixels[s].to(self.dtype)).float() for s in self._chunks(pixels.shape[0])]
        return F.normalize(torch.cat(parts), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``float32 [N, D]`` unit text embeddings (each distinct string encoded once)."""
        firsts, inverse = _unique(list(texts))
        distinct = [texts[i] for i in firsts]
        parts = []
        for s in self._chunks(len(distinct)):
            tokens = self._clip.tokenizer(distinct[s]).to(self.device)
            parts.append(self.model.encode_text(tokens).float())
        return F.normalize(torch.cat(parts), dim=-1)[torch.tensor(inverse, device=self.device)]

    def _normalised(self, items: Sequence[Any]) -> torch.Tensor:
        pixels = torch.nan_to_num(resize_batch(items, self.image_size, self.device))
        return (pixels - self._mean) / self._std

    def _masks(self, items: Sequence[Any]) -> torch.Tensor:
        """``bool [N, 1, *image_size]`` at the encoder's resolution, conservatively: an encoder pixel is masked if
        any input pixel meant to change can reach it through the bicubic resize (whose kernel spans 2 pixels of
        the coarser grid either side), so that no edited pixel leaks into the preserved region."""
        out = []
        height, width = self.image_size
        for item in items:
            mask = to_mask_tensor(item, self.device).float()[None, None]
            if tuple(mask.shape[-2:]) != (height, width):
                mask = F.interpolate(mask, size=self.image_size, mode="area")
                radius = math.ceil(2 * max(1.0, height / item.shape[0], width / item.shape[1]))
                mask = F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)
            out.append(mask > 0)
        return torch.cat(out)

    def keep_inputs(self, sources: Sequence[Any], edited: Sequence[Any], masks: Sequence[Any]) -> torch.Tensor:
        """``float32 [N]`` preservation cosine of images with a mask: the masked *pixels* are painted with the
        encoder's mean colour (zero after normalisation) in both images before encoding.

        Why pixels and not features: masking the patch tokens of one forward pass would be cheaper, but after the
        first attention layer every token has seen the whole image, so a correct edit inside the mask moves the
        features outside it and the preservation term would punish the very edit the instruction asked for. With
        the region painted identically in both images, the term is exactly 1 when everything outside the mask is
        unchanged, whatever happened inside, and it works with every open_clip tower (ViT, ConvNeXt, ResNet), not
        only those that expose patch tokens. The price is two more encodes per masked sample; the source side is
        encoded once per distinct (source, mask) object, so a GRPO group of G edits of one source costs ``G + 1``.
        """
        firsts, inverse = _unique([(id(s), id(m)) for s, m in zip(sources, masks, strict=True)])
        mask_px = self._masks(masks)
        edited_emb = self.encode_pixels(self._normalised(edited).masked_fill(mask_px, 0.0))
        source_px = self._normalised([sources[i] for i in firsts]).masked_fill(mask_px[firsts], 0.0)
        source_emb = self.encode_pixels(source_px)[torch.tensor(inverse, device=self.device)]
        return (edited_emb * source_emb).sum(-1)

    # --- scoring -------------------------------------------------------------------------------------------------

    def _finite(self, items: Sequence[Any]) -> torch.Tensor:
        """``bool [N]`` on the device: whether each image's pixels are all finite (device tensors are checked on the
        device, without a host sync)."""
        flags = torch.tensor([is_finite_image(x) if not isinstance(x, torch.Tensor) else True for x in items])
        flags = flags.to(self.device)
        floating = [i for i, x in enumerate(items) if isinstance(x, torch.Tensor) and x.dtype.is_floating_point]
        if floating:
            checks = torch.stack([torch.isfinite(items[i]).all().to(self.device) for i in floating])
            flags[floating] = flags[floating] & checks
        return flags

    def _stream_context(self) -> contextlib.AbstractContextManager[Any]:
        if self._stream is None:
            return contextlib.nullcontext()
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        return torch.cuda.stream(self._stream)

    def evaluate(self, batch: RewardBatch) -> RewardResult:
        """Score ``batch``; ``details`` hold the three cosines (see the class docstring)."""
        size = batch.size
        masked = [i for i, m in enumerate(batch.masks) if m is not None]
        unmasked = [i for i, m in enumerate(batch.masks) if m is None]
        directional = [i for i, c in enumerate(batch.captions) if c is not None and c.both]
        with torch.inference_mode(), self._stream_context():
            bad = ~(self._finite(batch.edited) & self._finite(batch.sources))
            nan = torch.full((size,), math.nan, device=self.device)
            edited_emb = self.encode_pixels(self._normalised(batch.edited))
            pairs = zip(batch.captions, batch.instructions, strict=True)
            targets = [c.edited if c is not None and c.edited else t for c, t in pairs]
            text = (edited_emb * self.encode_texts(targets)).sum(-1)
            keep, direction = nan.clone(), nan.clone()
            need_source = sorted(set(unmasked) | set(directional))
            source_emb = torch.zeros_like(edited_emb)
            if need_source:
                firsts, inverse = _unique([id(batch.sources[i]) for i in need_source])
                unique_emb = self.encode_pixels(self._normalised([batch.sources[need_source[j]] for j in firsts]))
                source_emb[need_source] = unique_emb[torch.tensor(inverse, device=self.device)]
            if unmasked:
                keep[unmasked] = (edited_emb[unmasked] * source_emb[unmasked]).sum(-1)
            if masked:
                pick = lambda seq: [seq[i] for i in masked]  # noqa: E731
                keep[masked] = self.keep_inputs(pick(batch.sources), pick(batch.edited), pick(batch.masks))
            if directional:
                captions = [batch.captions[i] for i in directional]
                text_out = self.encode_texts([c.edited for c in captions])  # type: ignore[union-attr]
                text_in = self.encode_texts([c.source for c in captions])  # type: ignore[union-attr]
                image_delta = edited_emb[directional] - source_emb[directional]
                direction[directional] = F.cosine_similarity(image_delta, text_out - text_in, dim=-1, eps=1e-8)
            cfg = self.config
            score = cfg.text_weight * text + cfg.keep_weight * keep + cfg.direction_weight * direction.nan_to_num(0.0)
            terms = {"text": text, "keep": keep, "direction": direction}
            details = {name: value.masked_fill(bad, math.nan).float().cpu() for name, value in terms.items()}
            score = score.masked_fill(bad, math.nan).float().cpu()
            failed = bad.cpu().tolist()
        failures = tuple("source or edited image has non-finite pixels" if f else None for f in failed)
        return RewardResult(score=score, details=details, failures=failures)
