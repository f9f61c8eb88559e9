"""The ``sampler``, ``optim`` and ``rewards`` sections: how rollouts are drawn, how the LoRA is updated, what is
rewarded (the SDE and GRPO sections are :class:`fastgrpo.core.sde.SDEConfig` and
:class:`fastgrpo.core.objective.GRPOConfig`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastgrpo.train.config.checks import check_int, check_number, check_optional_str

__all__ = ["OptimConfig", "RewardsConfig", "SamplerConfig"]


@dataclass(frozen=True)
class SamplerConfig:
    """How rollouts are drawn (SPEC S3 groups, S5 step reduction).

    Attributes:
        group_size: ``G``, edits sampled per condition; GRPO compares them, so at least 2.
        prompts_per_step: ``P``, conditions per rank per iteration; a rank rolls out ``P * G`` samples.
        train_steps: SDE steps of a training rollout (e.g. 6-10), on the same time interval as evaluation.
        eval_steps: ODE steps of evaluation and inference (the model's usual count, e.g. 28 for FLUX.1 Kontext).
        sde_window: ``[start, end)`` indices of the rollout steps that may be SDE steps (and trained); steps
            outside are deterministic ODE steps and not trained. Null: every step.
        sde_steps: consecutive SDE steps per rollout (at most: a window with fewer SDE steps is used whole),
            placed inside ``sde_window`` anew each iteration by ``window_schedule``; the window's other steps are
            ODE steps that iteration. Null: the whole window every iteration. One or two steps is Flow-GRPO-Fast's
            branching (Liu et al. 2025, arXiv:2505.05470, "Flow-GRPO-Fast"); a window that moves with training is
            MixGRPO's (Li et al. 2025, arXiv:2507.21802). Fewer SDE steps mean cleaner rollouts and, with
            ``shared_noise``, a shared ODE prefix rolled out once per group.
        window_schedule: where the ``sde_steps`` window lies each iteration: ``random`` (a fresh start drawn
            from ``(seed, iteration)``), or ``sliding`` (MixGRPO: the start moves one step later every
            ``window_stride`` iterations, wrapping round to the beginning of ``sde_window``).
        window_stride: iterations per position of a ``sliding`` window.
        shared_noise: every rollout of a group starts from the same initial noise (DanceGRPO, Xue et al. 2025,
            arXiv:2505.07818), so the edits of a group differ only by the SDE steps' noise and their reward
            differences are credited to those steps. The ODE steps before the first SDE step are then the same
            for the whole group and are rolled out once per group.
        train_fraction: fraction of the iteration's SDE steps trained (a fresh random subset each time, at
            least one step); 1 trains them all. Fewer steps mean fewer transformer passes with gradient.
        seed: seed of the rollout noise; null derives it from ``runtime.seed``.
        rollout_batch: samples per rollout forward (must divide ``P * G``); null rolls all ``P * G`` out at once.
            With several chunks, the rewards of one chunk are computed while the next one rolls out. The rollout
            noise is keyed by chunk, so runs that agree on it draw the same noise whatever the number of ranks.
    """

    group_size: int = 8
    prompts_per_step: int = 4
    train_steps: int = 8
    eval_steps: int = 20
    sde_window: tuple[int, int] | None = None
    sde_steps: int | None = 2
    window_schedule: str = "random"
    window_stride: int = 25
    shared_noise: bool = True
    train_fraction: float = 1.0
    seed: int | None = None
    rollout_batch: int | None = None

    def __post_init__(self) -> None:
        check_int("sampler.group_size", self.group_size, 2, "GRPO needs a group to compare")
        check_int("sampler.prompts_per_step", self.prompts_per_step, 1, "conditions per rank per iteration")
        check_int("sampler.train_steps", self.train_steps, 1, "SDE steps per training rollout, e.g. 8")
        check_int("sampler.eval_steps", self.eval_steps, 1, "ODE steps of evaluation, e.g. 28")
        if self.sde_window is not None:
            window = self.sde_window
            ok = (
                isinstance(window, tuple)
                and len(window) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) for i in window)
            )
            if not ok or not 0 <= window[0] < window[1] <= self.train_steps:
                raise ValueError(
                    f"sampler.sde_window must be [start, end) with 0 <= start < end <= sampler.train_steps "
                    f"({self.train_steps}), e.g. [0, {min(2, self.train_steps)}], or null (every step): got {window!r}"
                )
        if self.sde_steps is not None:
            check_int("sampler.sde_steps", self.sde_steps, 1, "SDE steps per rollout, or null for the whole window")
        if self.window_schedule not in ("random", "sliding"):
            raise ValueError(f"sampler.window_schedule must be 'random' or 'sliding', got {self.window_schedule!r}")
        check_int("sampler.window_stride", self.window_stride, 1, "iterations per position of a sliding window")
        if not isinstance(self.shared_noise, bool):
            raise ValueError(f"sampler.shared_noise must be true or false, got {self.shared_noise!r}")
        check_number("sampler.train_fraction", self.train_fraction, low=0.0, high=1.0, low_open=True, hint="1 = all")
        if self.seed is not None:
            check_int("sampler.seed", self.seed, 0, "or null to derive it from runtime.seed")
        if self.rollout_batch is not None:
            check_int("sampler.rollout_batch", self.rollout_batch, 1, "or null for the whole batch at once")
            batch = self.prompts_per_step * self.group_size
            if batch % self.rollout_batch:
                raise ValueError(
                    f"sampler.rollout_batch={self.rollout_batch} must divide prompts_per_step * group_size = {batch}; "
                    f"pick a divisor of {batch} or null"
                )

    @property
    def window(self) -> tuple[int, int]:
        """``(start, end)`` of the SDE window, the whole rollout when :attr:`sde_window` is null."""
        return self.sde_window if self.sde_window is not None else (0, self.train_steps)

    @property
    def trained_steps(self) -> int:
        """Steps trained per iteration: ``max(1, round(train_fraction * SDE steps per rollout))`` (the SDE steps:
        ``sde_steps``, at most the window's length)."""
        start, end = self.window
        return max(1, round(self.train_fraction * min(self.sde_steps or end - start, end - start)))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW on the LoRA weights and the shape of the update.

    Attributes:
        lr: peak learning rate (per optimiser step), reached after ``warmup_steps``, then constant.
        betas: AdamW ``(beta1, beta2)``, each in ``[0, 1)``.
        weight_decay: decoupled weight decay (AdamW), per step, relative to ``lr``.
        eps: AdamW's denominator epsilon.
        grad_clip: clip the global gradient norm to this (L2 norm); null turns clipping off.
        warmup_steps: optimiser steps of linear learning-rate warm-up from 0; 0 turns it off.
        inner_epochs: passes over one iteration's rollouts (each pass: one optimiser step); ratios move away from
            1 only from the second pass on.
        grad_accum: micro-batches a rank's ``P * G`` samples are split into for the update (memory knob; the loss
            is weighted so the gradient is the same for any value); must divide ``P * G``.
        step_batching: the trained steps of a micro-batch go through the transformer as one forward and backward
            of ``steps x samples`` rows instead of one step at a time: the same gradient from fewer, larger
            kernels, with the activations of every trained step alive at once (false, or a larger ``grad_accum``,
            when activation memory is the limit, as in the FLUX.1 Kontext and Qwen-Image-Edit configs). On the
            tiny editor on 2 CPU cores it cuts the update from 0.36 to 0.30 s per iteration.
        ema_decay: decay of an exponential moving average of the LoRA weights used for evaluation, in
            ``(0, 1)`` (e.g. 0.9); null keeps no average.
        nonfinite_limit: an update whose loss or gradient is not finite is skipped and counted; this many in a
            row stop the run with an error (a diverged run, a broken reward); >= 1.
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    inner_epochs: int = 1
    grad_accum: int = 1
    step_batching: bool = True
    ema_decay: float | None = None
    nonfinite_limit: int = 5

    def __post_init__(self) -> None:
        check_number("optim.lr", self.lr, low=0.0, low_open=True, hint="e.g. 3e-4 for LoRA")
        betas = self.betas
        if not isinstance(betas, tuple) or len(betas) != 2:
            raise ValueError(f"optim.betas must be a pair [beta1, beta2], e.g. [0.9, 0.999]: got {betas!r}")
        for i, beta in enumerate(betas):
            check_number(f"optim.betas[{i}]", beta, low=0.0, high=1.0, high_open=True, hint="e.g. 0.9, 0.999")
        check_number("optim.weight_decay", self.weight_decay, low=0.0, hint="e.g. 1e-4, or 0 to turn it off")
        check_number("optim.eps", self.eps, low=0.0, low_open=True, hint="e.g. 1e-8")
        if self.grad_clip is not None:
            check_number("optim.grad_clip", self.grad_clip, low=0.0, low_open=True, hint="e.g. 1.0, or null for off")
        check_int("optim.warmup_steps", self.warmup_steps, 0, "0 turns warm-up off")
        check_int("optim.inner_epochs", self.inner_epochs, 1, "passes over each iteration's rollouts")
        check_int("optim.grad_accum", self.grad_accum, 1, "micro-batches per update")
        if not isinstance(self.step_batching, bool):
            raise ValueError(f"optim.step_batching must be true or false, got {self.step_batching!r}")
        if self.ema_decay is not None:
            check_number("optim.ema_decay", self.ema_decay, low=0.0, high=1.0, low_open=True, high_open=True,
                         hint="e.g. 0.9, or null for no average")  # fmt: skip
        check_int("optim.nonfinite_limit", self.nonfinite_limit, 1, "skipped updates in a row before stopping")


