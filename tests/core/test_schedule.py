"""Schedules must equal the stock diffusers pipelines' sigmas bit for bit (diffusers is imported here only)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from fastgrpo.core.schedule import (
    DeviceSchedule,
    StepSchedule,
    calculate_shift,
    flow_schedule,
    train_eval_schedules,
)

FLUX = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
QWEN = {
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "time_shift_type": "exponential",
    "shift_terminal": 0.02,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
}
SD3 = {"shift": 3.0}
LINEAR = {"use_dynamic_shifting": True, "time_shift_type": "linear", "base_shift": 0.5, "max_shift": 1.15}
CONFIGS = {"flux": FLUX, "qwen": QWEN, "sd3": SD3, "linear": LINEAR}


def diffusers_sigmas(config: dict, num_steps: int, image_seq_len: int, interval: int | None = None) -> torch.Tensor:
    """What FluxKontextPipeline / QwenImageEditPipeline do (interval: the unshifted linspace end)."""
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    end = 1 / (interval or num_steps)
    mu = calculate_shift(
        image_seq_len,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", 1.15),
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, end, num_steps), mu=mu)
    return scheduler.sigmas


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("num_steps", [2, 6, 10, 28, 50])
@pytest.mark.parametrize("image_seq_len", [256, 1024, 3600, 4096, 8192])
def test_matches_diffusers_bitwise(name: str, num_steps: int, image_seq_len: int) -> None:
    config = CONFIGS[name]
    schedule = flow_schedule(config, num_steps, image_seq_len=image_seq_len)
    expected = diffusers_sigmas(config, num_steps, image_seq_len)
    assert schedule.times.dtype == torch.float64
    assert torch.equal(schedule.times.float(), expected)
    assert torch.equal(schedule.times, expected.double())  # float64 storage is lossless


@pytest.mark.parametrize("name", ["flux", "qwen", "sd3"])
@pytest.mark.parametrize(("train_steps", "eval_steps"), [(6, 28), (10, 50), (1, 28), (28, 28)])
def test_train_schedule_spans_eval_interval(name: str, train_steps: int, eval_steps: int) -> None:
    config = CONFIGS[name]
    if train_steps == 1 and config.get("shift_terminal"):
        with pytest.raises(ValueError, match="shift_terminal"):  # diffusers gives NaN there
            train_eval_schedules(config, train_steps, eval_steps, image_seq_len=4096)
        return
    train, evaluation = train_eval_schedules(config, train_steps, eval_steps, image_seq_len=4096)
    assert (train.num_steps, evaluation.num_steps) == (train_steps, eval_steps)
    assert torch.equal(evaluation.times, flow_schedule(config, eval_steps, image_seq_len=4096).times)
    assert torch.equal(train.times.float(), diffusers_sigmas(config, train_steps, 4096, interval=eval_steps))
    assert train.times[0] == evaluation.times[0] == 1.0
    if train_steps > 1:
        assert train.times[-2] == evaluation.times[-2]  # same last non-zero time
    assert bool((train.times[:-1] > train.times[1:]).all())


def test_qwen_terminal_time_is_shift_terminal() -> None:
    train, evaluation = train_eval_schedules(QWEN, 8, 40, image_seq_len=4096)
    assert float(evaluation.times[-2]) == pytest.approx(0.02, abs=1e-6)
    assert float(train.times[-2]) == pytest.approx(0.02, abs=1e-6)


def test_interval_equal_to_steps_is_the_stock_schedule() -> None:
    stock = flow_schedule(FLUX, 12, image_seq_len=2048)
    same = flow_schedule(FLUX, 12, image_seq_len=2048, interval_steps=12)
    assert torch.equal(stock.times, same.times)


def test_schedule_accessors() -> None:
    schedule = flow_schedule(FLUX, 4, image_seq_len=1024)
    assert schedule.num_steps == 4
    assert torch.equal(schedule.t, schedule.times[:-1])
    assert torch.equal(schedule.t_next, schedule.times[1:])
    assert schedule.t_cap == float(schedule.times[1]) < 1.0
    moved = schedule.to("cpu")
    assert isinstance(moved, DeviceSchedule)
    assert moved.t.dtype == moved.t_next.dtype == moved.times.dtype == torch.float32
    assert moved.t.shape == moved.t_next.shape == (4,)
    assert torch.equal(moved.t_next[:-1], moved.t[1:])
    assert float(moved.t_next[-1]) == 0.0
    assert schedule.to(dtype=torch.float64).times.dtype == torch.float64
    with pytest.raises(ValueError, match="dtype"):
        schedule.to(dtype=torch.int64)


def test_schedules_compare_and_hash_by_value() -> None:
    first = flow_schedule(FLUX, 6, image_seq_len=1024)
    again = flow_schedule(FLUX, 6, image_seq_len=1024)
    other = flow_schedule(FLUX, 6, image_seq_len=4096)
    assert first == again and hash(first) == hash(again)
    assert first != other and first != first.times
    assert len({first, again, other}) == 2


def test_one_step_schedule() -> None:
    schedule = flow_schedule(SD3, 1)
    assert schedule.times.tolist() == [1.0, 0.0]
    assert schedule.t_cap == 0.0


def test_accepts_a_scheduler_config_and_ignores_unknown_keys() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX)
    from_config = flow_schedule(scheduler.config, 20, image_seq_len=4096)
    noisy = {**FLUX, "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 7, "foo": [1]}
    assert torch.equal(from_config.times, flow_schedule(noisy, 20, image_seq_len=4096).times)


def test_static_shift_ignores_image_seq_len() -> None:
    assert torch.equal(flow_schedule(SD3, 8).times, flow_schedule(SD3, 8, image_seq_len=4096).times)


@pytest.mark.parametrize(
    ("config", "kwargs", "match"),
    [
        (FLUX, {"num_steps": 8}, "image_seq_len is required"),
        (FLUX, {"num_steps": 8, "image_seq_len": 0}, "image_seq_len"),
        (SD3, {"num_steps": 0}, "num_steps"),
        (SD3, {"num_steps": 2.5}, "num_steps"),
        (SD3, {"num_steps": True}, "num_steps"),
        (SD3, {"num_steps": 4, "interval_steps": 0}, "interval_steps"),
        (SD3, {"num_steps": 4, "interval_steps": 1}, "interval_steps"),
        (QWEN, {"num_steps": 1, "image_seq_len": 1024}, "shift_terminal"),
        ({**SD3, "use_karras_sigmas": True}, {"num_steps": 4}, "use_karras_sigmas"),
        ({**SD3, "use_exponential_sigmas": True}, {"num_steps": 4}, "use_exponential_sigmas"),
        ({**SD3, "use_beta_sigmas": True}, {"num_steps": 4}, "use_beta_sigmas"),
        ({**SD3, "invert_sigmas": True}, {"num_steps": 4}, "invert_sigmas"),
        ({**FLUX, "time_shift_type": "cosine"}, {"num_steps": 4, "image_seq_len": 64}, "time_shift_type"),
        ({"shift": 0.0}, {"num_steps": 4}, "shift"),
        ({"shift": None}, {"num_steps": 4}, "shift"),
        ({**SD3, "shift_terminal": 1.5}, {"num_steps": 4}, "shift_terminal"),
        ({**FLUX, "base_shift": None}, {"num_steps": 4, "image_seq_len": 64}, "base_shift"),
        ({**FLUX, "max_image_seq_len": 256}, {"num_steps": 4, "image_seq_len": 64}, "max_image_seq_len"),
        (FLUX, {"num_steps": 4, "image_seq_len": 10**9}, "mu"),
    ],
)
def test_bad_input_raises_naming_the_argument(config: dict, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        flow_schedule(config, **kwargs)


def test_non_mapping_config_is_refused() -> None:
    with pytest.raises(TypeError, match="scheduler_config"):
        flow_schedule([("shift", 3.0)], 4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "times",
    [
        torch.tensor([1.0, 0.5, 0.0]),  # float32
        torch.tensor([1.0, 0.5, 0.5, 0.0], dtype=torch.float64),  # not strictly decreasing
        torch.tensor([1.0, 0.5], dtype=torch.float64),  # no terminal zero
        torch.tensor([1.5, 0.5, 0.0], dtype=torch.float64),
        torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64),
        torch.tensor([0.0], dtype=torch.float64),
    ],
)
def test_step_schedule_rejects_bad_times(times: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"StepSchedule\.times"):
        StepSchedule(times=times)


def test_module_does_not_import_diffusers() -> None:
    code = "import sys, fastgrpo.core.schedule; assert 'diffusers' not in sys.modules, 'diffusers imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
