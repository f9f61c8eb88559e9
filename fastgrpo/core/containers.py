"""Typed containers that carry a GRPO iteration's tensors between the rollout, the rewards and the update.

Shapes use ``B`` for samples, ``T`` for steps of the rollout schedule and ``*L`` for the latent shape of one
sample (``[C, H, W]`` or packed ``[N, D]``). ``validate()`` checks shapes, dtypes and devices only — never tensor
values, which would synchronise a GPU — and raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from fastgrpo import _env

__all__ = ["RewardBreakdown", "Rollout"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _describe(tensor: object) -> str:
    if not isinstance(tensor, torch.Tensor):
        return type(tensor).__name__
    return f"{tuple(tensor.shape)} {tensor.dtype} on {tensor.device}"


@dataclass(eq=False)
class Rollout:
    """The trajectories of one sample batch and what the update needs from them: one object from the rollout,
    through the rewards and the advantages, to the update.

    Attributes:
        latents: ``[B, T + 1, *L]`` in the model dtype: ``x_0 … x_T`` of each trajectory (``x_0`` is the noise,
            ``x_T`` the final latent, step ``k`` goes ``latents[:, k] → latents[:, k + 1]``).
        log_probs: ``[B, T]`` float32, ``logp_old`` of each step under the sampling policy; meaningless (zero by
            convention) on the steps outside ``sde_steps``.
        times: ``[T + 1]`` float32, the schedule ``t_0 … t_T = 0`` (``StepSchedule.to(device).times``).
        group_ids: ``[B]`` int64 group of each sample (:func:`fastgrpo.core.advantages.dense_group_ids`).
        rewards: ``[B]`` float32 scalar reward, NaN where scoring failed or has not happened yet.
        sde_steps: the steps sampled with noise (the SDE window), ascending; the other steps are ODE steps.
        trained: the steps the update trains, in the order it trains them; a subset of ``sde_steps`` (all of
            them by default).
        advantages: ``[B]`` float32 or ``None`` until :func:`~fastgrpo.core.advantages.group_advantages` ran.
        reward_components: name -> ``[B]`` float32 rewards of each weighted reward component (NaN where it
            failed), or ``None``; per-component advantages normalise them one by one.

    ``sde_steps`` and ``trained`` are host tuples, so the update never reads the device to know its steps.
    """

    latents: torch.Tensor
    log_probs: torch.Tensor
    times: torch.Tensor
    group_ids: torch.Tensor
    rewards: torch.Tensor
    sde_steps: tuple[int, ...]
    trained: tuple[int, ...] | None = None
    advantages: torch.Tensor | None = None
    reward_components: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.sde_steps = tuple(self.sde_steps)
        self.trained = self.sde_steps if self.trained is None else tuple(self.trained)

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        """``T``, the number of steps (trained or not)."""
        return self.latents.shape[1] - 1

    @property
    def latent_shape(self) -> torch.Size:
        """``L``, the shape of one latent."""
        return self.latents.shape[2:]

    @property
    def device(self) -> torch.device:
        """Device of every tensor (after :meth:`validate`)."""
        return self.latents.device

    def step(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``(x_t [B, *L], x_next [B, *L])`` of step ``k`` (``0 ≤ k < T``)."""
        if not 0 <= k < self.num_steps:
            raise ValueError(f"step index k={k} is outside [0, {self.num_steps}) for this rollout")
        return self.latents[:, k], self.latents[:, k + 1]

    def validate(self) -> Rollout:
        """Check shapes, dtypes, devices and the step tuples; return ``self``. Raises ``ValueError`` naming the bad
        field."""
        latents = self.latents
        _require(
            isinstance(latents, torch.Tensor) and latents.dim() >= 3 and latents.dtype.is_floating_point,
            f"Rollout.latents must be a floating tensor [B, T+1, *latent_shape], got {_describe(latents)}",
        )
        batch, steps = latents.shape[0], latents.shape[1] - 1
        _require(batch >= 1 and steps >= 1, f"Rollout.latents needs B ≥ 1 and T ≥ 1, got {tuple(latents.shape)}")
        expected = {
            "log_probs": ((batch, steps), torch.float32),
            "times": ((steps + 1,), torch.float32),
            "group_ids": ((batch,), torch.int64),
            "rewards": ((batch,), torch.float32),
            "advantages": ((batch,), torch.float32),
        }
        for name, (shape, dtype) in expected.items():
            value = getattr(self, name)
            if value is None and name == "advantages":
                continue
            _require(
                isinstance(value, torch.Tensor) and tuple(value.shape) == shape and value.dtype == dtype,
                f"Rollout.{name} must be {dtype} of shape {list(shape)} (B={batch}, T={steps}), got {_describe(value)}",
            )
            _require(
                value.device == latents.device,
                f"Rollout.{name} is on {value.device} but latents on {latents.device}; use rollout.to(device)",
            )
        for name, value in (self.reward_components or {}).items():
            _require(
                isinstance(value, torch.Tensor) and tuple(value.shape) == (batch,) and value.dtype == torch.float32
                and value.device == latents.device,
                f"Rollout.reward_components[{name!r}] must be float32 [B={batch}] on {latents.device}, got "
                f"{_describe(value)}",
            )  # fmt: skip
        sde = self.sde_steps
        _require(
            all(isinstance(k, int) and 0 <= k < steps for k in sde) and list(sde) == sorted(set(sde)),
            f"Rollout.sde_steps must be ascending distinct step indices in [0, {steps}), got {sde}",
        )
        trained = self.trained or ()
        _require(
            len(set(trained)) == len(trained) and set(trained) <= set(sde),
            f"Rollout.trained {trained} must be distinct SDE steps of the rollout (sde_steps {sde}): only steps "
            "sampled with noise have a log-probability to train on",
        )
        return self

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Rollout:
        """A copy with every tensor on ``device`` (dtypes unchanged)."""
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=non_blocking)
            elif isinstance(value, dict):
                value = {k: v.to(device, non_blocking=non_blocking) for k, v in value.items()}
            moved[f.name] = value
        return Rollout(**moved)

    def select(self, index: torch.Tensor | slice) -> Rollout:
        """The samples ``index`` (a slice, an int64 index tensor or a ``[B]`` bool mask); steps are shared.

        A bool mask or index tensor gives a data-dependent batch size: on a GPU that costs a host sync.
        """
        per_sample = ("latents", "log_probs", "group_ids", "rewards", "advantages")
        picked: dict[str, Any] = {name: None if (v := getattr(self, name)) is None else v[index] for name in per_sample}
        if self.reward_components is not None:
            picked["reward_components"] = {k: v[index] for k, v in self.reward_components.items()}
        return replace(self, **picked)

    @classmethod
    def cat(cls, rollouts: Sequence[Rollout]) -> Rollout:
        """Concatenate sample batches that share one schedule (``times``, ``sde_steps``, ``trained``) along ``B``.

        ``advantages`` survive only if every part has them. The times are compared by value on CPU (or with
        ``FASTGRPO_CHECK_VALUES=1``), by shape elsewhere.
        """
        if len(rollouts) == 0:
            raise ValueError("rollouts is empty; pass at least one Rollout to Rollout.cat")
        first = rollouts[0].validate()
        for position, part in enumerate(rollouts[1:], start=1):
            part.validate()
            _require(
                part.latents.shape[1:] == first.latents.shape[1:] and part.latents.dtype == first.latents.dtype,
                f"rollouts[{position}].latents is {_describe(part.latents)}, incompatible with rollouts[0]'s "
                f"{_describe(first.latents)}; only batches of one shape and schedule can be concatenated",
            )
            same_steps = part.sde_steps == first.sde_steps and part.trained == first.trained
            if first.device.type == "cpu" or _env.check_values():
                same_steps = same_steps and torch.equal(part.times, first.times)
            _require(
                same_steps, f"rollouts[{position}] has another schedule (times/sde_steps/trained) than rollouts[0]"
            )
        with_adv = all(part.advantages is not None for part in rollouts)
        names = [set(p.reward_components) if p.reward_components is not None else None for p in rollouts]
        components = None
        if all(n is not None and n == names[0] for n in names):
            components = {k: torch.cat([p.reward_components[k] for p in rollouts]) for k in names[0]}  # type: ignore[index]
        return cls(
            latents=torch.cat([part.latents for part in rollouts]),
            log_probs=torch.cat([part.log_probs for part in rollouts]),
            times=first.times,
            group_ids=torch.cat([part.group_ids for part in rollouts]),
            rewards=torch.cat([part.rewards for part in rollouts]),
            sde_steps=first.sde_steps,
            trained=first.trained,
            advantages=torch.cat([p.advantages for p in rollouts]) if with_adv else None,  # type: ignore[misc]
            reward_components=components,
        )


