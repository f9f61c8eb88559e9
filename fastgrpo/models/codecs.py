"""Latent codecs: images in [0, 1] <-> the latent space a flow transformer denoises.

:class:`LatentCodec` is the contract an adapter needs from a VAE; :class:`DiffusersVAECodec` wraps FLUX's
``AutoencoderKL`` and :class:`QwenImageVAECodec` Qwen-Image's ``AutoencoderKLQwenImage``, each normalising exactly as
its stock pipeline does (``_encode_vae_image`` on the way in, the ``output_type != "latent"`` branch on the way
out), so that latents from here and from the pipeline are interchangeable. The distribution's mode is used, as
the pipelines' ``sample_mode="argmax"`` does: encoding is deterministic.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class LatentCodec(Protocol):
    """Images <-> model-space latents.

    Attributes:
        latent_channels: ``C`` of the latents.
        spatial_factor: pixels per latent pixel along each side (8 for the FLUX and Qwen-Image VAEs, 1 for a
            pixel-space codec); image sides must be multiples of it.
    """

    latent_channels: int
    spatial_factor: int

    def encode(self, images: Tensor) -> Tensor:
        """Float images ``[B, 3, H, W]`` in [0, 1] -> latents ``[B, C, H / f, W / f]`` (scaling/shift applied)."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, C, h, w]`` -> float32 images ``[B, 3, h f, w f]`` in [0, 1]."""
        ...


def check_codec_images(images: Tensor, factor: int) -> None:
    """``ValueError`` unless ``images`` is float ``[B, 3, H, W]`` with ``H``, ``W`` multiples of ``factor``."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor [B, 3, H, W] in [0, 1], got {shape}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be float in [0, 1], got {images.dtype}; divide uint8 images by 255")
    h, w = images.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not a multiple of the VAE factor {factor}; resize or crop it")


def _check_latents(latents: Tensor, channels: int) -> None:
    if not isinstance(latents, Tensor) or latents.dim() != 4 or latents.shape[1] != channels:
        shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
        raise ValueError(f"latents must be [B, {channels}, h, w], got {shape}; unpack packed latents first")


def _to_model_range(images: Tensor, like: torch.nn.Module) -> Tensor:
    """[0, 1] -> [-1, 1] in float32 (the pipelines' image processor), then the VAE's device and dtype."""
    param = next(like.parameters())
    return (2.0 * images.float() - 1.0).to(device=param.device, dtype=param.dtype)


def _to_unit_range(images: Tensor) -> Tensor:
    return (images.float() * 0.5 + 0.5).clamp(0.0, 1.0)


class DiffusersVAECodec:
    """FLUX's ``AutoencoderKL``: ``latents = (mode(E(2x - 1)) - shift_factor) * scaling_factor``.

    Args:
        vae: a diffusers ``AutoencoderKL``; ``shift_factor`` / ``scaling_factor`` come from its config (a missing
            ``shift_factor`` counts as 0). Encoding runs in the VAE's dtype and device; inputs are moved there.
    """

    def __init__(self, vae: Any) -> None:
        config = vae.config
        self.vae = vae
        self.latent_channels = int(config.latent_channels)
        self.spatial_factor = 2 ** (len(config.block_out_channels) - 1)
        self.scaling_factor = float(config.scaling_factor)
        shift = getattr(config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else float(shift)

    def encode(self, images: Tensor) -> Tensor:
        """float ``[B, 3, H, W]`` in [0, 1] -> ``[B, C, H / f, W / f]`` in the VAE's dtype (``ValueError`` on bad
        shapes or sizes that are not multiples of :attr:`spatial_factor`)."""
        check_codec_images(images, self.spatial_factor)
        latents = self.vae.encode(_to_model_range(images, self.vae)).latent_dist.mode()
        return (latents - self.shift_factor) * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        """``[B, C, h, w]`` model-space latents -> float32 ``[B, 3, h f, w f]`` in [0, 1]."""
        _check_latents(latents, self.latent_channels)
        dtype = next(self.vae.parameters()).dtype
        latents = latents.to(dtype) / self.scaling_factor + self.shift_factor
        return _to_unit_range(self.vae.decode(latents, return_dict=False)[0])


class QwenImageVAECodec:
    """Qwen-Image's ``AutoencoderKLQwenImage`` (a causal video VAE run on one frame).

    ``latents = (mode(E(2x - 1)) - latents_mean) / latents_std`` per channel, with the VAE's 5-D
    ``[B, C, 1, h, w]`` latents squeezed to ``[B, C, h, w]`` at this boundary (and unsqueezed for the VAE).

    Args:
        vae: a diffusers ``AutoencoderKLQwenImage``; ``latents_mean`` / ``latents_std`` (``z_dim`` values each)
            come from its config, the spatial factor is ``2 ** len(vae.temperal_downsample)``.
    """

    def __init__(self, vae: Any) -> None:
        config = vae.config
        self.vae = vae
        self.latent_channels = int(config.z_dim)
        self.spatial_factor = 2 ** len(vae.temperal_downsample)
        for name in ("latents_mean", "latents_std"):
            if len(getattr(config, name)) != self.latent_channels:
                raise ValueError(
                    f"VAE config {name} has {len(getattr(config, name))} values but z_dim is {self.latent_channels}; "
                    "the checkpoint's vae/config.json is inconsistent"
                )
        self._mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)

    def encode(self, images: Tensor) -> Tensor:
        """float ``[B, 3, H, W]`` in [0, 1] -> ``[B, C, H / f, W / f]`` in the VAE's dtype (``ValueError`` on bad
        shapes or sizes that are not multiples of :attr:`spatial_factor`)."""
        check_codec_images(images, self.spatial_factor)
        latents = self.vae.encode(_to_model_range(images, self.vae)[:, :, None]).latent_dist.mode()
        mean = self._mean.to(latents.device, latents.dtype)
        std = self._std.to(latents.device, latents.dtype)
        return ((latents - mean) / std)[:, :, 0]

    def decode(self, latents: Tensor) -> Tensor:
        """``[B, C, h, w]`` model-space latents -> float32 ``[B, 3, h f, w f]`` in [0, 1]."""
        _check_latents(latents, self.latent_channels)
        dtype = next(self.vae.parameters()).dtype
        latents = latents[:, :, None].to(dtype)
        mean = self._mean.to(latents.device, dtype)
        # the pipeline divides by the reciprocal of the std rather than multiplying; kept for identical rounding
        inv_std = 1.0 / self._std.to(latents.device, dtype)
        frames = self.vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return _to_unit_range(frames[:, :, 0])
