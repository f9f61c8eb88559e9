"""Group-relative advantages of GRPO (SPEC S3) and the keys that define a group.

``A_i = (R_i - mean_g(R)) / (std_g(R) + eps)``, clipped to ``±clip``. Statistics use the *population* standard
deviation (``ddof = 0``), like ``numpy.std`` in the public Flow-GRPO stat tracker, so advantages and ``adv_clip``
values carry over from that code base.

:func:`group_advantages` runs on the rewards' device without host synchronisation (no ``.item()``, no Python
branching on tensor values, no data-dependent shapes), so it may sit inside a captured CUDA graph. Its reductions
are deterministic: each per-group statistic is a masked ``sum``/``amax`` over a dense ``[G, B]`` membership mask
(torch's reduction kernels use a fixed tree order, no float atomics), never ``index_add_``/``scatter_add_``, which
use atomics on CUDA. The cost is ``O(G · B)`` memory and time — a few MB for the per-iteration batch of a GRPO
run (``B`` up to a few thousand samples).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.distributed as dist

from fastgrpo import _env
from fastgrpo.core.containers import Rollout

__all__ = [
    "AdvantageResult",
    "GroupKey",
    "decoupled_advantages",
    "dense_group_ids",
    "gather_rewards",
    "group_advantages",
    "rank_slice",
    "rollout_advantages",
]


@dataclass(frozen=True)
class GroupKey:
    """What makes samples one GRPO group: the same source image and the same instruction.

    Attributes:
        source_id: stable identifier of the source image (dataset name + row id, file path, content hash).
        instruction: the edit instruction, verbatim.
    """

    source_id: str
    instruction: str

    @property
    def stable_hash(self) -> int:
        """A 64-bit hash that is the same in every process and run (``blake2b``, unlike the salted ``hash``).

        Returned as a signed integer in ``[-2**63, 2**63)`` so that it fits an int64 tensor.
        """
        digest = hashlib.blake2b(digest_size=8, person=b"fastgrpo-group")
        for field in (self.source_id, self.instruction):
            data = field.encode("utf-8")
            # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return int.from_bytes(digest.digest(), "little", signed=True)


def dense_group_ids(keys: Sequence[GroupKey]) -> tuple[torch.Tensor, list[GroupKey]]:
    """Map group keys to dense ids ``0 … G-1`` in order of first appearance.

    Args:
        keys: one :class:`GroupKey` per sample, length ``B ≥ 1``.

    Returns:
        ``(group_ids, unique_keys)``: ``group_ids`` int64 CPU tensor ``[B]``, and ``unique_keys[g]`` the key of
        group ``g`` (``G = len(unique_keys)``).

    Raises:
        ValueError: ``keys`` is empty or holds something that is not a :class:`GroupKey`.
    """
    if len(keys) == 0:
        raise ValueError("keys is empty; pass one GroupKey per sample of the batch")
    index: dict[GroupKey, int] = {}
    ids: list[int] = []
    for position, key in enumerate(keys):
        if not isinstance(key, GroupKey):
            raise ValueError(f"keys[{position}] is a {type(key).__name__}; build it as GroupKey(source_id, instr)")
        ids.append(index.setdefault(key, len(index)))
    return torch.tensor(ids, dtype=torch.int64), list(index)


@dataclass(frozen=True, eq=False)
class AdvantageResult:
    """Advantages and the group statistics behind them; every tensor lives on the rewards' device.

    Attributes:
        rewards: ``[B]`` the rewards the statistics were computed from (NaN where scoring failed).
        advantages: ``[B]`` float32, ``0`` for failed rewards and for members of constant groups.
        group_mean: ``[G]`` float32 mean of the group's finite rewards (``0`` for a group with none).
        group_std: ``[G]`` float32 the standard deviation that divided the group's advantages (before ``eps``):
            the group's population std (``std_mode="group"``) or the batch's (``"global"``).
        group_count: ``[G]`` int64 number of finite rewards per group.
        constant_groups: ``[G]`` bool, groups with fewer than two finite rewards or all of them equal.
        num_constant_groups: ``[]`` int64, ``constant_groups.sum()``.
    """

    rewards: torch.Tensor
    advantages: torch.Tensor
    group_mean: torch.Tensor
    group_std: torch.Tensor
    group_count: torch.Tensor
    constant_groups: torch.Tensor
    num_constant_groups: torch.Tensor


def _check_inputs(
    rewards: torch.Tensor, group_ids: torch.Tensor, num_groups: int, std_mode: str, clip: float | None, eps: float
) -> None:
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1 or not rewards.dtype.is_floating_point:
        raise ValueError("rewards must be a 1-D floating tensor [B] (NaN marks a failed reward)")
    if rewards.numel() == 0:
        raise ValueError("rewards is empty; pass at least one sample")
    if not isinstance(group_ids, torch.Tensor) or group_ids.dtype != torch.int64 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must be an int64 tensor of shape {tuple(rewards.shape)} like rewards; "
            "build it with dense_group_ids(keys)"
        )
    if group_ids.device != rewards.device:
        raise ValueError(f"group_ids is on {group_ids.device} but rewards on {rewards.device}; move them together")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be an integer ≥ 1, got {num_groups!r}")
    if std_mode not in ("group", "global"):
        raise ValueError(f"std_mode must be 'group' or 'global', got {std_mode!r}")
    if clip is not None and not (isinstance(clip, (int, float)) and 0.0 < clip < float("inf")):
        raise ValueError(f"clip must be a finite number > 0 or None (no clipping), got {clip!r}")
    if not (isinstance(eps, (int, float)) and 0.0 <= eps < float("inf")):
        raise ValueError(f"eps must be a finite number ≥ 0, got {eps!r}")
    # Reading the ids synchronises a GPU, so the value check runs on CPU tensors or on request only.
    if group_ids.device.type == "cpu" or _env.check_values():
        low, high = int(group_ids.min()), int(group_ids.max())
        if low < 0 or high >= num_groups:
            raise ValueError(
                f"group_ids must lie in [0, num_groups={num_groups}), got values in [{low}, {high}]; "
                "pass num_groups = number of distinct groups (len(unique_keys) from dense_group_ids)"
            )


def _masked_moments(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Count, mean and population std of ``values`` where ``mask`` holds, along the last dimension.

    ``values`` must be finite wherever it is read; empty rows give mean ``0`` and std ``0``.
    """
    count = mask.sum(-1)
    denom = count.clamp_min(1).to(values.dtype)
    mean = torch.where(mask, values, 0.0).sum(-1) / denom
    deviation = torch.where(mask, values - mean.unsqueeze(-1), 0.0)
    std = ((deviation * deviation).sum(-1) / denom).sqrt()
    return count, mean, std


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    num_groups: int,
    *,
    std_mode: Literal["group", "global"] = "group",
    clip: float | None = 5.0,
    eps: float = 1e-4,
) -> AdvantageResult:
    """Group-relative advantages ``A_i = (R_i - mean_g(R)) / (std_g(R) + eps)``, clipped to ``±clip``.

    Statistics are computed in float64 over the *finite* rewards only; a NaN (failed) or infinite reward gets
    ``A = 0``. Groups with fewer than two finite rewards, or whose finite rewards are all
    equal, are constant: every member gets ``A = 0``. Gather the rewards of all ranks first
    (:func:`gather_rewards`) so that the statistics see whole groups.

    Args:
        rewards: ``[B]`` floating tensor of scalar rewards, NaN where scoring failed.
        group_ids: ``[B]`` int64 dense ids in ``[0, num_groups)`` (:func:`dense_group_ids`). Values are checked
            on CPU tensors (``ValueError``); on a GPU only with ``FASTGRPO_CHECK_VALUES=1`` (it synchronises),
            otherwise a sample with an out-of-range id belongs to no group and gets ``A = 0``.
        num_groups: ``G``, a Python int (it fixes the shapes, so the function stays free of host syncs).
        std_mode: ``"group"`` divides by each group's std; ``"global"`` by the std of all finite rewards of the
            batch (constant groups included, like Flow-GRPO's ``global_std``); the mean is per group either way.
        clip: clip advantages to ``[-clip, clip]``; ``None`` disables clipping.
        eps: added to the std before dividing.

    Returns:
        :class:`AdvantageResult` on the rewards' device.

    Raises:
        ValueError: wrong shapes, dtypes or devices, bad ``num_groups``/``std_mode``/``clip``/``eps``, or (on
            CPU) out-of-range ``group_ids``.

    Example:
        >>> r = torch.tensor([1.0, 0.0, float("nan"), 2.0, 2.0])
        >>> group_advantages(r, torch.tensor([0, 0, 0, 1, 1]), 2).advantages
        tensor([ 0.9998, -0.9998,  0.0000,  0.0000,  0.0000])
    """
    _check_inputs(rewards, group_ids, num_groups, std_mode, clip, eps)
    device = rewards.device
    member = group_ids.unsqueeze(0) == torch.arange(num_groups, device=device).unsqueeze(1)  # [G, B]
    finite = torch.isfinite(rewards) & member.any(0)  # [B]
    values = torch.where(finite, rewards.to(torch.float64), 0.0)  # NaN/inf never reach a reduction
    counted = member & finite.unsqueeze(0)  # [G, B]

    count, mean, std = _masked_moments(values.expand(num_groups, -1), counted)
    highest = torch.where(counted, values, float("-inf")).amax(-1)
    lowest = torch.where(counted, values, float("inf")).amin(-1)
    constant = (count < 2) | (highest == lowest)
    if std_mode == "global":
        std = _masked_moments(values, finite)[2].expand(num_groups)

    sample_group = group_ids.clamp(0, num_groups - 1)  # out-of-range ids are already not finite
    live = finite & ~constant[sample_group]
    advantages = (values - mean[sample_group]) / (std[sample_group] + eps)
    advantages = torch.where(live, advantages, 0.0)  # also hides 0/0 of constant groups when eps = 0
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return AdvantageResult(
        rewards=rewards,
        advantages=advantages.to(torch.float32),
        group_mean=mean.to(torch.float32),
        group_std=std.to(torch.float32).contiguous(),
        group_count=count,
        constant_groups=constant,
        num_constant_groups=constant.sum(),
    )


