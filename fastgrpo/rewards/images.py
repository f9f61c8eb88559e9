"""The image and mask inputs that every reward component accepts, and their conversions.

A batch of ``B`` images is either

- a tensor ``[B, 3, H, W]``: floating (any float dtype, any device) with values in ``[0, 1]``, or ``uint8``; or
- a sequence of ``B`` items, each a ``uint8`` numpy array ``[H, W, 3]``, a float numpy array ``[H, W, 3]`` in
  ``[0, 1]``, a PIL image (any mode, converted to RGB) or a tensor ``[3, H, W]`` (float in ``[0, 1]`` or uint8).
  Items of one batch may differ in size.

Float values slightly outside ``[0, 1]`` (a VAE decode overshoots) are clamped. A non-finite pixel makes its sample
unscorable: every component returns NaN for it, never a score of a repaired image.

A batch of masks (the region meant to change, ``True`` = may change) is ``None``, a tensor ``[B, H, W]`` or
``[B, 1, H, W]`` (bool, or float/uint8 where ``> 0.5`` means ``True``), or a sequence of ``B`` items, each
``None`` (no mask for that sample), a bool/number numpy array ``[H, W]`` or a tensor ``[H, W]``.

Bad input (wrong rank, channel count or dtype, a batch of the wrong length) raises ``ValueError`` naming the
argument and item, e.g. ``edited[3]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ImageBatch",
    "MaskBatch",
    "is_finite_image",
    "resize_batch",
    "split_images",
    "split_masks",
    "to_float_chw",
    "to_float_hwc255",
    "to_mask_tensor",
    "to_pil",
]

ImageBatch = Any  # torch.Tensor [B, 3, H, W] or Sequence[np.ndarray | PIL.Image.Image | torch.Tensor]
MaskBatch = Any  # None, torch.Tensor [B, H, W] / [B, 1, H, W] or Sequence[np.ndarray | torch.Tensor | None]

_ACCEPTED = "a uint8 array [H, W, 3], a PIL image, or a tensor [3, H, W] (float in [0, 1] or uint8)"


def _is_pil(item: object) -> bool:
    return type(item).__module__.startswith("PIL.") and hasattr(item, "convert")


def split_images(images: ImageBatch, name: str) -> list[Any]:
    """The ``B`` items of an image batch (tensor rows are views, nothing is copied); checks every item's layout."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{name} must be a tensor [B, 3, H, W], got shape {tuple(images.shape)}")
        items: list[Any] = list(images.unbind(0))
    elif isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise ValueError(f"{name} must be a tensor [B, 3, H, W] or a list of images ({_ACCEPTED})")
    else:
        items = list(images)
    for index, item in enumerate(items):
        _check_item(item, f"{name}[{index}]")
    return items


def _check_item(item: object, where: str) -> None:
    if _is_pil(item):
        return
    if isinstance(item, np.ndarray):
        ok = item.ndim == 3 and item.shape[2] == 3 and (item.dtype == np.uint8 or item.dtype.kind == "f")
        if not ok:
            raise ValueError(f"{where} must be {_ACCEPTED}; got a numpy array {item.shape} {item.dtype}")
        return
    if isinstance(item, torch.Tensor):
        ok = item.dim() == 3 and item.shape[0] == 3 and (item.dtype == torch.uint8 or item.dtype.is_floating_point)
        if not ok:
            raise ValueError(f"{where} must be {_ACCEPTED}; got a tensor {tuple(item.shape)} {item.dtype}")
        return
    raise ValueError(f"{where} must be {_ACCEPTED}; got {type(item).__name__}")


def is_finite_image(item: Any) -> bool:
    """Whether every pixel is finite (uint8 and PIL images always are). Reads a device tensor (one sync)."""
    if isinstance(item, torch.Tensor) and item.dtype.is_floating_point:
        return bool(torch.isfinite(item).all())
    if isinstance(item, np.ndarray) and item.dtype.kind == "f":
        return bool(np.isfinite(item).all())
    return True


