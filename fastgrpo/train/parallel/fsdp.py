"""``runtime.fsdp=true``: the transformer sharded over the ranks with FSDP2 (``torch.distributed.fsdp.fully_shard``),
for models whose weights do not fit one GPU.

Layout. LoRA is attached first; then every transformer block is one FSDP unit (FLUX: ``transformer_blocks`` and
``single_transformer_blocks``; Qwen-Image: ``transformer_blocks``) and the root (embedders, final norm and
projection) is the last one. Each parameter of a unit, frozen base weight or trainable LoRA weight alike, is
sharded on dim 0 over all ranks (one flat 1-D mesh; the parameters become ``DTensor`` s with ``Shard(0)``). A unit's
forward all-gathers its whole parameters in one collective and frees them after the forward
(``reshard_after_forward=True``, the root included), so only one block is unsharded at a time.

Decisions and their reasons:

- **Sharded LoRA.** The optimiser sees the sharded LoRA weights (:func:`shard_transformer` returns them); AdamW's
  moments and the EMA are then sharded too. Files hold full tensors (below).
- **Gradients are reduced by FSDP**, inside every backward: a reduce-scatter averages the LoRA gradients over the
  ranks (in fp32, ``MixedPrecisionPolicy(reduce_dtype=float32)``, as the unsharded path's all-reduce does) and adds
  the result to the sharded ``.grad``. The trainer therefore must **not** call
  :meth:`~fastgrpo.train.parallel.distributed.DistContext.average_gradients` for these parameters (their gradients are
  already averaged, and different ranks hold different shards). The update runs many backward passes per optimiser
  step (trained steps x micro-batches); reducing at each of them is exact, since every loss is weighted by its share
  of the rank's batch: the sum over backward passes of rank means is the rank mean of the sums. Not reducing until
  the last backward (``set_requires_gradient_sync``) would keep an unsharded gradient of every LoRA weight between
  backward passes, and the LoRA reduce-scatter is small next to the all-gather of base weights each backward does
  anyway.
- **The root reshards after forward too** (FSDP's default keeps the root unsharded): between forward passes the
  registered parameters are then always the sharded ones, so the optimiser step, the EMA swap, loading a checkpoint
  and peft's adapter toggle all act on what the next all-gather reads. The cost is one all-gather of the root's
  few weights per backward.
- **Reference policy**: the adapters are switched off (peft) on the sharded model; nothing is copied.
- **Gradient clipping** uses the global norm: ``clip_grad_norm_`` over ``DTensor`` gradients reduces the shards'
  norms over the ranks and returns a replicated ``DTensor`` (:func:`full_tensor` reads it without communication).
- **Checkpoints** keep the layout of an unsharded run: every rank gathers the full LoRA weights, EMA and AdamW
  moments (:func:`full_tensor`, :func:`full_optimizer_state`; collectives, so on every rank) and rank 0 writes them;
  on resume every rank reads the full tensors and keeps its own shard (:func:`shard_into_`,
  :func:`load_optimizer_state`: no communication), so a resumed run continues exactly. LoRA files in the diffusers
  format are written by rank 0 from the gathered tensors (``EditModel.save_lora(directory, weights)``).
- **Lockstep**: every forward of a unit is a collective, so all ranks must run the same number of forwards. Rollouts
  and updates do (every rank has the same number of samples); the held-out evaluation splits conditions over the
  ranks, so :func:`check_lockstep_evaluation` refuses held-out sets that would give ranks different batch counts.
- **One process** is refused (:func:`shard_transformer` raises): ``fully_shard`` needs an initialised process group,
  and sharding over one rank saves nothing; launch with ``torchrun --nproc-per-node N`` (N >= 2).

Written for NCCL on GPUs and Gloo on CPUs; the tests run two Gloo processes (NCCL has not been exercised yet).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fastgrpo.models.base import EditModel
from fastgrpo.train.parallel.distributed import DistContext

__all__ = [
    "BLOCK_LISTS",
    "check_lockstep_evaluation",
    "full_optimizer_state",
    "full_tensor",
    "load_optimizer_state",
    "shard_into_",
    "shard_transformer",
    "transformer_blocks",
]

#: attributes of a diffusers transformer that hold its repeated blocks (FLUX: both; Qwen-Image: the first)
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def _is_dtensor(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def transformer_blocks(transformer: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``transformer`` in forward order (the FSDP units below the root).

    Raises ``ValueError`` for a transformer without :data:`BLOCK_LISTS` attributes.
    """
    blocks: list[nn.Module] = []
    for name in BLOCK_LISTS:
        blocks.extend(getattr(transformer, name, None) or [])
    if not blocks:
        raise ValueError(
            f"runtime.fsdp cannot shard {type(transformer).__name__}: it has none of {BLOCK_LISTS}; FSDP supports "
            "the FLUX and Qwen-Image transformers, set runtime.fsdp=false for other models"
        )
    return blocks


