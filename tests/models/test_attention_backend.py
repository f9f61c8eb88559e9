"""Attention backends: PyTorch SDPA (``None`` / ``"native"``) runs on the CPU and computes the default; a backend
whose package is missing (flash-attn, xformers, sageattention, kernels: none is installed in CI) is refused with
one message naming the package, before a checkpoint is read; ``fastgrpo env`` lists what is usable."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fastgrpo.models import checkpoints as ck
from fastgrpo.models.tiny_editor import build_tiny_editor

MISSING = [
    ("flash", "flash_attn", r"install flash-attn \(pip install flash-attn\)"),
    ("_flash_3", "flash_attn_interface", r"install flash-attn 3"),
    ("xformers", "xformers", r"install xformers \(pip install xformers\)"),
    ("sage", "sageattention", r"install sageattention \(pip install sageattention\)"),
    ("flash_hub", "kernels", r"install kernels \(pip install kernels\)"),
]


def _installed(module: str) -> bool:
    spec = importlib.util.find_spec(module)  # tests/kernels is a namespace package, not the kernels library
    return spec is not None and spec.origin not in (None, "namespace")


def _velocity(model, backend: str | None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    cond = model.encode(torch.rand(2, 3, 32, 32, generator=gen), ["make the square red", "move it left"])
    x = model.initial_noise(2, 32, 32, generator=gen)
    ck.set_attention_backend(model.transformer, backend)
    with torch.no_grad():
        return model.velocity(x, torch.tensor([0.8, 0.4]), cond)


def test_native_sdpa_runs_on_cpu_and_equals_the_default() -> None:
    model = build_tiny_editor()
    default = _velocity(model, None)
    native = _velocity(model, "native")
    also = _velocity(model, "NATIVE")  # names are case-insensitive, as in diffusers
    assert torch.isfinite(default).all()
    torch.testing.assert_close(native, default, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(also, native, rtol=0, atol=0)
    processors = [m.processor for m in model.transformer.modules() if hasattr(m, "processor")]
    assert processors and all(p._attention_backend == "native" for p in processors)


@pytest.mark.parametrize(("backend", "module", "message"), MISSING)
def test_missing_backend_package_is_named_in_one_message(backend: str, module: str, message: str) -> None:
    if _installed(module):
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ValueError, match=rf"attention backend '{backend}' is not usable here .*{message}") as info:
        ck.check_attention_backend(backend)
    assert info.value.__cause__ is None and info.value.__context__ is None  # no diffusers traceback attached
    assert "attention_backend=None (PyTorch SDPA)" in str(info.value)
    model = build_tiny_editor(weights=None)
    with pytest.raises(ValueError, match=message):
        ck.set_attention_backend(model.transformer, backend)
    assert ck.attention_backends((backend,))[backend].startswith("install ")


def test_unknown_and_malformed_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash2': use one of .*native.*xformers"):
        ck.check_attention_backend("flash2")
    with pytest.raises(ValueError, match=r"must be a name such as 'native'"):
        ck.check_attention_backend("")
    with pytest.raises(ValueError, match=r"must be a name such as 'native'"):
        ck.check_attention_backend(3)  # type: ignore[arg-type]
    ck.check_attention_backend(None)  # PyTorch SDPA: always fine


def test_cuda_only_backend_on_cpu_is_refused_even_when_installed(monkeypatch) -> None:
    monkeypatch.setattr(ck, "_missing_requirement", lambda _name: None)  # as if flash-attn were installed
    with pytest.raises(ValueError, match=r"'flash' needs a CUDA device but the model is on cpu"):
        ck.check_attention_backend("flash", "cpu")
    ck.check_attention_backend("flash", "cuda:0")
    ck.check_attention_backend("flex", "cpu")


def test_setter_failures_keep_their_reason(monkeypatch) -> None:
    class Refusing(torch.nn.Module):
        def set_attention_backend(self, backend: str) -> None:
            raise ValueError("the publisher of this kernel is not trusted")

    with pytest.raises(ValueError, match=r"could not be set on Refusing: the publisher .* not trusted; install"):
        ck.set_attention_backend(Refusing(), "native")


def test_loaders_check_the_backend_before_reading_the_checkpoint(tmp_path) -> None:
    from fastgrpo.models.flux_kontext import FluxKontextEditModel
    from fastgrpo.models.qwen_image_edit import QwenImageEditModel

    if _installed("xformers"):
        pytest.skip("xformers is installed here")
    for cls in (FluxKontextEditModel, QwenImageEditModel):  # the directory does not even exist
        with pytest.raises(ValueError, match=r"pip install xformers"):
            cls.from_pretrained(tmp_path / "nowhere", dtype=torch.float32, device="cpu", attention_backend="xformers")


def test_attention_backends_and_env_list_what_is_usable(capsys) -> None:
    from fastgrpo.train.cli import main

    found = ck.attention_backends()
    assert set(found) == set(ck.COMMON_BACKENDS)
    assert found["native"] is None and found["flex"] is None
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "attention backends: sdpa (null / native), flex" in out
    for name, missing in found.items():
        if missing is not None:
            assert f"    {name}: unavailable, {missing}" in out


def test_trainer_model_of_the_tiny_editor_takes_the_attention_backend() -> None:
    from fastgrpo.train.config import load_config
    from fastgrpo.train.model_setup import build_model

    cfg = load_config(None, ["model.attention_backend=native", "runtime.device=cpu"])
    model = build_model(cfg, torch.device("cpu"))
    processors = [m.processor for m in model.transformer.modules() if hasattr(m, "processor")]
    backends = {getattr(getattr(p, "_attention_backend", None), "value", None) for p in processors}
    assert processors and backends == {"native"}, backends
    with pytest.raises(ValueError, match="flash"):
        build_model(load_config(None, ["model.attention_backend=flash", "runtime.device=cpu"]), torch.device("cpu"))