def to_float_chw(item: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """``float32 [3, H, W]`` in ``[0, 1]`` on ``device`` (non-finite values are kept, finite ones clamped)."""
    if _is_pil(item):
        item = np.asarray(item.convert("RGB"))
    if isinstance(item, np.ndarray):
        array = np.ascontiguousarray(item)
        array = array if array.flags.writeable else array.copy()  # torch.from_numpy warns on read-only arrays
        tensor = torch.from_numpy(array).permute(2, 0, 1).to(device)
    else:
        tensor = item.to(device)
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    return tensor.float().clamp(0.0, 1.0)  # clamp keeps NaN as NaN


def to_float_hwc255(item: Any) -> np.ndarray:
    """``float32 [H, W, 3]`` numpy in ``[0, 255]`` (no rounding, so a float image keeps its precision)."""
    if _is_pil(item):
        return np.asarray(item.convert("RGB"), dtype=np.float32)
    if isinstance(item, np.ndarray):
        if item.dtype == np.uint8:
            return item.astype(np.float32)
        return np.clip(item.astype(np.float32), 0.0, 1.0) * 255.0
    tensor = item.detach().to("cpu")
    if tensor.dtype == torch.uint8:
        return tensor.permute(1, 2, 0).numpy().astype(np.float32)
    return (tensor.float().clamp(0.0, 1.0) * 255.0).permute(1, 2, 0).numpy()


def to_pil(item: Any) -> Any:
    """An RGB ``PIL.Image.Image`` (float input is rounded to uint8). The caller checks finiteness first."""
    from PIL import Image

    if _is_pil(item):
        return item.convert("RGB")
    pixels = np.clip(np.rint(to_float_hwc255(item)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def resize_batch(items: Sequence[Any], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``float32 [N, 3, *size]`` in ``[0, 1]`` on ``device``: every item resized (bicubic, antialiased).

    Items of one shape are resized in one call. The whole image is resized (no centre crop), so that an edit at
    the border stays in view and a mask maps onto the same pixels.
    """
    out = torch.empty(len(items), 3, *size, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    chw = [to_float_chw(item, device) for item in items]
    for index, tensor in enumerate(chw):
        groups.setdefault((tensor.shape[1], tensor.shape[2]), []).append(index)
    for shape, indices in groups.items():
        stacked = torch.stack([chw[i] for i in indices])
        if shape != size:
            stacked = F.interpolate(stacked, size=size, mode="bicubic", antialias=True, align_corners=False)
        out[indices] = stacked.clamp(0.0, 1.0)
    return out


def split_masks(masks: MaskBatch, batch: int, name: str = "masks") -> list[Any]:
    """The ``B`` mask items (``None`` where a sample has none); checks the batch length and each item's rank."""
    if masks is None:
        return [None] * batch
    if isinstance(masks, torch.Tensor):
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3:
            raise ValueError(f"{name} must be a tensor [B, H, W] or [B, 1, H, W], got shape {tuple(masks.shape)}")
        items: list[Any] = list(masks.unbind(0))
    elif isinstance(masks, Sequence) and not isinstance(masks, (str, bytes)):
        items = list(masks)
    else:
        raise ValueError(f"{name} must be None, a tensor [B, H, W] or a list of [H, W] arrays, got {type(masks)}")
    if len(items) != batch:
        raise ValueError(f"{name} has {len(items)} entries but the batch has {batch} samples; pass one per sample")
    for index, item in enumerate(items):
        if item is None:
            continue
        if not isinstance(item, (np.ndarray, torch.Tensor)) or item.ndim != 2:
            shape = getattr(item, "shape", type(item).__name__)
            raise ValueError(f"{name}[{index}] must be None or an array/tensor [H, W], got {shape}")
    return items


def to_mask_tensor(item: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """``bool [H, W]`` on ``device`` (``True``/``> 0.5`` = meant to change)."""
    tensor = torch.from_numpy(np.array(item)) if isinstance(item, np.ndarray) else item  # a copy: always writable
    tensor = tensor.to(device)
    return tensor if tensor.dtype == torch.bool else tensor.float() > 0.5
