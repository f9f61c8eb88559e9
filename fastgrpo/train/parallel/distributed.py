"""torch.distributed for the trainer: one process per GPU under ``torchrun``, or a single process without it.

Data parallelism for LoRA training is done here directly rather than through ``DistributedDataParallel``: the
GRPO update runs many backward passes per optimiser step (trained steps x micro-batches), and only the LoRA
weights have gradients, so the gradient of a whole step is averaged with **one** flattened all-reduce right before
the optimiser step (what DDP does under ``no_sync`` with the last backward outside it, minus the hooks). The base
weights are identical on every rank (loaded from the same checkpoint), the LoRA weights start identical (seeded
initialisation, checked at start-up) and stay identical because every rank applies the same averaged gradient.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed"]

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Rank, world size and device of this process, and the few collectives the trainer needs.

    Attributes:
        rank, world_size, local_rank: from ``torchrun``'s environment (0, 1, 0 without it).
        device: this rank's device.
        initialised: whether this context initialised the process group (and so destroys it in :meth:`close`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that logs and writes run files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one rank."""
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over ranks: one all-reduce of a flat buffer."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            chunk = flat[offset : offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = chunk.clone()
            else:
                p.grad.copy_(chunk)
            offset += n

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (a no-op for one rank); returns ``tensor``."""
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (a one-element all-reduce)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value)
        return bool(value.item() > 0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_same(self, params: Sequence[torch.nn.Parameter], what: str) -> None:
        """Raise if the parameters differ between ranks (a checksum per rank, compared on every rank)."""
        if not self.active:
            return
        local = torch.stack([torch.cat([p.detach().reshape(-1).double() for p in params]).sum()]).to(self.device)
        gathered = [torch.zeros_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        values = [float(g.item()) for g in gathered]
        if any(v != values[0] for v in values):
            raise RuntimeError(
                f"{what} differ between ranks (checksums {values}); every rank must load the same weights and "
                "seed: check that all ranks see the same model.path and runtime.seed"
            )

    def close(self) -> None:
        if self.initialised and dist.is_initialized():
            dist.destroy_process_group()
            self.initialised = False


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"runtime.device={requested} but CUDA is not available here; use runtime.device=cpu or auto")
    if requested == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """The :class:`DistContext` of this process; initialises the process group when launched by ``torchrun``
    (``WORLD_SIZE > 1`` in the environment) and it is not initialised yet.

    Args:
        device: ``runtime.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); under ``torchrun`` with ``cuda`` or
            ``auto`` each rank takes ``cuda:LOCAL_RANK``.
        backend: ``auto`` (NCCL on CUDA, Gloo on CPU), ``nccl`` or ``gloo``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1 and not dist.is_initialized():
        return DistContext(device=dev)
    initialised = False
    if not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
        if chosen == "nccl" and dev.type != "cuda":
            raise ValueError("runtime.distributed_backend=nccl needs CUDA devices; use gloo on CPU")
        dist.init_process_group(chosen, timeout=datetime.timedelta(seconds=timeout_s))
        initialised = True
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, initialised)
    if ctx.is_main:
        logger.info("distributed: %d ranks, backend %s", ctx.world_size, dist.get_backend())
    return ctx
