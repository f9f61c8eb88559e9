"""What a reward component is: it scores a batch of edits and returns one float32 per sample, NaN where it could not.

A component is called on a :class:`RewardBatch` — source images, edited images, instructions, optional masks of the
region meant to change, optional captions and, for the built-in synthetic task, the structured edit specs — and
returns a :class:`RewardResult`: the ``[B]`` float32 score in the component's documented range, its sub-terms (for
logging) and the reason for every sample it could not score. A component never invents a score: a failure is NaN
with a reason, and NaN flows into the GRPO advantages as "left out" (SPEC S3).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from fastgrpo.data.shapes import EditSpec
from fastgrpo.rewards.images import ImageBatch, MaskBatch, split_images, split_masks

__all__ = ["EditCaptions", "RewardBatch", "RewardFunction", "RewardResult"]


@dataclass(frozen=True)
class EditCaptions:
    """Captions of one edit (MagicBrush / InstructPix2Pix style data has them).

    Attributes:
        source: caption of the source image (the "input caption"), or None.
        edited: caption of the intended result (the "output caption"), or None.
    """

    source: str | None = None
    edited: str | None = None

    @classmethod
    def coerce(cls, value: Any, where: str) -> EditCaptions | None:
        """``None``, an :class:`EditCaptions` or a ``(source, edited)`` pair; anything else is a ``ValueError``."""
        if value is None or isinstance(value, EditCaptions):
            return value
        if isinstance(value, (tuple, list)) and len(value) == 2:
            source, edited = value
            for part in (source, edited):
                if part is not None and not isinstance(part, str):
                    raise ValueError(f"{where} must hold strings or None, got {type(part).__name__}")
            return cls(source=source or None, edited=edited or None)
        raise ValueError(f"{where} must be None, EditCaptions(source, edited) or a (source, edited) pair")

    @property
    def both(self) -> bool:
        """Whether both captions exist (what the directional CLIP term needs)."""
        return bool(self.source) and bool(self.edited)


@dataclass(frozen=True, eq=False)
class RewardBatch:
    """One batch of ``B`` edits to score, normalised and checked (use :meth:`build`).

    Attributes:
        sources, edited: ``B`` image items each (see :mod:`fastgrpo.rewards.images` for what is accepted).
        instructions: ``B`` edit instructions.
        masks: ``B`` mask items (``None`` where a sample has no mask).
        captions: ``B`` :class:`EditCaptions` or ``None``.
        specs: ``B`` :class:`~fastgrpo.data.shapes.EditSpec` of the synthetic task, or ``None`` when unknown.
    """

    sources: tuple[Any, ...]
    edited: tuple[Any, ...]
    instructions: tuple[str, ...]
    masks: tuple[Any, ...]
    captions: tuple[EditCaptions | None, ...]
    specs: tuple[EditSpec | None, ...]

    @classmethod
    def build(
        cls,
        sources: ImageBatch,
        edited: ImageBatch,
        instructions: Sequence[str],
        masks: MaskBatch = None,
        captions: Sequence[Any] | None = None,
        *,
        specs: Sequence[EditSpec | None] | None = None,
    ) -> RewardBatch:
        """The batch to hand to ``evaluate`` / ``submit`` of a component, a composite or the async evaluator.

        Args:
            sources: ``B`` source images: a tensor ``[B, 3, H, W]`` (float in ``[0, 1]`` on any device, or uint8)
                or a sequence of ``B`` items (uint8 / float numpy ``[H, W, 3]``, PIL images, tensors ``[3, H, W]``);
                see :mod:`fastgrpo.rewards.images`.
            edited: ``B`` edited images, accepted in the same forms as ``sources`` (sizes may differ from them).
            instructions: ``B`` edit instructions (a sequence of ``str``, not a single string).
            masks: ``None`` (no sample has a mask), a tensor ``[B, H, W]`` / ``[B, 1, H, W]`` or ``B`` items
                (``None``, bool or number array / tensor ``[H, W]``); ``True`` marks the region meant to change.
            captions: ``None`` or ``B`` entries, each ``None``, an :class:`EditCaptions` or a
                ``(source_caption, edited_caption)`` pair of strings / ``None``.
            specs: keyword only; ``None`` or ``B`` entries, each ``None`` or the
                :class:`~fastgrpo.data.shapes.EditSpec` of a synthetic-task sample (what the rule reward checks).

        Images are referenced, not copied or converted here; each component converts what it needs.

        Raises:
            ValueError: ``edited`` is empty, an argument has another length than ``edited``, an image or mask has
                the wrong rank, channel count or dtype, an instruction is not a string, a caption is not a pair of
                strings, or a spec is not an ``EditSpec``; the message names the argument (and item) and the fix.
        """
        edited_items = split_images(edited, "edited")
        batch = len(edited_items)
        if batch == 0:
            raise ValueError("edited is empty; pass at least one edited image")
        source_items = split_images(sources, "sources")
        if isinstance(instructions, str) or not isinstance(instructions, Sequence):
            raise ValueError("instructions must be a list of strings, one per sample")
        for name, length in (("sources", len(source_items)), ("instructions", len(instructions))):
            if length != batch:
                raise ValueError(f"{name} has {length} entries but edited has {batch}; pass one per sample")
        for index, text in enumerate(instructions):
            if not isinstance(text, str):
                raise ValueError(f"instructions[{index}] must be a string, got {type(text).__name__}")
        caption_items = [None] * batch if captions is None else list(captions)
        spec_items = [None] * batch if specs is None else list(specs)
        for name, values in (("captions", caption_items), ("specs", spec_items)):
            if len(values) != batch:
                raise ValueError(f"{name} has {len(values)} entries but edited has {batch}; pass one per sample")
        for index, spec in enumerate(spec_items):
            if spec is not None and not isinstance(spec, EditSpec):
                raise ValueError(f"specs[{index}] must be a fastgrpo.data.shapes.EditSpec or None")
        return cls(
            sources=tuple(source_items),
            edited=tuple(edited_items),
            instructions=tuple(instructions),
            masks=tuple(split_masks(masks, batch)),
            captions=tuple(EditCaptions.coerce(c, f"captions[{i}]") for i, c in enumerate(caption_items)),
            specs=tuple(spec_items),
        )

    @property
    def size(self) -> int:
        """``B``."""
        return len(self.edited)


@dataclass(eq=False)
class RewardResult:
    """A component's answer for one batch.

    Attributes:
        score: ``[B]`` float32 on CPU, in the component's ``score_range``; NaN where the sample could not be scored.
        details: sub-terms by name, each ``[B]`` float32 on CPU (logged, never summed into the reward by themselves).
        failures: ``B`` entries, the reason a sample was not scored, or None where it was.
    """

    score: torch.Tensor
    details: dict[str, torch.Tensor] = field(default_factory=dict)
    failures: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.score, torch.Tensor) or self.score.dim() != 1:
            raise ValueError(f"RewardResult.score must be a tensor [B], got {getattr(self.score, 'shape', None)}")
        if not self.failures:
            self.failures = (None,) * self.score.shape[0]
        if len(self.failures) != self.score.shape[0]:
            raise ValueError("RewardResult.failures needs one entry (reason or None) per sample")

    @property
    def failed(self) -> int:
        """Number of samples without a score."""
        return sum(reason is not None for reason in self.failures)


class RewardFunction(ABC):
    """Base of every reward component.

    Subclasses set ``score_range`` (the documented bounds of ``score``) and implement :meth:`evaluate`. Components
    that wait on I/O (the MLLM judge) override :meth:`submit` to return before the work is done.
    """

    score_range: tuple[float, float] = (-math.inf, math.inf)

    @abstractmethod
    def evaluate(self, batch: RewardBatch) -> RewardResult:
        """Score ``batch`` (blocking)."""

    def submit(self, batch: RewardBatch) -> Future[RewardResult]:
        """Start scoring ``batch``; the default computes now and returns a finished future (errors are set on it)."""
        future: Future[RewardResult] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(self.evaluate(batch))
        except BaseException as error:  # handed to whoever reads the future
            future.set_exception(error)
        return future

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release threads, connections or device memory (a no-op by default)."""

    def __enter__(self) -> RewardFunction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
