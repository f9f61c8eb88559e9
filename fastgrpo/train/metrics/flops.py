"""FLOPs, model FLOP utilisation (MFU) and peak memory of the training loop.

FLOPs are counted once per resolution with ``torch.utils.flop_counter`` (matmuls, convolutions, attention); MFU is
``FLOPs / seconds / peak``, with the dense BF16 peak of the GPU from :data:`PEAK_TFLOPS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["PEAK_TFLOPS", "count_flops", "mfu", "peak_flops", "peak_memory_gib", "reset_peak_memory"]


def _cuda_device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of fn, counted by torch.utils.flop_counter.FlopCounterMode (display=False).

    Only the operators FlopCounterMode knows (matmuls, convolutions, attention) are counted; a multiply-add is two
    FLOPs. ``fn`` runs once for real, so call it on a representative batch outside the timed loop.
    """
    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return int(mode.get_total_flops())


# Dense (no sparsity) BF16 tensor-core peaks in TFLOPS, matched as substrings of torch.cuda.get_device_name(); the
# longest matching key wins (so "H100 PCIe" beats "H100", "L40S" beats "L40" and "L4"). Datasheets state the
# sparsity figure; the dense figure is half of it.
PEAK_TFLOPS: dict[str, float] = {
    "B200": 2250.0,  # NVIDIA HGX B200 datasheet: 36 PFLOPS BF16 with sparsity per 8 GPUs
    "H200 NVL": 835.0,  # NVIDIA H200 Tensor Core GPU datasheet (H200 NVL): 1,671 TFLOPS with sparsity
    "H200": 989.0,  # NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): 1,979 TFLOPS with sparsity
    "H100 NVL": 835.0,  # NVIDIA H100 Tensor Core GPU datasheet (H100 NVL): 1,671 TFLOPS with sparsity
    "H100 PCIe": 756.0,  # NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe): 1,513 TFLOPS with sparsity
    "H100": 989.0,  # NVIDIA H100 Tensor Core GPU datasheet (H100 SXM): 1,979 TFLOPS with sparsity
    "A100": 312.0,  # NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS dense, 624 with sparsity
    "L40S": 362.0,  # NVIDIA L40S GPU datasheet: 362.05 TFLOPS dense, 733 with sparsity
    "L40": 181.0,  # NVIDIA L40 GPU datasheet: 181.05 TFLOPS dense, 362.1 with sparsity
    "L4": 121.0,  # NVIDIA L4 Tensor Core GPU datasheet: 242 TFLOPS with sparsity
    "4090": 165.0,  # NVIDIA Ada Lovelace GPU architecture whitepaper (RTX 4090): 165.2 TFLOPS, FP32 accumulate
}


def peak_flops(device: torch.device) -> float | None:
    """Dense BF16 peak FLOP/s of ``device`` from :data:`PEAK_TFLOPS`; None on CPU or for a GPU not in the table."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = _cuda_device_name(device).lower()
    matches = [key for key in PEAK_TFLOPS if key.lower() in name]
    if not matches:
        return None
    return PEAK_TFLOPS[max(matches, key=len)] * 1e12


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation ``flops / seconds / peak``; None when the peak is unknown or the inputs are unusable."""
    if peak is None or not (math.isfinite(peak) and peak > 0):
        return None
    if not (math.isfinite(seconds) and seconds > 0) or not math.isfinite(flops):
        return None
    return flops / seconds / peak


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory allocated by tensors on ``device`` since the last reset, in GiB; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on ``device`` (nothing off CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
