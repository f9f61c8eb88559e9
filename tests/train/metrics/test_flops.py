"""FLOPs, the peak-FLOP table, MFU and peak memory (faked device names on the CPU)."""

from __future__ import annotations

import pytest
import torch

from fastgrpo.train.metrics import flops
from fastgrpo.train.metrics.flops import PEAK_TFLOPS, count_flops, mfu, peak_flops, peak_memory_gib, reset_peak_memory

CPU = torch.device("cpu")
FAKE_CUDA = torch.device("cuda")


# --- FLOPs, MFU, memory -----------------------------------------------------------------------------------------------


def test_count_flops_linear():
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    assert count_flops(lambda: layer(x)) == 2 * 8 * 64 * 32


def test_peak_flops_and_mfu(monkeypatch):
    assert peak_flops(CPU) is None
    assert peak_memory_gib(CPU) is None
    reset_peak_memory(CPU)  # no-op off CUDA
    for name, tflops in [
        ("NVIDIA H200", 989.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce RTX 4090", 165.0),
    ]:
        monkeypatch.setattr(flops, "_cuda_device_name", lambda device, name=name: name)
        assert peak_flops(FAKE_CUDA) == pytest.approx(tflops * 1e12), name
    monkeypatch.setattr(flops, "_cuda_device_name", lambda device: "Some Future GPU")
    assert peak_flops(FAKE_CUDA) is None
    assert all(v > 0 for v in PEAK_TFLOPS.values())
    assert mfu(989e12, 2.0, 989e12) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, None) is None
    assert mfu(1e12, 0.0, 1e15) is None
