"""Step schedules of the stock flow-matching pipelines, built from a ``FlowMatchEulerDiscreteScheduler`` config.

An ODE run with a schedule from :func:`flow_schedule` equals the stock diffusers pipeline (FluxKontextPipeline,
QwenImageEditPipeline) step for step: the times are bit-identical to ``scheduler.sigmas`` after
``scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=calculate_shift(...))``. diffusers is not
imported: the config is a plain mapping (``pipe.scheduler.config`` or the parsed ``scheduler_config.json``).

Formulas (diffusers 0.34-0.42, ``scheduling_flow_match_euler_discrete.py`` and the pipelines'
``calculate_shift``), all evaluated, like diffusers, on float32 numpy arrays with Python-float scalars:

- ``mu = image_seq_len * m + b`` with ``m = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)``
  and ``b = base_shift - m * base_image_seq_len`` (linear interpolation in the sequence length);
- dynamic shift, ``time_shift_type="exponential"``: ``exp(mu) / (exp(mu) + (1 / s - 1))``;
  ``"linear"``: ``mu / (mu + (1 / s - 1))``;
- static shift: ``shift * s / (1 + (shift - 1) * s)``;
- ``shift_terminal``: ``1 - (1 - s) / ((1 - s[-1]) / (1 - shift_terminal))`` so the last time equals it;
- a terminal ``0`` is appended.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "DeviceSchedule",
    "StepSchedule",
    "calculate_shift",
    "flow_schedule",
    "train_eval_schedules",
]

# diffusers' ``FlowMatchEulerDiscreteScheduler.__init__`` defaults; the pipelines use the same fallbacks in
# ``scheduler.config.get(name, default)`` when computing ``mu``.
_DEFAULTS: dict[str, Any] = {
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "invert_sigmas": False,
    "shift_terminal": None,
    "time_shift_type": "exponential",
}
_UNSUPPORTED_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


class DeviceSchedule(NamedTuple):
    """A schedule moved to a device for the rollout loop (index it per step; no host sync needed).

    Attributes:
        t: ``[K]`` current time of each step.
        t_next: ``[K]`` time after each step (``t_next[k] = t[k + 1]``, ``t_next[-1] = 0``).
        times: ``[K + 1]`` the full schedule ``t_0 … t_K = 0``.
    """

    t: torch.Tensor
    t_next: torch.Tensor
    times: torch.Tensor


@dataclass(frozen=True, eq=False)
class StepSchedule:
    """A decreasing time schedule ``1 ≥ t_0 > t_1 > … > t_K = 0`` (``t = 1`` is noise, SPEC conventions).

    Attributes:
        times: ``[K + 1]`` float64 CPU tensor. The values are exactly representable in float32 (they are the
            float32 sigmas of diffusers), so ``times.float()`` is lossless.
    """

    times: torch.Tensor

    def __post_init__(self) -> None:
        times = self.times
        if not isinstance(times, torch.Tensor) or times.dim() != 1 or times.dtype != torch.float64:
            raise ValueError(
                "StepSchedule.times must be a 1-D float64 tensor [K+1]; build it with flow_schedule(...) "
                "or torch.tensor([...], dtype=torch.float64)"
            )
        if times.device.type != "cpu":
            raise ValueError("StepSchedule.times must live on the CPU; use schedule.to(device) for device copies")
        if times.numel() < 2:
            raise ValueError(f"StepSchedule.times needs at least 2 values (one step), got {times.numel()}")
        if not bool(torch.isfinite(times).all()):
            raise ValueError(f"StepSchedule.times contains non-finite values: {times.tolist()}")
        decreasing = bool((times[:-1] > times[1:]).all())
        if not (decreasing and float(times[0]) <= 1.0 and float(times[-1]) == 0.0):
            raise ValueError(
                f"StepSchedule.times must decrease strictly from ≤ 1 to a terminal 0, got {times.tolist()}; "
                "check the scheduler config (shift, shift_terminal, time_shift_type) and the step counts"
            )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StepSchedule) and torch.equal(self.times, other.times)

    def __hash__(self) -> int:
        # Usable as a cache key (e.g. one captured CUDA graph per schedule); times live on the CPU.
        return hash(tuple(self.times.tolist()))

    @property
    def num_steps(self) -> int:
        """Number of steps ``K``."""
        return self.times.numel() - 1

    @property
    def t(self) -> torch.Tensor:
        """``[K]`` float64: the time at the start of each step (``times[:-1]``)."""
        return self.times[:-1]

    @property
    def t_next(self) -> torch.Tensor:
        """``[K]`` float64: the time at the end of each step (``times[1:]``)."""
        return self.times[1:]

    @property
    def t_cap(self) -> float:
        """The default ``t_cap`` of SPEC S1: the schedule's second value ``times[1]`` (``0`` for one step).

        ``σ_t = a · sqrt(t / (1 - min(t, t_cap)))`` so the first step (``t_0 = 1``) borrows its neighbour's
        denominator instead of dividing by zero, as the public Flow-GRPO code does.
        """
        return float(self.times[1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> DeviceSchedule:
        """Copy the per-step tensors to ``device`` (default: CPU) in ``dtype`` (default float32).

        Returns:
            :class:`DeviceSchedule` ``(t [K], t_next [K], times [K + 1])``.
        """
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype such as torch.float32, got {dtype}")
        times = self.times.to(device=device, dtype=dtype)
        return DeviceSchedule(t=times[:-1], t_next=times[1:], times=times)


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """The pipelines' ``mu``: linear in the latent sequence length, ``base_shift`` at ``base_seq_len`` and
    ``max_shift`` at ``max_seq_len`` (same operation order as diffusers, so the float is identical)."""
    if max_seq_len == base_seq_len:
        raise ValueError(
            f"max_image_seq_len ({max_seq_len}) must differ from base_image_seq_len ({base_seq_len}) in the "
            "scheduler config: the dynamic shift interpolates between them"
        )
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def _config_value(config: Mapping[str, Any], key: str) -> Any:
    return config.get(key, _DEFAULTS[key])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_config(config: Mapping[str, Any]) -> None:
    if not isinstance(config, Mapping):
        raise TypeError(
            f"scheduler_config must be a mapping such as pipe.scheduler.config or the parsed "
            f"scheduler_config.json, got {type(config).__name__}"
        )
    for flag in _UNSUPPORTED_FLAGS:
        if config.get(flag):
            raise ValueError(
                f"scheduler_config sets {flag}=True, which fastgrpo does not reproduce; set it to false "
                "(the FLUX.1 Kontext and Qwen-Image-Edit configs do not use it)"
            )
    if _config_value(config, "invert_sigmas"):
        raise ValueError(
            "scheduler_config sets invert_sigmas=True (a Mochi-style schedule that runs from 0 to 1); fastgrpo "
            "needs t = 1 as noise and t = 0 as data, so set invert_sigmas to false"
        )
    shift_type = _config_value(config, "time_shift_type")
    if shift_type not in ("exponential", "linear"):
        raise ValueError(f"scheduler_config time_shift_type must be 'exponential' or 'linear', got {shift_type!r}")
    if _config_value(config, "use_dynamic_shifting"):
        for key in ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len"):
            if not _is_number(_config_value(config, key)):
                raise ValueError(
                    f"scheduler_config {key} must be a finite number when use_dynamic_shifting is true, got "
                    f"{_config_value(config, key)!r}; remove the key to use the diffusers default "
                    f"{_DEFAULTS[key]}"
                )
    else:
        shift = _config_value(config, "shift")
        if not (_is_number(shift) and shift > 0):
            raise ValueError(f"scheduler_config shift must be a finite number > 0, got {shift!r}")
    terminal = config.get("shift_terminal")
    if terminal and not (isinstance(terminal, (int, float)) and 0.0 < terminal < 1.0):
        raise ValueError(f"scheduler_config shift_terminal must be in (0, 1) or null, got {terminal!r}")


def _check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _shift_sigmas(config: Mapping[str, Any], sigmas: np.ndarray, image_seq_len: int | None) -> np.ndarray:
    """Apply the scheduler's shift to float32 ``sigmas`` exactly as ``set_timesteps`` does (steps 2 and 3)."""
    if _config_value(config, "use_dynamic_shifting"):
        if image_seq_len is None:
            raise ValueError(
                "image_seq_len is required: the scheduler config uses dynamic shifting "
                "(use_dynamic_shifting=True); pass the packed latent token count of the edited image, "
                "e.g. (height // 16) * (width // 16) for FLUX.1 Kontext and Qwen-Image-Edit"
            )
        mu = calculate_shift(
            image_seq_len,
            _config_value(config, "base_image_seq_len"),
            _config_value(config, "max_image_seq_len"),
            _config_value(config, "base_shift"),
            _config_value(config, "max_shift"),
        )
        # diffusers' time_shift(mu, sigma=1.0, t) raises (1 / t - 1) to the power 1.0, an exact identity.
        if _config_value(config, "time_shift_type") == "exponential":
            if mu > 700.0:  # math.exp overflows a float64 near 709.8
                raise ValueError(
                    f"dynamic shift mu={mu:.4g} (image_seq_len={image_seq_len}) is too large; check "
                    "image_seq_len and the scheduler config's base/max shift and sequence lengths"
                )
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
        else:
            sigmas = mu / (mu + (1 / sigmas - 1))
    else:
        shift = _config_value(config, "shift")
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    terminal = config.get("shift_terminal")
    if terminal:  # diffusers tests truthiness: 0 and None both disable it
        one_minus_z = 1 - sigmas
        scale_factor = one_minus_z[-1] / (1 - terminal)
        sigmas = 1 - (one_minus_z / scale_factor)
    return sigmas


