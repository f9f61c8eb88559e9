"""``runtime.compile=true`` end to end on the tiny editor (CPU): the blocks are compiled once, after LoRA is
attached, the iteration's compile seconds are reported as ``time/compile`` and logged, and the LoRA trains.

The run uses dynamo's ``eager`` backend (graph capture, guards and recompilation as with inductor, no code
generation): inductor's C++ code generation takes minutes on two CPU cores. That the compiled graphs compute what
the eager model does (forward, LoRA gradients, reference) is tested in ``tests/models/test_compile.py``.
"""

from __future__ import annotations

import torch

from fastgrpo.models import compile as compile_mod
from fastgrpo.train.config import load_config
from fastgrpo.train.loop import Trainer

#: 1 iteration of 1 condition x 2 samples and 2 rollout steps, no evaluation: each compiled configuration once
TINY = [
    "sampler.prompts_per_step=1",
    "sampler.group_size=2",
    "sampler.train_steps=2",
    "sampler.eval_steps=2",
    "logging.eval_every=0",
    "logging.progress=false",
    "runtime.max_steps=1",
    "optim.lr=0.003",
    "grpo.beta=0",
]


def test_compiled_run_reports_compile_time_and_trains(tmp_path, monkeypatch) -> None:
    calls: list[dict] = []
    original = compile_mod.compile_blocks

    def eager_backend(transformer, **options):
        calls.append({"lora": any("lora_" in n for n, _ in transformer.named_parameters()), **options})
        return original(transformer, **{**options, "backend": "eager"})

    monkeypatch.setattr(compile_mod, "compile_blocks", eager_backend)
    messages: list[str] = []
    cfg = load_config(None, [*TINY, f"logging.output_dir={tmp_path}", "logging.run_name=run", "runtime.compile=true"])
    trainer = Trainer(cfg, log=messages.append)
    before = {k: v.clone() for k, v in trainer.model.lora_state_dict().items()}
    try:
        result = trainer.run()
    finally:
        trainer.close()
        torch._dynamo.reset()
    assert calls == [{"lora": True}], "compile once, after LoRA is attached, with the default options"
    assert trainer.metrics.compiled is not None and trainer.metrics.compiled.blocks == 4
    blocks = [*trainer.model.transformer.transformer_blocks, *trainer.model.transformer.single_transformer_blocks]
    assert all(b._compiled_call_impl is not None for b in blocks)
    (row,) = [r for r in result.metrics if r["step"] == 1]
    assert 0 < row["time/compile"] <= row["time/step"]
    assert row["tflops_per_s"] > 0  # FLOPs are still counted through the compiled blocks
    assert any(m.startswith("torch.compile: 4 blocks (FluxTransformerBlock") for m in messages)
    assert any(m.startswith("iteration 1:") and "in torch.compile" in m for m in messages)
    after = trainer.model.lora_state_dict()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"LoRA weights that did not train under compile: {unchanged[:3]}"
