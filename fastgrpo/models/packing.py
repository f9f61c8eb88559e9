"""2x2 patch packing of latents, the token layout of FLUX.1 Kontext and Qwen-Image-Edit transformers.

A latent image ``[B, C, h, w]`` becomes ``h/2 * w/2`` tokens of ``4 C`` channels, row-major over the patch grid,
each token holding its patch as ``(c, dy, dx)`` (channel slowest): the layout of the stock pipelines'
``_pack_latents`` / ``_unpack_latents``, so packed tensors can be exchanged with them (``latents=`` and
``output_type="latent"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def pack_latents(latents: Tensor) -> Tensor:
    """``[B, C, h, w]`` (or Qwen-Image's ``[B, C, 1, h, w]``) -> packed ``[B, h/2 * w/2, 4 C]``, same dtype.

    Raises ``ValueError`` when ``h`` or ``w`` is odd or the shape is not 4-D/5-D with one frame.
    """
    if latents.dim() == 5:
        if latents.shape[2] != 1:
            raise ValueError(f"5-D latents must hold one frame [B, C, 1, h, w], got {tuple(latents.shape)}")
        latents = latents[:, :, 0]
    if latents.dim() != 4:
        raise ValueError(f"latents must be [B, C, h, w], got {tuple(latents.shape)}")
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent size {h}x{w} must be even for 2x2 packing; use images of a multiple of the size")
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: Tensor, latent_height: int, latent_width: int) -> Tensor:
    """Packed ``[B, N, 4 C]`` -> ``[B, C, h, w]`` with ``h = latent_height``, ``w = latent_width`` (both even).

    Raises ``ValueError`` when ``N`` or the channel count does not fit ``h x w``.
    """
    if packed.dim() != 3:
        raise ValueError(f"packed latents must be [B, N, C], got {tuple(packed.shape)}")
    b, n, c4 = packed.shape
    hp, wp = latent_height // 2, latent_width // 2
    if n != hp * wp or c4 % 4 or latent_height % 2 or latent_width % 2:
        raise ValueError(
            f"packed latents {tuple(packed.shape)} do not fit a {latent_height}x{latent_width} latent image "
            f"({hp * wp} tokens of 4·C channels); pass the height/width the latents were made for"
        )
    patches = packed.reshape(b, hp, wp, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, c4 // 4, latent_height, latent_width)


def patch_position_ids(
    grid_height: int, grid_width: int, index: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype
) -> Tensor:
    """FLUX position ids ``[grid_height * grid_width, 3]``: ``(index, row, col)`` per packed token.

    ``index`` is 0 for the generated image and 1 for the source image of FLUX.1 Kontext (the pipeline's
    ``image_ids[..., 0] = 1``); the text tokens use all-zero ids.
    """
    ids = torch.zeros(grid_height, grid_width, 3)
    ids[..., 0] = float(index)
    ids[..., 1] = torch.arange(grid_height, dtype=ids.dtype)[:, None]
    ids[..., 2] = torch.arange(grid_width, dtype=ids.dtype)[None, :]
    return ids.reshape(grid_height * grid_width, 3).to(device=device, dtype=dtype)


class PackedLatentsMixin:
    """Shape checks and decoding shared by adapters whose transformer reads 2x2-packed codec latents.

    Needs ``self.codec`` (a :class:`~fastgrpo.models.codecs.LatentCodec`) and ``self.model_type``.
    """

    codec: Any
    model_type: str

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the codec's spatial factor times the 2x2 patch."""
        return self.codec.spatial_factor * 2

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(N, C) = ((H / m) (W / m), 4 C_latent)`` with ``m`` = :attr:`size_multiple`; ``ValueError`` if the
        size is not a positive multiple of ``m``."""
        m = self.size_multiple
        if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive integers, got {height!r} x {width!r}")
        if height % m or width % m:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of {m} ({self.model_type}: VAE factor "
                f"{self.codec.spatial_factor} x 2x2 patches); resize or crop to multiples of {m}"
            )
        return (height // m) * (width // m), 4 * self.codec.latent_channels

    @torch.no_grad()
    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Packed ``[B, N, C]`` -> float32 images ``[B, 3, H, W]`` in [0, 1]."""
        self.latent_shape(height, width)
        f = self.codec.spatial_factor
        return self.codec.decode(unpack_latents(latents, height // f, width // f))