def flow_schedule(
    scheduler_config: Mapping[str, Any],
    num_steps: int,
    *,
    image_seq_len: int | None = None,
    interval_steps: int | None = None,
) -> StepSchedule:
    """The time schedule of a stock FLUX.1 Kontext / Qwen-Image-Edit pipeline run with ``num_steps`` steps.

    Args:
        scheduler_config: ``FlowMatchEulerDiscreteScheduler`` config as a mapping; keys used: ``shift``,
            ``use_dynamic_shifting``, ``base_shift``, ``max_shift``, ``base_image_seq_len``,
            ``max_image_seq_len``, ``shift_terminal``, ``time_shift_type``, ``invert_sigmas`` (must be false),
            ``use_karras_sigmas`` / ``use_exponential_sigmas`` / ``use_beta_sigmas`` (must be false). Other keys
            (``num_train_timesteps``, ``stochastic_sampling``, ``_class_name``, …) are ignored: they do not
            change the sigmas.
        num_steps: number of steps ``K ≥ 1``.
        image_seq_len: packed latent token count of the generated image (the pipelines' ``latents.shape[1]``,
            without the source-image tokens). Required when the config uses dynamic shifting, ignored otherwise.
        interval_steps: when given, the unshifted times are ``linspace(1, 1 / interval_steps, num_steps)``:
            ``num_steps`` steps over the same time interval as a ``interval_steps``-step run (SPEC S5, training
            with few steps on the evaluation interval). Default: ``num_steps`` (the stock pipeline).

    Returns:
        :class:`StepSchedule` with ``times`` ``[num_steps + 1]`` float64, ``times[0] = 1``, ``times[-1] = 0``.

    Raises:
        ValueError: bad counts, a dynamic-shift config without ``image_seq_len``, an unsupported config flag,
            or a config whose shift does not give a strictly decreasing schedule.
    """
    _check_config(scheduler_config)
    num_steps = _check_count("num_steps", num_steps)
    interval = num_steps if interval_steps is None else _check_count("interval_steps", interval_steps)
    if interval == 1 and num_steps > 1:
        raise ValueError(
            f"interval_steps=1 spans the empty interval [1, 1], so {num_steps} steps cannot fit in it; "
            "pass interval_steps ≥ 2 (the evaluation step count) or num_steps=1"
        )
    if image_seq_len is not None:
        image_seq_len = _check_count("image_seq_len", image_seq_len)
    if scheduler_config.get("shift_terminal") and num_steps < 2:
        raise ValueError(
            "num_steps must be ≥ 2 when the scheduler config sets shift_terminal (a single step has no "
            "interval to stretch; diffusers returns NaN there)"
        )
    # The pipelines build float64 linspace sigmas; set_timesteps casts them to float32 before shifting.
    sigmas = np.linspace(1.0, 1 / interval, num_steps).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sigmas = _shift_sigmas(scheduler_config, sigmas, image_seq_len).astype(np.float32)
    times = torch.from_numpy(np.append(sigmas, np.float32(0.0))).to(torch.float64)
    return StepSchedule(times=times)


def train_eval_schedules(
    scheduler_config: Mapping[str, Any],
    train_steps: int,
    eval_steps: int,
    *,
    image_seq_len: int | None = None,
) -> tuple[StepSchedule, StepSchedule]:
    """The training (SDE) and evaluation (ODE) schedules of SPEC S5.

    The evaluation schedule is the stock pipeline's with ``eval_steps``; the training schedule has
    ``train_steps`` steps on the same interval (same first and last non-zero time).

    Returns:
        ``(train_schedule, eval_schedule)`` with ``train_steps + 1`` and ``eval_steps + 1`` times.
    """
    eval_schedule = flow_schedule(scheduler_config, eval_steps, image_seq_len=image_seq_len)
    train_schedule = flow_schedule(
        scheduler_config, train_steps, image_seq_len=image_seq_len, interval_steps=eval_steps
    )
    return train_schedule, eval_schedule
