"""Supervised flow-matching pre-training of the built-in tiny editor on the synthetic editing task.

``python -m fastgrpo.train.pretrain_tiny [--steps N] [--batch B] [--out PATH]`` rebuilds
``fastgrpo/models/weights/tiny_editor.safetensors`` from scratch: random initialisation (seeded), then for each
step a fresh batch of (source, instruction, ground-truth edit) samples, ``x_t = (1 - t) x_0 + t eps`` with
``t ~ sigmoid(N(0, 1))`` (logit-normal, as in rectified-flow training practice), and the loss
``|| v(x_t, t | source, instruction) - (eps - x_0) ||^2``. The transformer and the prompt encoder train together;
an exponential moving average of the weights is what gets saved. Held-out samples (another task seed) are
edited by ODE sampling with the schedule's ``EVAL_STEPS`` and scored by the rule reward.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fastgrpo.data.synthetic import SyntheticEdit, SyntheticEditTask
from fastgrpo.models import tiny_editor
from fastgrpo.models.base import images_to_tensor
from fastgrpo.models.packing import pack_latents
from fastgrpo.rewards.rules import RuleReward
from fastgrpo.train.ode_sampling import sample_ode

HELD_OUT_SEED_OFFSET = 1000


@dataclass(frozen=True)
class PretrainConfig:
    """Attributes: steps, batch (samples per step), lr (AdamW peak, cosine decay after ``warmup`` steps),
    ema (decay of the saved weight average), seed (initialisation, data and noise), eval_every (steps),
    eval_samples (held-out samples scored), size (side of the task's square images in pixels: 16 or 32), out (the
    safetensors file written)."""

    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema: float = 0.998
    seed: int = 0
    eval_every: int = 500
    eval_samples: int = 64
    size: int = tiny_editor.TINY_SIZE
    out: str = str(tiny_editor.WEIGHTS)

    def __post_init__(self) -> None:
        if not (isinstance(self.size, int) and self.size >= 16 and self.size % 16 == 0):
            raise ValueError(f"size must be a multiple of 16 pixels (16, 32, ...), got {self.size!r}")


def _stack(samples: list[SyntheticEdit], attr: str) -> torch.Tensor:
    return images_to_tensor([getattr(s, attr) for s in samples])


def _lr(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def flow_matching_loss(model, samples: list[SyntheticEdit], gen: torch.Generator) -> torch.Tensor:
    """Mean squared error of the predicted velocity against ``eps - x_0`` for one batch."""
    encoder = model.prompt_encoder
    embeds, pooled = encoder(encoder.token_ids([s.instruction for s in samples]))
    cond = model.encode(
        _stack(samples, "source"), prompt_embeds={"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    )
    x0 = pack_latents(model.codec.encode(_stack(samples, "target")))
    t = torch.sigmoid(torch.randn(len(samples), generator=gen))
    eps = torch.randn(x0.shape, generator=gen)
    x_t = (1 - t)[:, None, None] * x0 + t[:, None, None] * eps
    return torch.nn.functional.mse_loss(model.velocity(x_t, t, cond).float(), eps - x0)


@torch.no_grad()
def evaluate(model, samples: list[SyntheticEdit], seed: int, num_steps: int = tiny_editor.EVAL_STEPS) -> dict:
    """Rule-reward terms (means over ``samples``) of ODE edits with ``num_steps`` steps."""
    cond = model.encode(_stack(samples, "source"), [s.instruction for s in samples])
    gen = torch.Generator().manual_seed(seed)
    noise = model.initial_noise(len(samples), cond.height, cond.width, generator=gen)
    edited = model.decode(sample_ode(model, cond, num_steps, noise), cond.height, cond.width)
    images = (edited.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    reward = RuleReward()
    pairs = zip(samples, images, strict=True)
    terms = [reward.terms(s.source.astype(np.float32), img.astype(np.float32), s.spec) for s, img in pairs]
    return {k: float(np.mean([t[k] for t in terms])) for k in terms[0]}


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    """Train, evaluate every ``eval_every`` steps, save the EMA weights to ``cfg.out``; returns the last eval."""
    torch.manual_seed(cfg.seed)
    model = tiny_editor.build_tiny_editor(weights=None, seed=cfg.seed)
    modules = (model.transformer, model.prompt_encoder)
    params = [p for m in modules for p in m.parameters()]
    for m in modules:
        m.train()
    for p in params:
        p.requires_grad_(True)
    ema = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    task = SyntheticEditTask(size=cfg.size, seed=cfg.seed)
    held_out = SyntheticEditTask(size=cfg.size, seed=cfg.seed + HELD_OUT_SEED_OFFSET)
    eval_set = [held_out.sample(i) for i in range(cfg.eval_samples)]
    gen = torch.Generator().manual_seed(cfg.seed)
    result: dict = {}
    start = time.time()
    for step in range(cfg.steps):
        for group in optimiser.param_groups:
            group["lr"] = _lr(cfg, step)
        loss = flow_matching_loss(model, [task.sample(step * cfg.batch + i) for i in range(cfg.batch)], gen)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        with torch.no_grad():
            for avg, live in zip(ema, modules, strict=True):
                for a, p in zip(avg.parameters(), live.parameters(), strict=True):
                    a.lerp_(p, 1.0 - cfg.ema)
        if (step + 1) % 50 == 0:
            log(f"step {step + 1}/{cfg.steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            result = _evaluate_ema(model, ema, modules, eval_set, cfg.seed)
            log(f"step {step + 1}: held-out {json.dumps(result)}")
    tiny_editor.save_weights(ema[0], ema[1], cfg.out)
    log(f"saved {cfg.out} after {time.time() - start:.0f} s")
    return result


def _evaluate_ema(model, ema, modules, eval_set, seed) -> dict:
    live = [copy.deepcopy(m.state_dict()) for m in modules]
    for avg, m in zip(ema, modules, strict=True):
        m.load_state_dict(avg.state_dict())
        m.eval()
    try:
        return evaluate(model, eval_set, seed)
    finally:
        for state, m in zip(live, modules, strict=True):
            m.load_state_dict(state)
            m.train()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in asdict(PretrainConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    cfg = PretrainConfig(**vars(parser.parse_args(argv)))
    result = pretrain(cfg)
    Path(cfg.out).with_suffix(".json").write_text(json.dumps({"config": asdict(cfg), "held_out": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
