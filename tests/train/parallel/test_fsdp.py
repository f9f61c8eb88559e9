"""``runtime.fsdp=true``: two CPU processes (Gloo) sharding the transformer with FSDP2 give the same LoRA, rewards and
evaluations as one unsharded process on the same global batch, write whole (unsharded) LoRA tensors, and resume
exactly from their checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastgrpo.models.lora import read_lora
from fastgrpo.train.config import load_config
from fastgrpo.train.loop import Trainer
from fastgrpo.train.parallel.fsdp import check_lockstep_evaluation
from fastgrpo.train.storage.state_files import load_state

COMMON = [
    "sampler.group_size=2",
    "sampler.train_steps=4",
    "sampler.eval_steps=4",
    "sampler.rollout_batch=4",
    "data.held_out=4",
    "logging.eval_every=1",
    "logging.save_every=0",
    "logging.progress=false",
    "runtime.device=cpu",
    "optim.lr=0.003",
    "optim.ema_decay=0.5",
]

# Each rank: a 1-iteration FSDP run (checkpoint at the end), then a second trainer on the same run directory that
# resumes from it (state compared before it trains) and runs iteration 2. The process group is made here so that
# it outlives both trainers.
WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from fastgrpo.models.lora import lora_state_dict
    from fastgrpo.train.config import load_config
    from fastgrpo.train.model_setup import build_model
    from fastgrpo.train.parallel.fsdp import full_optimizer_state, full_tensor
    from fastgrpo.train.loop import Trainer

    def snapshot(trainer):
        lora = {k: full_tensor(v).clone() for k, v in trainer.model.lora_state_dict().items()}
        state = full_optimizer_state(trainer.policy.optimizer)["state"]
        keys = ("exp_avg", "exp_avg_sq")
        moments = {key: torch.cat([state[i][key].reshape(-1) for i in sorted(state)]) for key in keys}
        steps = [float(state[i]["step"]) for i in sorted(state)]
        ema = [full_tensor(e).clone() for e in trainer.policy.ema]
        return {"lora": lora, **moments, "steps": steps, "ema": ema, "lr": trainer.policy.scheduler.get_last_lr()}

    out, args = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo")
    first = Trainer(load_config(None, [*args, "runtime.max_steps=1"]), log=lambda _m: None)
    sharded = [type(p).__name__ for p in first.policy.params]
    result = first.run()
    saved = snapshot(first)
    first.close()
    second = Trainer(load_config(None, [*args, "runtime.max_steps=2", "logging.eval_every=0"]), log=lambda _m: None)
    assert second.resume()
    resumed = snapshot(second)
    final_result = second.run()
    final = snapshot(second)

    # the reference policy of the sharded model (adapters off) is the base model; the trained LoRA is not
    base = build_model(second.cfg, second.device)
    gen = torch.Generator().manual_seed(0)
    cond = base.encode(torch.rand(2, 3, 32, 32, generator=gen), ["make the circle red", "move the square left"])
    x, t = base.initial_noise(2, 32, 32, generator=gen), torch.tensor([0.7, 0.4])
    with torch.no_grad():
        v_base = base.velocity(x, t, cond)
        with second.model.reference():
            v_ref = second.model.velocity(x, t, cond)
        v_lora = second.model.velocity(x, t, cond)
    reference = {"error": float((v_ref - v_base).abs().max()), "lora_change": float((v_lora - v_base).abs().max()),
                 "requires_grad": all(p.requires_grad for p in second.policy.params)}
    second.close()
    torch.save({"sharded": sharded, "saved": saved, "resumed": resumed, "final": final, "metrics": result.metrics,
                "final_metrics": final_result.metrics, "reference": reference}, f"{out}.rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: Path, out: Path, args: list[str]) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TRITON_INTERPRET": "1",
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, str(script), str(out), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    return procs


def test_fsdp_ranks_equal_one_unsharded_process_and_resume_exactly(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "fsdp"
    two = [*COMMON, "sampler.prompts_per_step=2", "runtime.fsdp=true", f"logging.output_dir={tmp_path}",
           "logging.run_name=two"]  # fmt: skip
    procs = _launch(script, out, two)
    one = [*COMMON, "sampler.prompts_per_step=4", "optim.grad_accum=2", f"logging.output_dir={tmp_path}",
           "logging.run_name=one"]  # fmt: skip
    try:  # the unsharded reference runs meanwhile (the ranks spend part of their time waiting on each other)
        trainer = Trainer(load_config(None, [*one, "runtime.max_steps=1"]), log=lambda _m: None)
        single_result = trainer.run()
        trainer.close()
        single = {k: v.clone() for k, v in trainer.model.lora_state_dict().items()}
        moments = trainer.policy.optimizer.state_dict()["state"]
        single_moment = torch.cat([moments[i]["exp_avg"].reshape(-1) for i in sorted(moments)])
    finally:
        logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    ranks = [torch.load(f"{out}.rank{r}.pt", weights_only=False) for r in range(2)]
    assert set(ranks[0]["sharded"]) == {"DTensor"}  # the optimiser stepped sharded LoRA weights

    saved = ranks[0]["saved"]
    for name in single:
        assert saved["lora"][name].shape == single[name].shape  # gathered whole, not a shard
        assert torch.equal(saved["lora"][name], ranks[1]["saved"]["lora"][name]), f"ranks disagree on {name}"
    # FSDP's reduce-scatter averaged the same gradient as the unsharded process (AdamW's first moment is
    # (1 - beta1) g), up to summation order; the weights then agree to a small fraction of one step of lr
    scale = float(single_moment.abs().max())
    assert scale > 0
    torch.testing.assert_close(saved["exp_avg"], single_moment, rtol=0, atol=scale * 1e-5)
    flat_two = torch.cat([saved["lora"][n].reshape(-1) for n in single])
    flat_one = torch.cat([single[n].reshape(-1) for n in single])
    assert (flat_two - flat_one).abs().max() < 3e-3 * 0.05
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in single.items() if "lora_B" in k)
    # rank 0 logged the same rewards, evaluations (EMA weights) and global gradient norm as the single process
    two_rows, one_rows = ranks[0]["metrics"], single_result.metrics
    assert ranks[1]["metrics"] == []
    assert [r["step"] for r in two_rows] == [r["step"] for r in one_rows] == [0, 1]
    for a, b in zip(two_rows, one_rows, strict=True):
        for key in ("reward_mean", "eval_reward_mean"):
            if key in b:
                assert abs(a[key] - b[key]) < 1e-6, (key, a[key], b[key])
    assert abs(two_rows[1]["grad_norm"] - one_rows[1]["grad_norm"]) <= 1e-5 * one_rows[1]["grad_norm"]

    # the checkpoint holds whole tensors: its LoRA equals the gathered one, its lora/ file the EMA (as the unsharded
    # run's checkpoint does)
    checkpoint = tmp_path / "two" / "checkpoints" / "step-00000001"
    shared = load_state(checkpoint / "shared.safetensors")
    for name, tensor in saved["lora"].items():
        assert torch.equal(shared["policy"]["lora"][name], tensor)
    written, _config = read_lora(checkpoint / "lora")
    ema = dict(zip(single, saved["ema"], strict=True))
    for name in single:
        assert torch.equal(written[name], ema[name])
    exported, _ = read_lora(tmp_path / "one" / "checkpoints" / "step-00000001" / "lora")
    flat_ema = torch.cat([ema[n].reshape(-1) for n in single])
    assert (flat_ema - torch.cat([exported[n].reshape(-1) for n in single])).abs().max() < 3e-3 * 0.05
    assert not torch.equal(flat_ema, flat_two)  # the EMA, not the live weights

    # resume: every rank got back exactly the weights, AdamW state, EMA and schedule it saved, then trained on
    for rank in ranks:
        before, after = rank["saved"], rank["resumed"]
        for name in single:
            assert torch.equal(before["lora"][name], after["lora"][name])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(before[key], after[key])
        assert before["steps"] == after["steps"] == [1.0] * len(single)
        assert all(torch.equal(a, b) for a, b in zip(before["ema"], after["ema"], strict=True))
        assert before["lr"] == after["lr"]
        assert rank["final"]["steps"] == [2.0] * len(single)
        assert not torch.equal(rank["final"]["exp_avg"], before["exp_avg"])
    final_rows = ranks[0]["final_metrics"]
    assert [r["step"] for r in final_rows] == [0, 1, 2]
    assert final_rows[:2] == two_rows
    final_export, _ = read_lora(tmp_path / "two" / "lora")
    final_ema = dict(zip(single, ranks[0]["final"]["ema"], strict=True))
    for name in single:
        assert torch.equal(final_export[name], final_ema[name])

    # the sharded model's reference policy (adapters off) is exactly the base model; the trained LoRA is not
    for rank in ranks:
        assert rank["reference"]["error"] < 1e-6
        assert rank["reference"]["lora_change"] > 1e-3
        assert rank["reference"]["requires_grad"]


def test_fsdp_in_one_process_asks_for_torchrun(tmp_path: Path):
    cfg = load_config(None, [*COMMON, "runtime.fsdp=true", f"logging.output_dir={tmp_path}", "logging.run_name=x"])
    with pytest.raises(ValueError, match=r"runtime\.fsdp=true .* launch with `torchrun --nproc-per-node N"):
        Trainer(cfg, log=lambda _m: None)


def test_lockstep_evaluation_refuses_uneven_batch_counts():
    check_lockstep_evaluation([list(range(4))], world_size=2, batch_size=8)
    check_lockstep_evaluation([list(range(3))], world_size=2, batch_size=8)  # 2 and 1 conditions: one batch each
    with pytest.raises(ValueError, match="different numbers of evaluation batches"):
        check_lockstep_evaluation([list(range(5))], world_size=2, batch_size=2)  # 3 / 2 conditions: 2 / 1 batches
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_lockstep_evaluation([[0]], world_size=2, batch_size=8)  # rank 1 would have no batch at all