def gather_rewards(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, group: dist.ProcessGroup | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the rewards and group ids of all ranks, rank by rank (SPEC S3: groups gathered first).

    With ``torch.distributed`` initialised and more than one rank, this is two ``all_gather_into_tensor``
    (``all_gather_single`` from torch 2.14) collectives; otherwise the inputs come back unchanged. Rank
    ``r``'s samples are rows ``rank_slice(B)`` of the result. Two requirements that the collective cannot
    check cheaply: every rank passes the same ``B``, and ``group_ids`` are *global* ids (the same condition
    has the same id on every rank, as the distributed group sampler assigns them), not per-rank
    :func:`dense_group_ids`.

    Args:
        rewards: ``[B]`` float rewards of this rank (NaN = failed).
        group_ids: ``[B]`` int64 global group ids.
        group: process group (default: the world).

    Returns:
        ``(all_rewards [W·B], all_group_ids [W·B])`` on the inputs' device (a CUDA device with NCCL).
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be 1-D of the same length, got {tuple(rewards.shape)} and "
            f"{tuple(group_ids.shape)}"
        )
    if not (dist.is_available() and dist.is_initialized()):
        return rewards, group_ids
    world = dist.get_world_size(group)
    if world == 1:
        return rewards, group_ids
    # torch 2.14 renamed all_gather_into_tensor (deprecated there) to all_gather_single; same semantics.
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gathered = []
    for local in (rewards, group_ids):
        out = local.new_empty(world * local.numel())
        all_gather(out, local.contiguous(), group=group)
        gathered.append(out)
    return gathered[0], gathered[1]


