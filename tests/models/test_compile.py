"""Regional torch.compile of the tiny editor's transformer (CPU): the compiled model computes what the eager one
does (forward, LoRA gradients, the reference policy with adapters off, weights changed after compiling), names and
LoRA files are unchanged, compile time is reported, and bad input is refused.

The CPU tests use the ``aot_eager`` backend (dynamo tracing + AOT autograd, no code generation): inductor works
here too but its C++ code generation takes minutes for the forward and backward graphs on two cores.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastgrpo.models import compile as compile_mod
from fastgrpo.models.compile import CompileReport, compile_blocks, compile_seconds, warm_up
from fastgrpo.models.lora import lora_parameters, lora_state_dict
from fastgrpo.models.tiny_editor import build_tiny_editor

BACKEND = "aot_eager"


def _lora_model(device: str = "cpu") -> object:
    """The tiny editor with a rank-4 LoRA whose weights are all non-zero (so the adapter changes the output)."""
    model = build_tiny_editor(device=device)
    params = model.add_lora(4, 4.0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _inputs(model: object) -> tuple[torch.Tensor, torch.Tensor, object]:
    gen = torch.Generator().manual_seed(2)
    cond = model.encode(torch.rand(2, 3, 32, 32, generator=gen), ["make the square red", "move the circle left"])
    t = torch.tensor([0.7, 0.3], device=model.device)
    return model.initial_noise(2, 32, 32, generator=gen), t, cond


def _grads(model: object, x: torch.Tensor, t: torch.Tensor, cond: object) -> list[torch.Tensor]:
    params = lora_parameters(model.transformer)
    for p in params:
        p.grad = None
    model.velocity(x, t, cond).float().square().mean().backward()
    return [p.grad.detach().clone() for p in params]


@pytest.fixture(scope="module")
def pair() -> tuple[object, object, CompileReport]:
    """(eager model, compiled model with the same weights, its report); dynamo's caches are reset afterwards."""
    eager, compiled = _lora_model(), _lora_model()
    names = list(compiled.transformer.state_dict())
    report = compile_blocks(compiled.transformer, backend=BACKEND)
    assert list(compiled.transformer.state_dict()) == names  # compiled in place: no "_orig_mod." prefixes
    yield eager, compiled, report
    torch._dynamo.reset()


def test_compile_blocks_reports_the_repeated_blocks(pair) -> None:
    _, compiled, report = pair
    assert report.blocks == 4  # 2 joint (double-stream) + 2 single-stream blocks
    assert report.block_types == ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    assert report.method == "compile_repeated_blocks"
    assert report.options == {"backend": BACKEND}
    assert "4 blocks" in report.describe() and "aot_eager" in report.describe()
    blocks = [*compiled.transformer.transformer_blocks, *compiled.transformer.single_transformer_blocks]
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert compiled.transformer._compiled_call_impl is None  # only the blocks, not the whole model


def test_compiled_forward_equals_eager_and_compile_time_is_counted(pair) -> None:
    eager, compiled, report = pair
    x, t, cond = _inputs(eager)
    with torch.no_grad():
        expected = eager.velocity(x, t, cond)
        report.read()
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        got = compiled.velocity(x, t, cond)
        spent = report.read()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before, "nothing was compiled"
    assert spent > 0 and math.isfinite(spent)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        again = compiled.velocity(x, t, cond)
    assert report.read() == 0.0  # the same configuration again: no recompilation
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_lora_gradients_flow_through_compiled_blocks_and_match_eager(pair) -> None:
    eager, compiled, _ = pair
    x, t, cond = _inputs(eager)
    expected, got = _grads(eager, x, t, cond), _grads(compiled, x, t, cond)
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        assert bool(g.abs().sum() > 0)
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    frozen = [p for n, p in compiled.transformer.named_parameters() if "lora_" not in n]
    assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_reference_policy_under_compile_is_the_base_model(pair) -> None:
    eager, compiled, _ = pair
    x, t, cond = _inputs(eager)
    base = build_tiny_editor()  # no LoRA at all
    with torch.no_grad():
        expected = base.velocity(x, t, cond)
        adapted = compiled.velocity(x, t, cond)
        with compiled.reference():  # peft's disable flag changes: the blocks recompile once (a guard failure)
            got = compiled.velocity(x, t, cond)
        after = compiled.velocity(x, t, cond)  # adapters back on
    assert (adapted - expected).abs().max() > 1e-3, "the LoRA should change the output"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, adapted, rtol=0, atol=0)
    assert all(p.requires_grad for p in lora_parameters(compiled.transformer))


