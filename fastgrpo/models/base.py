"""The editing-model adapter interface: the only thing the trainer knows about a model.

An adapter wraps one flow-matching editing model (FLUX.1 Kontext, Qwen-Image-Edit, the built-in tiny editor). The
trainer works on *packed* latents ``[B, N, C]`` (N image tokens of C channels, the layout the transformer
consumes) and calls, per iteration:

1. :meth:`EditModel.encode` once per distinct condition (source image + instruction) -> :class:`Condition`, then
   :meth:`Condition.index_select` repeats it for the samples of each group;
2. :meth:`EditModel.initial_noise` for the resolution bucket;
3. :meth:`EditModel.velocity` in batched forwards along the :meth:`EditModel.schedule`;
4. :meth:`EditModel.decode` of the final latents for the rewards.

LoRA: :meth:`EditModel.add_lora` attaches trainable adapters to :attr:`EditModel.transformer`;
:meth:`EditModel.reference` is a context in which the adapters are off (the reference policy, no second copy of
the weights); :meth:`EditModel.lora_state_dict` names the adapter's weights; :meth:`EditModel.save_lora` /
:meth:`EditModel.load_lora` use the diffusers LoRA format. :meth:`EditModel.compile_blocks` compiles the repeated
transformer blocks in place (``runtime.compile``).

Input images: a condition has the image to edit and, in some data sets, reference images after it (Flow-GRPO's
``dual_ref``; Qwen-Image-Edit-2509 and FLUX.2 take several input images). :attr:`EditModel.max_input_images` says
how many a model takes; :meth:`EditModel.encode` receives each condition's references as a list and refuses ones it
cannot use (:meth:`EditModel.check_references`), never dropping them silently. Every adapter here (FLUX.1 Kontext,
Qwen-Image-Edit, the tiny editor) takes one.

Conventions (SPEC): rectified flow, ``t`` in [0, 1] with 1 = noise, the velocity is ``v = eps - x_0``; images are
float tensors ``[B, 3, H, W]`` in [0, 1] at the boundary (PIL images and uint8 arrays are converted by
:func:`images_to_tensor`).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastgrpo.core.schedule import StepSchedule


@dataclass
class Condition:
    """Encoded conditions of a batch: named tensors whose first dimension is the batch.

    Attributes:
        tensors: model-specific tensors, each ``[B, ...]`` (e.g. ``prompt_embeds [B, L, D]``, packed source-image
            latents ``[B, N_src, C]``); per-sample values only, so that selecting/repeating rows is always valid.
        height, width: pixel size of the images this condition belongs to (one resolution per batch).
        seq_masks: variable-length sequence tensors and their masks, ``{"prompt_embeds": "prompt_embeds_mask"}``:
            ``tensors[name]`` is ``[B, L, ...]`` and ``tensors[mask] [B, L]`` is 1 on real tokens, 0 on padding.
            :meth:`cat` right-pads such tensors (zeros, mask 0) to the longest ``L`` instead of refusing to join
            conditions whose prompts have different lengths.
    """

    tensors: dict[str, Tensor]
    height: int
    width: int
    seq_masks: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tensors:
            raise ValueError("a Condition needs at least one tensor; encode the sources with EditModel.encode")
        for name, mask in self.seq_masks.items():
            if name not in self.tensors or mask not in self.tensors:
                raise ValueError(
                    f"seq_masks names {name!r} -> {mask!r} but the tensors are {sorted(self.tensors)}; "
                    "name both the sequence tensor and its mask"
                )

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def _with(self, tensors: dict[str, Tensor]) -> Condition:
        return Condition(tensors, self.height, self.width, dict(self.seq_masks))

    def index_select(self, index: Tensor) -> Condition:
        """Rows ``index`` (int64 ``[M]``) of every tensor."""
        return self._with({k: v.index_select(0, index.to(v.device)) for k, v in self.tensors.items()})

    def repeat_interleave(self, repeats: int) -> Condition:
        """Each condition repeated ``repeats`` times in a row (a group of G samples per condition)."""
        return self._with({k: v.repeat_interleave(repeats, dim=0) for k, v in self.tensors.items()})

    def to(self, device: torch.device | str) -> Condition:
        return self._with({k: v.to(device) for k, v in self.tensors.items()})

    @staticmethod
    def cat(conditions: Sequence[Condition]) -> Condition:
        """Concatenate along the batch; all must share the resolution and tensor names.

        Sequence tensors named in ``seq_masks`` are right-padded to the longest length first (zeros, mask 0).
        Raises ``ValueError`` for an empty list, mixed resolutions or different tensor names.
        """
        if not conditions:
            raise ValueError("Condition.cat needs at least one condition")
        first = conditions[0]
        for c in conditions[1:]:
            if (c.height, c.width) != (first.height, first.width):
                raise ValueError(
                    f"cannot batch conditions of {c.height}x{c.width} with {first.height}x{first.width}: "
                    "a batch holds one resolution (bucket the data set by resolution)"
                )
            if set(c.tensors) != set(first.tensors) or c.seq_masks != first.seq_masks:
                raise ValueError(
                    f"cannot batch conditions with tensors {sorted(c.tensors)} and {sorted(first.tensors)}: "
                    "encode all of them with the same model and options"
                )
        padded = set(first.seq_masks) | set(first.seq_masks.values())
        tensors = {k: _cat_padded([c.tensors[k] for c in conditions], k in padded) for k in first.tensors}
        return Condition(tensors, first.height, first.width, dict(first.seq_masks))


def _cat_padded(parts: Sequence[Tensor], pad: bool) -> Tensor:
    """``torch.cat`` along dim 0; with ``pad``, dim 1 is first right-padded with zeros to the longest part."""
    if pad:
        longest = max(p.shape[1] for p in parts)
        parts = [
            torch.cat([p, p.new_zeros((p.shape[0], longest - p.shape[1], *p.shape[2:]))], dim=1)
            if p.shape[1] < longest
            else p
            for p in parts
        ]
    return torch.cat(list(parts))


def images_to_tensor(images: Any, *, size: tuple[int, int] | None = None) -> Tensor:
    """Images -> float32 ``[B, 3, H, W]`` in [0, 1].

    Accepts a float tensor ``[B, 3, H, W]`` in [0, 1], a uint8 tensor ``[B, H, W, 3]``, or a sequence of PIL
    images / uint8 arrays ``[H, W, 3]`` that all have one size. RGB only: a PIL image in another mode raises
    ``ValueError`` naming the fix (``image.convert("RGB")``), as do float values outside [0, 1], images of several
    sizes in one batch, and a size other than ``size`` (H, W) when given.
    """
    if isinstance(images, Tensor):
        tensor = images
        if tensor.dtype == torch.uint8:
            if tensor.dim() != 4 or tensor.shape[-1] != 3:
                raise ValueError(f"uint8 images must be [B, H, W, 3], got {tuple(tensor.shape)}")
            tensor = tensor.permute(0, 3, 1, 2).float() / 255.0
        elif tensor.dim() != 4 or tensor.shape[1] != 3 or not tensor.dtype.is_floating_point:
            raise ValueError(
                f"image tensors must be float [B, 3, H, W] in [0, 1], got {tensor.dtype} {tuple(tensor.shape)}"
            )
        elif tensor.numel() and bool((tensor.amin() < 0.0) | (tensor.amax() > 1.0)):
            # one host sync per encoded batch (not in the rollout loop); [-1, 1] or 0-255 inputs are common slips
            raise ValueError(
                f"image values span [{float(tensor.amin()):.3g}, {float(tensor.amax()):.3g}]; pass float images in "
                "[0, 1] (x / 255 for 0-255 values, (x + 1) / 2 for [-1, 1] values)"
            )
    else:
        if hasattr(images, "mode") or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]  # one PIL image or one [H, W, 3] array
        arrays = []
        for i, image in enumerate(images):
            mode = getattr(image, "mode", None)
            if mode is not None and mode != "RGB":
                raise ValueError(f"image {i} has mode {mode!r}; pass RGB images (image.convert('RGB'))")
            array = np.asarray(image)
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
                raise ValueError(f"image {i} must be uint8 [H, W, 3] RGB, got {array.dtype} {array.shape}")
            arrays.append(array)
        if not arrays:
            raise ValueError("no images given; pass at least one source image")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(
                f"images of several sizes in one batch {sorted(shapes)}: a batch holds one resolution "
                "(bucket the data set by resolution)"
            )
        tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    if size is not None and tuple(tensor.shape[-2:]) != tuple(size):
        raise ValueError(
            f"images are {tensor.shape[-2]}x{tensor.shape[-1]} but this model takes {size[0]}x{size[1]}; "
            "resize them (the data layer's resolution buckets do this)"
        )
    return tensor


class EditModel(abc.ABC):
    """A flow-matching editing model as the trainer sees it (see the module docstring)."""

    #: model type name used in configs (``"flux_kontext"``, ``"qwen_image_edit"``, ``"tiny"``)
    model_type: str = ""
    #: input images per condition the model takes: the image to edit plus this many minus one references
    max_input_images: int = 1

    @property
    @abc.abstractmethod
    def transformer(self) -> torch.nn.Module:
        """The denoiser (the module LoRA attaches to)."""

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @abc.abstractmethod
    def encode(
        self,
        sources: Any,
        instructions: Sequence[str] | None = None,
        *,
        prompt_embeds: Mapping[str, Tensor] | None = None,
        references: Sequence[Sequence[Any]] | None = None,
    ) -> Condition:
        """Encode source images (see :func:`images_to_tensor`) and instructions, or injected prompt embeddings;
        ``references``: per condition, its reference images (uint8 ``[H, W, 3]`` arrays), checked with
        :meth:`check_references`."""

    def check_references(self, references: Sequence[Sequence[Any]] | None) -> None:
        """Refuse reference images this model cannot take.

        Args:
            references: per condition, its reference images (``None`` or empty lists: none).

        Raises:
            ValueError: a condition has more than ``max_input_images - 1`` references; the message names the model,
                says that it would not use them, and names the fix.
        """
        counts = [len(refs) for refs in references or ()]
        over = [n for n in counts if n > self.max_input_images - 1]
        if not over:
            return
        takes = "one input image" if self.max_input_images == 1 else f"{self.max_input_images} input images"
        raise ValueError(
            f"{type(self).__name__} takes {takes} per condition (the image to edit), but {len(over)} of "
            f"{len(counts)} conditions also have reference images (up to {max(over)} each); it would not use them, "
            "and no model adapter takes several input images yet: use records with one input image "
            "(data.multi_input=skip leaves the others out)"
        )

    @abc.abstractmethod
    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        """Packed latent shape ``(N, C)`` of one image of ``height x width`` pixels (ValueError if not allowed)."""

    def initial_noise(self, batch: int, height: int, width: int, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal packed latents ``[B, N, C]`` (float32 on the model's device)."""
        n, c = self.latent_shape(height, width)
        noise = torch.randn((batch, n, c), generator=generator, device=generator.device if generator else "cpu")
        return noise.to(self.device)

    @abc.abstractmethod
    def velocity(self, x_t: Tensor, t: Tensor, cond: Condition) -> Tensor:
        """``v(x_t, t | cond)`` ``[B, N, C]`` for packed latents ``x_t [B, N, C]`` and times ``t [B]`` in [0, 1]."""

    @abc.abstractmethod
    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Packed final latents ``[B, N, C]`` -> images float32 ``[B, 3, H, W]`` in [0, 1]."""

    def decode_uint8(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Packed final latents ``[B, N, C]`` -> images ``uint8 [B, H, W, 3]`` on the CPU (what rewards score)."""
        images = self.decode(latents, height, width)
        return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

    @abc.abstractmethod
    def scheduler_config(self) -> dict[str, Any]:
        """The checkpoint's ``FlowMatchEulerDiscreteScheduler`` config."""

    def image_seq_len(self, height: int, width: int) -> int:
        """Token count used for the dynamic time shift (the packed edited-image tokens)."""
        return self.latent_shape(height, width)[0]

    def schedule(self, num_steps: int, height: int, width: int, *, interval_steps: int | None = None) -> StepSchedule:
        """Step schedule of the stock pipeline at this resolution (see :func:`fastgrpo.core.flow_schedule`)."""
        from fastgrpo.core.schedule import flow_schedule

        return flow_schedule(
            self.scheduler_config(),
            num_steps,
            image_seq_len=self.image_seq_len(height, width),
            interval_steps=interval_steps,
        )

    # LoRA ------------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_lora(
        self,
        rank: int,
        alpha: float,
        target_modules: Sequence[str] | None = None,
        *,
        init_lora_weights: bool | str = True,
        dtype: torch.dtype | None = None,
    ) -> list[torch.nn.Parameter]:
        """Attach LoRA adapters (defaults per model when ``target_modules`` is None) and freeze everything else;
        returns the trainable ``lora_A`` / ``lora_B`` weights. ``init_lora_weights``: peft's initialisation
        (``True``: ``lora_B`` zero, so the adapted model starts equal to the base model; ``"gaussian"``);
        ``dtype``: dtype of the adapter weights (default: the base layers'). ``ValueError`` for a bad rank or
        alpha, a second adapter, or targets that match no layer."""

    @abc.abstractmethod
    def lora_state_dict(self) -> dict[str, Tensor]:
        """The adapter's weights by name (``<module>.lora_A.weight``, the names of the diffusers file without its
        ``transformer.`` prefix), detached views of the live parameters; ``ValueError`` before :meth:`add_lora`."""

    @abc.abstractmethod
    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Context in which the LoRA adapters are disabled: the reference (base) policy."""

    @abc.abstractmethod
    def save_lora(self, directory: str | Path, weights: Mapping[str, Tensor] | None = None) -> Path:
        """Write ``pytorch_lora_weights.safetensors`` in the diffusers format (loadable by the stock pipeline):
        the live adapter, or ``weights`` named as :meth:`lora_state_dict` names them (e.g. whole tensors gathered
        from FSDP shards; ``ValueError`` when the names differ)."""

    @abc.abstractmethod
    def load_lora(self, directory: str | Path) -> None:
        """Load adapters written by :meth:`save_lora` (resume)."""

    def compile_blocks(self, **options: Any) -> Any:
        """Compile each repeated transformer block in place with ``torch.compile`` (regional compilation, after
        :meth:`add_lora`); returns the :class:`~fastgrpo.models.compile.CompileReport`. ``options`` go to
        :func:`fastgrpo.models.compile.compile_blocks`."""
        from fastgrpo.models import compile as compile_module

        return compile_module.compile_blocks(self.transformer, **options)
