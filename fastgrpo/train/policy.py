"""The trained policy's weights and how they step: AdamW on the LoRA weights, the learning-rate schedule, an
optional EMA, the gradient all-reduce over ranks, clipping, and skipping updates whose loss or gradient is not
finite.

One optimiser step (:meth:`Policy.step`) after the update's backward passes:

1. average the LoRA gradients over the ranks (one flattened all-reduce; under FSDP every backward has already
   reduce-scattered them);
2. clip the global gradient norm (``optim.grad_clip``);
3. all-reduce the update's statistics and the norm, then read them to the host: the one synchronisation of the
   update;
4. if everything is finite: AdamW, the schedule and the EMA step; otherwise the gradient is dropped and counted,
   and ``optim.nonfinite_limit`` skipped updates in a row stop the run.

Its :meth:`~Policy.state_dict` holds everything a resumed run needs (LoRA weights, AdamW moments, schedule, EMA,
skip counters) as whole tensors, also under FSDP (gathered: a collective, so every rank calls it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastgrpo.kernels import GRPOStats
from fastgrpo.models.base import EditModel
from fastgrpo.train.config.sections import OptimConfig
from fastgrpo.train.errors import TrainingError
from fastgrpo.train.parallel.distributed import DistContext
from fastgrpo.train.parallel.fsdp import full_optimizer_state, full_tensor, load_optimizer_state, shard_into_

__all__ = ["Policy"]


class Policy:
    """AdamW, schedule, EMA and the optimiser step of the LoRA weights ``params`` of ``model``.

    Args:
        model: the trained model (its adapter names the weights in state dicts and files).
        params: the trainable LoRA weights (sharded ``DTensor`` s under FSDP), non-empty.
        cfg: the ``optim`` section.
        dist: ranks and collectives.
        sharded: the weights are FSDP shards (gradients are already averaged; files get gathered tensors).
        log: receives one line per skipped update.
    """

    def __init__(
        self,
        model: EditModel,
        params: list[nn.Parameter],
        cfg: OptimConfig,
        dist: DistContext,
        *,
        sharded: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        if not params:
            raise ValueError("params is empty: pass the trainable LoRA weights (what model.add_lora returns)")
        self.model, self.params, self.cfg, self.dist, self.sharded, self._log = model, params, cfg, dist, sharded, log
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps
        )
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda n: min(1.0, (n + 1) / warmup) if warmup else 1.0
        )
        self.ema = [p.detach().clone() for p in params] if cfg.ema_decay is not None else None
        #: skipped (non-finite) updates in a row, and in all
        self.nonfinite_in_row = 0
        self.skipped_total = 0

    @property
    def lr(self) -> float:
        """The current learning rate."""
        return float(self.scheduler.get_last_lr()[0])

    @property
    def num_weights(self) -> int:
        """Elements of the LoRA weights (of this rank's shards under FSDP)."""
        return sum(p.numel() for p in self.params)

    def zero_grad(self) -> None:
        """Drop every gradient (``set_to_none``)."""
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, stats: GRPOStats, *, iteration: int) -> dict[str, float]:
        """The optimiser step after an update's backward passes (see the module docstring); returns the update's
        statistics averaged over ranks and ``grad_norm``, read to the host once.

        Raises :class:`~fastgrpo.train.errors.TrainingError` after ``optim.nonfinite_limit`` skipped updates in a
        row (``iteration``, 1-based, names the last one).
        """
        if not self.sharded:  # under FSDP each backward has already reduce-scattered (averaged) the gradients
            self.dist.average_gradients(self.params)
        clip = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
        norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.params, clip))  # the global norm under FSDP too
        values = torch.cat([stats.values.float(), norm.reshape(1).float().to(stats.values.device)])
        values = self.dist.all_reduce_sum(values) / self.dist.world_size
        read = values.tolist()  # the one host read of the update
        if all(math.isfinite(v) for v in read):
            self.optimizer.step()
            self.scheduler.step()
            self._ema_update()
            self.nonfinite_in_row = 0
        else:
            self._skip(iteration)
        out = dict(zip(GRPOStats.NAMES, read[: len(GRPOStats.NAMES)], strict=True))
        out["grad_norm"] = read[-1]
        return out

    def _skip(self, iteration: int) -> None:
        self.zero_grad()
        self.nonfinite_in_row += 1
        self.skipped_total += 1
        limit = self.cfg.nonfinite_limit
        self._log(
            f"step {iteration}: non-finite loss or gradient; update skipped ({self.nonfinite_in_row} in a row, "
            f"limit {limit})"
        )
        if self.nonfinite_in_row >= limit:
            raise TrainingError(
                f"{self.nonfinite_in_row} updates in a row had a non-finite loss or gradient (last at iteration "
                f"{iteration}); the run has diverged or a reward is broken. Lower optim.lr, check the rewards, or "
                "resume from the last checkpoint with other settings"
            )

    def _ema_update(self) -> None:
        if self.ema is None:
            return
        decay = float(self.cfg.ema_decay)  # type: ignore[arg-type]
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """The EMA weights in place of the live ones (evaluation, export); nothing changes without an EMA."""
        if self.ema is None:
            yield
            return
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema, strict=True):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, live, strict=True):
                    p.copy_(v)

    @contextlib.contextmanager
    def saved_weights(self, directory: str | Path) -> Iterator[None]:
        """The LoRA saved in ``directory`` (e.g. ``lora/best``) in place of the live weights, restored afterwards
        bit-exactly. One process only (under FSDP each rank holds a shard: ``ValueError``)."""
        if self.sharded:
            raise ValueError("the weights of a saved LoRA are swapped in only without FSDP (one process)")
        live = [p.detach().clone() for p in self.params]
        try:
            self.model.load_lora(directory)
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, live, strict=True):
                    p.copy_(v)

    # --- files and checkpoints ----------------------------------------------------------------------------------

    def _full_lora(self) -> dict[str, Tensor]:
        """The live LoRA weights as whole CPU tensors (gathered under FSDP: a collective, every rank calls it)."""
        return {k: full_tensor(v).cpu().clone() for k, v in self.model.lora_state_dict().items()}

    def lora_writer(self) -> Callable[[Path], None]:
        """A function that writes the LoRA to export (the EMA when kept) into a directory in the diffusers format.
        Call this on every rank (under FSDP it gathers the weights now); call the function on rank 0 alone."""
        if not self.sharded:

            def write_live(directory: Path) -> None:
                with self.ema_weights():
                    self.model.save_lora(directory)

            return write_live
        full = self._full_lora()
        if self.ema is not None:
            full = dict(zip(full, (full_tensor(e).cpu() for e in self.ema), strict=True))

        def write_gathered(directory: Path) -> None:
            self.model.save_lora(directory, full)

        return write_gathered

    def state_dict(self) -> dict[str, Any]:
        """LoRA weights, AdamW state, schedule, EMA and skip counters as whole tensors (a collective under FSDP)."""
        return {
            "lora": self._full_lora(),
            "optimizer": full_optimizer_state(self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "ema": [full_tensor(e).cpu() for e in self.ema] if self.ema is not None else None,
            "nonfinite_in_row": self.nonfinite_in_row,
            "skipped_total": self.skipped_total,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; under FSDP each rank keeps its shard (no communication).

        Raises ``ValueError`` when the saved LoRA does not fit this adapter (another rank or target modules).
        """
        live = self.model.lora_state_dict()
        different = sorted(set(live) ^ set(state["lora"]))
        if different:
            raise ValueError(f"the checkpoint's LoRA does not fit this adapter (e.g. {different[:3]})")
        with torch.no_grad():
            for name, tensor in live.items():
                shard_into_(tensor, state["lora"][name])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            for e, saved in zip(self.ema, state["ema"], strict=True):
                shard_into_(e, saved)
        self.nonfinite_in_row = int(state["nonfinite_in_row"])
        self.skipped_total = int(state["skipped_total"])