def _default_components() -> dict[str, dict[str, Any]]:
    return {"rules": {"type": "rules", "weight": 1.0}}


@dataclass(frozen=True)
class RewardsConfig:
    """The reward components and their weights (SPEC S2), as :func:`fastgrpo.rewards.build_reward` takes them.

    Attributes:
        components: ``{name: {type, weight, **options}}``; ``type`` is a registered reward type (``rules``,
            ``clip``, ``mllm_judge``), ``weight`` its weight in the sum (unitless), the rest the type's options
            (checked when the reward is built). A YAML file's ``components`` replace the defaults as a whole; a
            dotted override such as ``rewards.components.rules.weight=0.5`` changes one entry.
        device: device of the reward tensors, e.g. ``cpu`` or ``cuda``.
    """

    components: Mapping[str, Any] = field(default_factory=_default_components)
    device: str = "cpu"

    def __post_init__(self) -> None:
        from fastgrpo.rewards.registry import RewardConfig

        if not isinstance(self.components, Mapping) or not self.components:
            raise ValueError(
                "rewards.components must be a non-empty mapping {name: {type, weight, ...}}, e.g. "
                f"{{rules: {{type: rules, weight: 1.0}}}}: got {self.components!r}"
            )
        object.__setattr__(self, "components", copy.deepcopy(dict(self.components)))
        check_optional_str("rewards.device", self.device, "e.g. cpu or cuda")
        for name, entry in self.components.items():
            try:
                RewardConfig.from_mapping({"components": {name: entry}})
            except ValueError as error:
                raise ValueError(f"rewards.components.{name}: {error}") from None

    def to_reward_mapping(self) -> dict[str, Any]:
        """The mapping :func:`fastgrpo.rewards.build_reward` takes."""
        return {"components": copy.deepcopy(dict(self.components)), "device": self.device}
