"""Public entry point of the clipped GRPO objective with closed-form KL (../SPEC.md, S3)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fastgrpo.kernels import _checks
from fastgrpo.kernels.grpo import naive, ops
from fastgrpo.kernels.grpo.naive import STAT_NAMES


class GRPOStats(NamedTuple):
    """On-device statistics of one loss evaluation: a float32 ``[10]`` tensor with named views.

    Fields (0-d tensors): ``loss``, ``policy_loss``, ``kl`` (mean KL), ``clip_frac`` (entries whose gradient
    the clip zeroes: ``r < 1 - eps_low`` with ``A < 0`` or ``r > 1 + eps_high`` with ``A > 0``),
    ``clip_frac_low``, ``clip_frac_high``, ``approx_kl`` (``mean((r - 1) - log r)``), ``ratio_mean``,
    ``ratio_min``, ``ratio_max``; :attr:`NAMES` lists them in the order of ``values``. Nothing is read to the host
    until :meth:`to_dict`.
    """

    values: Tensor

    #: the statistics' names, in the order of ``values``
    NAMES = STAT_NAMES

    def to_dict(self) -> dict[str, float]:
        """Read all statistics to the host (one synchronisation)."""
        return dict(zip(STAT_NAMES, self.values.tolist(), strict=True))


for _i, _name in enumerate(STAT_NAMES):
    setattr(GRPOStats, _name, property(lambda self, i=_i: self.values[i], doc=f"``{_name}`` (0-d tensor)"))


def _check_inputs(logp, old_logp, adv, kl) -> int:
    for name, value in (("logp", logp), ("old_logp", old_logp), ("adv", adv)):
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype != torch.float32:
            raise ValueError(f"{name} has dtype {value.dtype}; pass float32")
        if value.device != logp.device:
            raise ValueError(f"{name} is on {value.device} but logp is on {logp.device}; move it there")
    if logp.dim() not in (1, 2) or logp.numel() == 0:
        raise ValueError(f"logp has shape {tuple(logp.shape)}; pass a non-empty [B] or [B, T] tensor")
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp has shape {tuple(old_logp.shape)} but logp has {tuple(logp.shape)}")
    if adv.shape not in (logp.shape, logp.shape[:1]):
        raise ValueError(f"adv has shape {tuple(adv.shape)}; pass [B] = [{logp.shape[0]}] or logp's shape")
    if kl is not None:
        if not isinstance(kl, Tensor) or kl.shape != logp.shape or kl.dtype != torch.float32:
            raise ValueError(f"kl must be a float32 tensor of logp's shape {tuple(logp.shape)} (or None)")
        if kl.device != logp.device:
            raise ValueError(f"kl is on {kl.device} but logp is on {logp.device}; move it there")
    return logp.numel()


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    kl: Tensor | None = None,
    beta: float = 0.0,
    backend: str = "auto",
) -> tuple[Tensor, GRPOStats]:
    """Clipped GRPO loss ``mean(max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))) + beta * mean(kl)``.

    ``logp, old_logp``: float32 ``[B]`` (one step) or ``[B, T]`` (T trained steps), ``r = exp(logp - old_logp)``;
    ``adv``: float32 ``[B]`` (shared by a sample's steps) or logp's shape; ``kl``: logp's shape or None.
    Returns ``(loss 0-d, stats)``: ``loss`` is differentiable w.r.t. ``logp`` and ``kl``; ``stats`` is a
    :class:`GRPOStats` on the device (no host synchronisation).
    """
    if not isinstance(logp, Tensor):
        raise ValueError(f"logp must be a torch.Tensor, got {type(logp).__name__}")
    _check_inputs(logp, old_logp, adv, kl)
    for name, value in (("clip_low", clip_low), ("clip_high", clip_high), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a non-negative float, got {value!r}")
    if clip_low >= 1.0:
        raise ValueError(f"clip_low must be < 1 (the ratio's lower bound is 1 - clip_low), got {clip_low}")
    if _checks.resolve_backend(backend, logp.device) in ("torch", "cuda"):  # no native twin: [B] values only
        loss, stats = naive.grpo_loss_ref(logp, old_logp, adv, clip_low=clip_low, clip_high=clip_high, kl=kl, beta=beta)
        return loss, GRPOStats(stats)
    params = ops.LossParams(float(clip_low), float(clip_high), float(beta))
    stats = ops.grpo_loss_triton(
        logp.reshape(-1).contiguous(),
        old_logp.reshape(-1).contiguous().detach(),
        adv.reshape(-1).contiguous().detach(),
        kl.reshape(-1).contiguous() if kl is not None else None,
        params,
    )
    return stats[0], GRPOStats(stats.detach())