def rank_slice(num_local: int, *, group: dist.ProcessGroup | None = None) -> slice:
    """Rows of this rank's ``num_local`` samples in the output of :func:`gather_rewards` (all rows if not
    distributed)."""
    rank = dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0
    return slice(rank * num_local, (rank + 1) * num_local)


def decoupled_advantages(
    components: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    group_ids: torch.Tensor,
    num_groups: int,
    *,
    std_mode: Literal["group", "global"] = "group",
    clip: float | None = 5.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Advantages of several reward components, each normalised within its groups before they are combined
    (GDPO, Liu et al. 2026, arXiv:2601.05242): ``A_k = group_advantages(R_k)`` (NaN rewards and constant groups
    give 0, per component), ``S = sum_k w_k A_k``, then ``S`` is normalised over the batch,
    ``(S - mean(S)) / (std(S) + eps)`` over the samples with at least one finite component, and clipped to
    ``±clip``. Samples without any finite component get 0.

    Args:
        components: name -> ``[B]`` floating rewards (NaN = failed), every component with a non-zero weight.
        weights: name -> weight of each component.
        group_ids, num_groups, std_mode, eps: as in :func:`group_advantages`; clip: applied to the result.

    Returns:
        ``[B]`` float32 advantages on the rewards' device (no host synchronisation).

    Raises ``ValueError`` for no components, components without a weight, or rewards of different shapes.
    """
    if not components:
        raise ValueError("components is empty: pass the reward components (name -> [B] rewards)")
    missing = sorted(set(components) - set(weights))
    if missing:
        raise ValueError(f"components {missing} have no weight; pass one per component")
    shapes = {tuple(v.shape) for v in components.values()}
    if len(shapes) != 1:
        raise ValueError(f"every component needs one reward per sample, got shapes {sorted(shapes)}")
    combined, live = None, None
    for name, rewards in components.items():
        part = group_advantages(rewards, group_ids, num_groups, std_mode=std_mode, clip=None, eps=eps)
        weighted = float(weights[name]) * part.advantages.double()
        finite = torch.isfinite(rewards)
        combined = weighted if combined is None else combined + weighted
        live = finite if live is None else live | finite
    assert combined is not None and live is not None
    _, mean, std = _masked_moments(torch.where(live, combined, 0.0), live)
    out = torch.where(live, (combined - mean) / (std + eps), 0.0)
    if clip is not None:
        out = out.clamp(-clip, clip)
    return out.to(torch.float32)


def rollout_advantages(
    rollout: Rollout,
    num_groups: int,
    *,
    std_mode: Literal["group", "global"] = "group",
    clip: float | None = 5.0,
    aggregation: Literal["sum", "per_component"] = "sum",
    weights: Mapping[str, float] | None = None,
) -> tuple[Rollout, AdvantageResult]:
    """The group advantages of ``rollout``'s rewards, with the groups gathered over all ranks first.

    Args:
        rollout: this rank's rollout, ``rewards`` scored (and ``reward_components`` for ``per_component``) and
            ``group_ids`` global (the same condition has the same id on every rank).
        num_groups: ``G``, the number of global groups.
        std_mode, clip: as in :func:`group_advantages`.
        aggregation: ``"sum"`` (the weighted total, :func:`group_advantages`) or ``"per_component"``
            (:func:`decoupled_advantages` of ``rollout.reward_components`` with ``weights``).

    Returns:
        ``(rollout with this rank's advantages, the statistics of the total rewards over every rank's samples)``.

    Raises ``ValueError`` for ``per_component`` without reward components or weights.
    """
    all_rewards, all_ids = gather_rewards(rollout.rewards, rollout.group_ids)
    result = group_advantages(all_rewards, all_ids, num_groups, std_mode=std_mode, clip=clip)
    advantages = result.advantages
    if aggregation == "per_component":
        if not rollout.reward_components or weights is None:
            raise ValueError("per_component advantages need the rollout's reward_components and their weights")
        gathered = {n: gather_rewards(v, rollout.group_ids)[0] for n, v in rollout.reward_components.items()}
        advantages = decoupled_advantages(gathered, weights, all_ids, num_groups, std_mode=std_mode, clip=clip)
        result = replace(result, advantages=advantages)
    return replace(rollout, advantages=advantages[rank_slice(rollout.batch_size)]), result