@dataclass(eq=False)
class RewardBreakdown:
    """Named reward components of a batch and the weights that combine them (SPEC S2).

    Attributes:
        components: name → ``[B]`` floating tensor, NaN where that component failed.
        weights: name → finite float, one per component. A zero weight logs the component without letting it
            (or its failures) into :meth:`total`.
    """

    components: dict[str, torch.Tensor]
    weights: dict[str, float] = field(default_factory=dict)

    def validate(self) -> RewardBreakdown:
        """Check names, weights, shapes and devices; return ``self``. Raises ``ValueError`` naming the problem."""
        _require(len(self.components) > 0, "RewardBreakdown.components is empty; add at least one reward")
        missing = sorted(set(self.components) - set(self.weights))
        extra = sorted(set(self.weights) - set(self.components))
        _require(not missing, f"RewardBreakdown.weights lacks a weight for components {missing}")
        _require(not extra, f"RewardBreakdown.weights names unknown components {extra}")
        _require("total" not in self.components, "a reward component may not be called 'total'; rename it")
        for name, weight in self.weights.items():
            _require(
                isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight),
                f"RewardBreakdown.weights[{name!r}] must be a finite number, got {weight!r}",
            )
        _require(any(w != 0 for w in self.weights.values()), "RewardBreakdown.weights are all zero")
        reference: torch.Tensor | None = None
        for name, value in self.components.items():
            _require(
                isinstance(value, torch.Tensor) and value.dim() == 1 and value.dtype.is_floating_point,
                f"RewardBreakdown.components[{name!r}] must be a 1-D floating tensor [B], got {_describe(value)}",
            )
            reference = value if reference is None else reference
            _require(
                value.shape == reference.shape and value.device == reference.device,
                f"RewardBreakdown.components[{name!r}] is {_describe(value)}, but the first component is "
                f"{_describe(reference)}; every component needs one value per sample on one device",
            )
        return self

    @property
    def batch_size(self) -> int:
        """``B``."""
        return next(iter(self.components.values())).shape[0]

    def total(self) -> torch.Tensor:
        """``[B]`` float32 ``Σ_k w_k · R_k`` over the non-zero weights; NaN where any of those components is."""
        self.validate()
        terms = [weight * self.components[name].float() for name, weight in self.weights.items() if weight != 0]
        return torch.stack(terms).sum(0)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> RewardBreakdown:
        """A copy with every component on ``device``."""
        moved = {name: value.to(device, non_blocking=non_blocking) for name, value in self.components.items()}
        return RewardBreakdown(components=moved, weights=dict(self.weights))

    @classmethod
    def from_mapping(cls, components: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> RewardBreakdown:
        """Build and validate from any mappings (e.g. a config's weight section)."""
        return cls(components=dict(components), weights=dict(weights)).validate()
