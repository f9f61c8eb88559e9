"""Counter-based Gaussian noise: the PyTorch reference of the noise the fused SDE kernel draws on the device.

Noise for element ``e`` of sample ``b`` at generator state ``(seed, offset)`` is a pure function of those four
numbers, so a captured CUDA graph that advances ``offset`` on the device draws fresh noise on every replay, and
the noise of any (sample, step) can be regenerated from the seed alone.

Layout (``NOISE_TILE = 4096`` elements, ``Q = 1024``): element ``e`` lies in tile ``g = e // 4096``, quarter
``k = (e % 4096) // 1024``; its counter is ``j = g * 1024 + e % 1024``. One Philox4x32-10 call (Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011) with key ``(seed mod 2**32, seed >> 32)`` and counter
``(j, b, offset mod 2**32, offset >> 32)`` gives four 32-bit words; Box-Muller turns words (0, 1) into the normals
of quarters 0 (cos) and 1 (sin), words (2, 3) into those of quarters 2 and 3. A word ``w`` becomes the uniform
``u = (floor(w / 256) + 0.5) * 2**-24`` in (0, 1] (computed in float32: never 0; the largest words round to exactly
1, which Box-Muller maps to a normal of 0), so normals are bounded by
``sqrt(-2 log 2**-25) ~= 5.9``.
"""

from __future__ import annotations

import math

import torch

NOISE_TILE = 4096
NOISE_QUARTER = NOISE_TILE // 4
PHILOX_ROUNDS = 10

_M32 = 0xFFFFFFFF
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for a 32-bit constant ``a`` and int64 ``b`` holding uint32 values.

    Works on 16-bit halves so that no intermediate leaves the int64 range.
    """
    ah, al = a >> 16, a & 0xFFFF
    bh, bl = b >> 16, b & 0xFFFF
    low = al * bl
    mid = ah * bl + al * bh + (low >> 16)
    lo = ((mid & 0xFFFF) << 16) | (low & 0xFFFF)
    hi = ah * bh + (mid >> 16)
    return hi, lo


def philox4x32(
    c0: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    c3: torch.Tensor,
    k0: torch.Tensor,
    k1: torch.Tensor,
    rounds: int = PHILOX_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 on int64 tensors holding uint32 values (broadcasting); returns four uint32 words as int64."""
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def words_to_uniform(w: torch.Tensor) -> torch.Tensor:
    """uint32 words (as int64) -> float32 uniforms in (0, 1]: ``(w >> 8 + 0.5) * 2**-24`` rounded to float32."""
    return ((w >> 8).to(torch.float32) + 0.5) * (2.0**-24)


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals from two uniforms in (0, 1] (float32)."""
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    return r * torch.cos(theta), r * torch.sin(theta)


def _as_int64(value: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.int64)
    return torch.full((), int(value), dtype=torch.int64, device=device)  # no host-to-device copy


def philox_normal(
    seed: int | torch.Tensor,
    offset: int | torch.Tensor,
    batch: int,
    numel: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard normals ``[batch, numel]`` float32 for generator state ``(seed, offset)`` (layout in module doc).

    ``seed`` and ``offset`` may be python ints or 0-d int64 tensors (read on the device, no host sync).
    """
    device = torch.device(device)
    seed_t, offset_t = _as_int64(seed, device), _as_int64(offset, device)
    tiles = -(-numel // NOISE_TILE)
    j = torch.arange(tiles * NOISE_QUARTER, dtype=torch.int64, device=device)[None, :]
    b = torch.arange(batch, dtype=torch.int64, device=device)[:, None]
    w0, w1, w2, w3 = philox4x32(j, b, offset_t & _M32, (offset_t >> 32) & _M32, seed_t & _M32, (seed_t >> 32) & _M32)
    n0, n1 = box_muller(words_to_uniform(w0), words_to_uniform(w1))
    n2, n3 = box_muller(words_to_uniform(w2), words_to_uniform(w3))
    quarters = torch.stack([q.reshape(batch, tiles, NOISE_QUARTER) for q in (n0, n1, n2, n3)], dim=2)
    return quarters.reshape(batch, tiles * NOISE_TILE)[:, :numel]
