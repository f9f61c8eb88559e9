"""Data-parallel training: two CPU processes (Gloo) give the same LoRA as one process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from fastgrpo.train.config import load_config
from fastgrpo.train.loop import Trainer

COMMON = [
    "sampler.group_size=4",
    "sampler.train_steps=4",
    "sampler.eval_steps=4",
    "sampler.rollout_batch=8",
    "data.held_out=4",
    "logging.eval_every=1",
    "logging.save_every=0",
    "logging.progress=false",
    "runtime.max_steps=1",
    "runtime.device=cpu",
    "optim.lr=0.003",
]

WORKER = textwrap.dedent(
    """
    import sys, torch
    from fastgrpo.models.lora import lora_state_dict
    from fastgrpo.train.config import load_config
    from fastgrpo.train.loop import Trainer

    out = sys.argv[1]
    trainer = Trainer(load_config(None, sys.argv[2:]), log=lambda _m: None)
    result = trainer.run()
    state = {k: v.detach().clone() for k, v in trainer.model.lora_state_dict().items()}
    moments = trainer.policy.optimizer.state_dict()["state"]
    first = torch.cat([moments[i]["exp_avg"].reshape(-1) for i in sorted(moments)])
    torch.save({"lora": state, "exp_avg": first, "metrics": result.metrics}, f"{out}.rank{trainer.dist.rank}.pt")
    trainer.close()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_one_process_on_the_same_global_batch(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "dist"
    port = _free_port()
    args = [*COMMON, "sampler.prompts_per_step=2", f"logging.output_dir={tmp_path}", "logging.run_name=two"]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TRITON_INTERPRET": "1",
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, str(script), str(out), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]

    single_cfg = load_config(
        None,
        [*COMMON, "sampler.prompts_per_step=4", "optim.grad_accum=2", f"logging.output_dir={tmp_path}",
         "logging.run_name=one"],
    )  # fmt: skip
    trainer = Trainer(single_cfg, log=lambda _m: None)
    single_result = trainer.run()
    trainer.close()

    single = trainer.model.lora_state_dict()
    moments = trainer.policy.optimizer.state_dict()["state"]
    single_moment = torch.cat([moments[i]["exp_avg"].reshape(-1) for i in sorted(moments)])
    ranks = [torch.load(f"{out}.rank{r}.pt", weights_only=False) for r in range(2)]
    for name in single:
        assert torch.equal(ranks[0]["lora"][name], ranks[1]["lora"][name]), f"ranks disagree on {name}"
    # the averaged gradient (AdamW's first moment = (1 - beta1) g) equals the single process's up to summation
    # order; the updated weights then agree except where Adam normalises a near-zero gradient component
    scale = float(single_moment.abs().max())
    assert scale > 0
    torch.testing.assert_close(ranks[0]["exp_avg"], single_moment, rtol=0, atol=scale * 1e-5)
    flat_two = torch.cat([ranks[0]["lora"][n].reshape(-1) for n in single])
    flat_one = torch.cat([single[n].reshape(-1) for n in single])
    assert (flat_two - flat_one).abs().max() < 3e-3 * 0.05  # a small fraction of one step of lr = 3e-3
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in single.items() if "lora_B" in k)
    # rank 0 logged the same rewards and evaluations as the single process (only rank 0 writes)
    two_rows, one_rows = ranks[0]["metrics"], single_result.metrics
    assert ranks[1]["metrics"] == []
    assert [r["step"] for r in two_rows] == [r["step"] for r in one_rows] == [0, 1]
    for a, b in zip(two_rows, one_rows, strict=True):
        for key in ("reward_mean", "eval_reward_mean"):
            if key in b:
                assert abs(a[key] - b[key]) < 1e-6, (key, a[key], b[key])