def test_weights_changed_after_compiling_are_used(pair, tmp_path) -> None:
    eager, compiled, _ = pair
    x, t, cond = _inputs(eager)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for e, c in zip(lora_parameters(eager.transformer), lora_parameters(compiled.transformer), strict=True):
            step = torch.randn(e.shape, generator=gen) * 0.01  # an optimiser step, in place
            e.add_(step)
            c.add_(step)
        torch.testing.assert_close(compiled.velocity(x, t, cond), eager.velocity(x, t, cond), rtol=1e-5, atol=1e-5)
    compiled.save_lora(tmp_path / "lora")
    fresh = build_tiny_editor()
    fresh.add_lora(4, 4.0)
    fresh.load_lora(tmp_path / "lora")
    saved, live = lora_state_dict(fresh.transformer), lora_state_dict(compiled.transformer)
    assert saved.keys() == live.keys()
    assert all(torch.equal(saved[k], live[k]) for k in saved)


def test_block_lists_are_compiled_when_the_model_declares_no_repeated_blocks() -> None:
    model = build_tiny_editor(weights=None)
    model.transformer._repeated_blocks = []  # as a diffusers model without regional-compilation metadata
    report = compile_blocks(model.transformer, backend="eager")
    assert (report.blocks, report.method) == (4, "block_lists")
    chosen = build_tiny_editor(weights=None)
    report = compile_blocks(chosen.transformer, block_types=["FluxSingleTransformerBlock"], backend="eager")
    assert (report.blocks, report.block_types) == (2, ("FluxSingleTransformerBlock",))
    assert all(b._compiled_call_impl is None for b in chosen.transformer.transformer_blocks)


def test_bad_models_and_options_are_refused(monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"Sequential has no repeated blocks to compile.*block_types="):
        compile_blocks(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), backend="eager")
    transformer = build_tiny_editor(weights=None).transformer
    with pytest.raises(ValueError, match=r"no repeated blocks"):
        compile_blocks(transformer, block_types=["NoSuchBlock"], backend="eager")
    with pytest.raises(ValueError, match=r"unknown torch.compile option\(s\) \['fullgrph'\]"):
        compile_blocks(transformer, fullgrph=True)
    with pytest.raises(ValueError, match=r"unknown torch.compile backend 'inductr'.*inductor"):
        compile_blocks(transformer, backend="inductr")
    monkeypatch.setattr(compile_mod.shutil, "which", lambda _name: None)
    with pytest.raises(ValueError, match=r"needs a C\+\+ compiler.*backend='aot_eager'"):
        compile_blocks(transformer)
    assert all(b._compiled_call_impl is None for b in transformer.transformer_blocks)  # nothing half-compiled


def test_warm_up_times_the_compiling_call_apart() -> None:
    layer = nn.Linear(8, 8)
    x = torch.randn(4, 8)

    def fresh(inp: torch.Tensor) -> torch.Tensor:  # a new code object: it has never been compiled
        return torch.relu(layer(inp)) * 2

    compiled = torch.compile(fresh, backend="eager")
    before = compile_seconds()
    timing = warm_up(lambda: compiled(x), repeats=2)
    assert timing.compile_s > 0 and compile_seconds() >= before + timing.compile_s
    assert timing.first_s >= timing.compile_s and timing.steady_s >= 0
    assert timing.overhead_s == timing.first_s - timing.steady_s
    again = warm_up(lambda: compiled(x), repeats=1)
    assert again.compile_s == 0.0
    with pytest.raises(ValueError, match=r"repeats must be an integer >= 1"):
        warm_up(lambda: None, repeats=0)


@pytest.mark.gpu
def test_inductor_on_cuda_matches_eager_and_reports_its_compile_time() -> None:
    eager, compiled = _lora_model("cuda"), _lora_model("cuda")
    report = compile_blocks(compiled.transformer)  # the trainer's default: inductor
    x, t, cond = _inputs(eager)
    base = build_tiny_editor(device="cuda")
    try:
        with torch.no_grad():
            expected, reference = eager.velocity(x, t, cond), base.velocity(x, t, cond)
            timing = warm_up(lambda: compiled.velocity(x, t, cond), repeats=3, device="cuda")
            got = compiled.velocity(x, t, cond)
            with compiled.reference():
                got_reference = compiled.velocity(x, t, cond)
        grads, expected_grads = _grads(compiled, x, t, cond), _grads(eager, x, t, cond)
    finally:
        torch._dynamo.reset()
    assert timing.compile_s > 0 and timing.first_s > timing.steady_s and report.read() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_reference, reference, rtol=1e-4, atol=1e-4)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-5)
