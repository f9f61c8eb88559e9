"""The GRPO objective of SPEC S3 for one trained step: fused log-prob + KL, then the clipped loss.

``J = mean_t L_policy(t) + beta * mean_t KL(t)``, each term a mean over samples. The trainer evaluates one trained
step of one micro-batch at a time (to free activations), so :func:`step_loss` returns that piece already weighted:
with ``weight = (micro-batch size / batch size) / (number of trained steps)``, summing ``step_loss`` over all
micro-batches and trained steps (gradient accumulation) gives exactly ``J`` and its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fastgrpo.core.sde import StepSpec
from fastgrpo.kernels import GRPOStats, grpo_loss, logprob_kl
from fastgrpo.kernels.sde.naive import coefficients

__all__ = ["GRPOConfig", "step_loss"]


@dataclass(frozen=True)
class GRPOConfig:
    """Clipped-ratio objective and KL regularisation (SPEC S3). Defaults follow public Flow-GRPO runs.

    Attributes:
        clip_low: the ratio is clipped below at ``1 - clip_low``. With ``reduction="mean"`` log-probs, ratios
            stay within about 1e-4 of 1, hence the small default.
        clip_high: the ratio is clipped above at ``1 + clip_high`` (set apart from ``clip_low`` for DAPO-style
            asymmetric clipping).
        beta: weight of the KL to the reference policy; 0 skips the reference forward pass entirely.
        kl_form: ``"exact"`` (``||mu - mu_ref||^2 / (2 s^2)``) or ``"flow_grpo"`` (divides by ``2 sigma_t^2``,
            so beta values tuned for that code base carry over).
        adv_std: normalise advantages by the std within each group (``"group"``) or over the batch (``"global"``).
        adv_clip: advantages are clipped to ``[-adv_clip, adv_clip]``.
        adv_aggregation: how several reward components make one advantage: ``"sum"`` normalises their weighted sum
            within each group (Flow-GRPO's way); ``"per_component"`` normalises each component within its group
            first, sums the weighted results and normalises that sum over the batch (GDPO, Liu et al. 2026,
            arXiv:2601.05242), so that a component with a small spread is not drowned by one with a large spread.
        ratio_norm: GRPO-Guard's regulated clipping (Wang et al. 2025, arXiv:2510.22319). Per trained step, the
            log-ratio ``logp - old_logp`` is centred (its expectation under the rollout policy is
            ``-||mu - mu_old||^2 / (2 s^2)``, a left shift that keeps positive-advantage samples out of the clip;
            here estimated by the micro-batch's detached mean log-ratio) and multiplied by the step's std ``s``,
            so that ratios have one spread at every step; the step's loss is weighted by ``1 / |dt|`` so that
            the steps' gradients are balanced over noise levels (folded into the advantages and the KL, so the
            logged ``policy_loss`` and ``kl`` carry these weights). On-policy (one inner epoch) the ratio stays
            exactly 1 and the gradient is the plain one times ``s / |dt|`` per step.
    """

    clip_low: float = 1e-4
    clip_high: float = 1e-4
    beta: float = 0.004
    kl_form: Literal["exact", "flow_grpo"] = "exact"
    adv_std: Literal["group", "global"] = "group"
    adv_clip: float = 5.0
    adv_aggregation: Literal["sum", "per_component"] = "sum"
    ratio_norm: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"grpo.clip_low must lie in [0, 1) (e.g. 1e-4), got {self.clip_low!r}")
        if not self.clip_high >= 0.0:
            raise ValueError(f"grpo.clip_high must be >= 0 (e.g. 1e-4), got {self.clip_high!r}")
        if not self.beta >= 0.0:
            raise ValueError(f"grpo.beta must be >= 0 (0 disables the KL term), got {self.beta!r}")
        if self.kl_form not in ("exact", "flow_grpo"):
            raise ValueError(f"grpo.kl_form must be 'exact' or 'flow_grpo', got {self.kl_form!r}")
        if self.adv_std not in ("group", "global"):
            raise ValueError(f"grpo.adv_std must be 'group' or 'global', got {self.adv_std!r}")
        if not self.adv_clip > 0.0:
            raise ValueError(f"grpo.adv_clip must be > 0 (e.g. 5), got {self.adv_clip!r}")
        if self.adv_aggregation not in ("sum", "per_component"):
            raise ValueError(f"grpo.adv_aggregation must be 'sum' or 'per_component', got {self.adv_aggregation!r}")
        if not isinstance(self.ratio_norm, bool):
            raise ValueError(f"grpo.ratio_norm must be true or false, got {self.ratio_norm!r}")

    @property
    def needs_reference(self) -> bool:
        """Whether the reference policy's velocity is needed (``beta > 0``)."""
        return self.beta > 0.0


def step_loss(
    x_next: Tensor,
    x: Tensor,
    v: Tensor,
    v_ref: Tensor | None,
    t: float | Tensor,
    t_next: float | Tensor,
    old_logp: Tensor,
    adv: Tensor,
    *,
    grpo: GRPOConfig,
    spec: StepSpec,
    weight: float | Tensor = 1.0,
    blocks: int = 1,
) -> tuple[Tensor, GRPOStats, Tensor]:
    """Weighted loss of one trained step for a micro-batch, its statistics and the new log-prob.

    Args:
        x_next, x: ``[B, ...]`` the stored transition of this step (data, no gradient).
        v: ``[B, ...]`` policy velocity at ``(x, t)``, with gradient.
        v_ref: ``[B, ...]`` reference velocity (adapter off), or None when ``grpo.beta == 0``.
        t, t_next: times ``[B]`` or scalars; ``old_logp [B]`` float32 from the rollout; ``adv [B]`` float32.
        spec: the step math (noise level, ``t_cap``, reduction, kernel backend) of this resolution.
        weight: multiplies the loss (a float, or a 0-d float32 tensor); see the module docstring for the value
            that makes accumulation exact.
        blocks: the rows are this many consecutive equal blocks, one per trained step (several steps in one call,
            ``t``/``t_next`` given per row); the loss is then the mean over all rows. What is per step
            (``ratio_norm``'s centring) is done per block.

    Returns:
        ``(loss 0-d, stats, logp [B])``; ``loss`` is differentiable w.r.t. ``v``; nothing is read to the host.
    """
    if grpo.needs_reference and v_ref is None:
        raise ValueError("grpo.beta > 0 needs v_ref (the reference velocity); pass it or set grpo.beta = 0")
    logp, kl = logprob_kl(
        x_next,
        x,
        v,
        v_ref if grpo.needs_reference else None,
        t,
        t_next,
        noise_level=spec.noise_level,
        t_cap=spec.t_cap,
        reduction=spec.reduction,
        form=grpo.kl_form,
        backend=spec.backend,
        sampler=spec.sampler,
    )
    assert logp is not None
    ratio_logp = logp
    if grpo.ratio_norm:
        ratio_logp, step_weight = _normalised_logp(logp, old_logp, t, t_next, spec, blocks)
        # a positive per-row weight folds exactly into the clipped term (max(-cA r, -cA clip(r)) = c max(...))
        # and the KL term, so steps of one call may carry different weights
        adv = adv * step_weight
        kl = kl * step_weight if kl is not None else None
    loss, stats = grpo_loss(
        ratio_logp, old_logp, adv, clip_low=grpo.clip_low, clip_high=grpo.clip_high, kl=kl, beta=grpo.beta,
        backend=spec.backend,
    )  # fmt: skip
    return loss * weight, stats, logp.detach()


def _normalised_logp(
    logp: Tensor, old_logp: Tensor, t: float | Tensor, t_next: float | Tensor, spec: StepSpec, blocks: int
) -> tuple[Tensor, Tensor]:
    """GRPO-Guard's RatioNorm (:attr:`GRPOConfig.ratio_norm`): ``old_logp + s (lr - mean(lr))`` with
    ``lr = logp - old_logp`` (the mean detached, over each step's block of rows), and the per-row step weight
    ``1 / |dt|``. Stays on the device (``s`` and ``dt`` are computed from the step's times as tensors)."""
    device, rows = logp.device, logp.shape[0]
    t = torch.as_tensor(t, device=device).float().expand(rows)
    t_next = torch.as_tensor(t_next, device=device).float().expand(rows)
    c = coefficients(t, t_next, spec.noise_level, spec.t_cap, torch.float32, spec.sampler)
    log_ratio = logp - old_logp
    block_mean = log_ratio.detach().reshape(blocks, -1).mean(1, keepdim=True).expand(blocks, rows // blocks)
    centred = log_ratio - block_mean.reshape(rows)
    return old_logp + c.std.reshape(rows) * centred, 1.0 / c.dt.abs().reshape(rows)
