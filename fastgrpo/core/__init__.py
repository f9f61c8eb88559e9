"""Schedules, SDE configuration, group advantages, the GRPO objective and typed containers."""

from fastgrpo.core.advantages import AdvantageResult, GroupKey, dense_group_ids, gather_rewards, group_advantages
from fastgrpo.core.containers import RewardBreakdown, Rollout
from fastgrpo.core.objective import GRPOConfig, step_loss
from fastgrpo.core.schedule import DeviceSchedule, StepSchedule, flow_schedule, train_eval_schedules
from fastgrpo.core.sde import SDEConfig, StepSpec, sigma_t, step_mean_std

__all__ = [
    "AdvantageResult",
    "DeviceSchedule",
    "GRPOConfig",
    "GroupKey",
    "RewardBreakdown",
    "Rollout",
    "SDEConfig",
    "StepSchedule",
    "StepSpec",
    "dense_group_ids",
    "flow_schedule",
    "gather_rewards",
    "group_advantages",
    "sigma_t",
    "step_loss",
    "step_mean_std",
    "train_eval_schedules",
]