def shard_transformer(model: EditModel, dist: DistContext) -> list[nn.Parameter]:
    """Shard ``model.transformer`` (LoRA attached) over the ranks of ``dist`` with FSDP2; returns the LoRA weights
    as the optimiser must see them: sharded ``DTensor`` parameters, in :func:`~fastgrpo.models.lora.lora_parameters`
    order. The parameters returned by ``add_lora`` are no longer the module's after this.

    Raises:
        ValueError: a single process (no ``torchrun`` launch with several ranks), a model without a LoRA writer, or
            a transformer without known block lists.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from fastgrpo.models.lora import has_lora, lora_parameters

    if not dist.active:
        raise ValueError(
            "runtime.fsdp=true shards the transformer over the ranks of a torchrun launch, but this process runs "
            "alone: launch with `torchrun --nproc-per-node N -m fastgrpo.train.cli train ...` (N >= 2), or set "
            "runtime.fsdp=false (one process holds the whole model anyway)"
        )
    transformer = model.transformer
    if not has_lora(transformer) or not hasattr(model, "lora_pipeline_class"):
        raise ValueError(
            "runtime.fsdp shards a LoRA-trained transformer: attach LoRA (add_lora) before sharding; "
            f"{type(model).__name__} must also write LoRA files (lora_pipeline_class)"
        )
    blocks = transformer_blocks(transformer)
    # FSDP warns once per module class that returns views (FLUX's single blocks split their output; the root ends in
    # a linear layer on [B, N, C], whose output is a view). The warning is about in-place ops on such views; neither
    # diffusers' FLUX and Qwen-Image forwards nor the adapters' velocity() do any (they slice, concatenate and add)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor", category=UserWarning)
    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True, mp_policy=policy)
    fully_shard(transformer, mesh=mesh, reshard_after_forward=True, mp_policy=policy)
    params = lora_parameters(transformer)
    if not params or not all(_is_dtensor(p) for p in params):
        raise RuntimeError("FSDP left LoRA weights unsharded; this torch version's fully_shard is not supported")
    return params


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor of a ``DTensor`` (an all-gather for sharded ones: call on every rank, in the same order),
    or ``tensor`` itself when it is a plain tensor."""
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


def shard_into_(target: Tensor, full: Tensor) -> Tensor:
    """Copy the whole tensor ``full`` into ``target`` in place: all of it for a plain tensor, this rank's shard for
    a ``DTensor`` (cut locally, no communication). Returns ``target``.

    Raises ``ValueError`` when the shapes differ (a checkpoint of another LoRA rank or target modules).
    """
    if tuple(full.shape) != tuple(target.shape):
        raise ValueError(f"a saved tensor of shape {tuple(full.shape)} does not fit one of {tuple(target.shape)}")
    with torch.no_grad():
        if _is_dtensor(target):
            from torch.distributed.tensor import distribute_tensor

            full = full.to(device=target.device, dtype=target.dtype)
            full = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None)
        target.copy_(full)
    return target


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every ``DTensor`` state (AdamW's moments) gathered to the whole tensor: the
    layout of an unsharded run. A collective under FSDP: call on every rank."""
    state = optimizer.state_dict()
    gathered = {i: {k: full_tensor(v) for k, v in s.items()} for i, s in state["state"].items()}
    return {**state, "state": gathered}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a state written by :func:`full_optimizer_state` (or an unsharded ``state_dict()``): every state tensor
    shaped like its ``DTensor`` parameter becomes that parameter's shard (no communication), then
    ``optimizer.load_state_dict``."""
    saved_ids = [i for group in state["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    by_id = dict(zip(saved_ids, params, strict=False))  # load_state_dict checks the counts itself
    converted: dict[Any, dict[str, Any]] = {}
    for i, values in state["state"].items():
        param = by_id.get(i)
        converted[i] = {
            k: shard_into_(torch.empty_like(param), v)
            if param is not None and _is_dtensor(param) and isinstance(v, Tensor) and v.shape == param.shape
            else v
            for k, v in values.items()
        }
    optimizer.load_state_dict({**state, "state": converted})


def check_lockstep_evaluation(groups: Sequence[Sequence[Any]], world_size: int, batch_size: int) -> None:
    """Raise ``ValueError`` unless every rank runs the same number of evaluation batches.

    :func:`~fastgrpo.train.evaluate.evaluate_conditions` gives rank ``r`` the conditions ``r, r + W, ...`` of each
    resolution group, in batches of ``batch_size``; under FSDP every batch's forwards are collectives, so a rank
    with one batch more (or none) would wait for the others forever.
    """
    for group in groups:
        counts = {-(-len(range(r, len(group), world_size)) // batch_size) for r in range(world_size)}
        if len(counts) > 1:
            raise ValueError(
                f"runtime.fsdp: a held-out group of {len(group)} conditions gives the {world_size} ranks different "
                f"numbers of evaluation batches of {batch_size} ({sorted(counts)}), and every FSDP forward needs "
                f"all ranks; set data.held_out to a multiple of {world_size} (the world size), or "
                "logging.eval_every=0"
            )
