"""CUDA graphs for the rollout loop and the update micro-step (``fastgrpo.train.graphs``).

On CPU: the eager fallback equals the eager code exactly and logs its reason once; with a stand-in capture (a
"graph" whose replay reruns the captured body into the same static buffers) the whole replay path (static inputs
copied in, noise state copied back, gradient binding, statistics) equals the eager code, capture failures fall
back, the shape cache stays bounded; bad arguments raise clear errors. On a GPU: real captures.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from fastgrpo.core import GRPOConfig, StepSpec
from fastgrpo.data.synthetic import SyntheticEditTask
from fastgrpo.kernels import noise_state
from fastgrpo.models import tiny_editor
from fastgrpo.models.base import images_to_tensor
from fastgrpo.train.graphs import GraphCache, RolloutGraphRunner, TrainingGraphs, UpdateGraphRunner
from fastgrpo.train.graphs import capture as graph_capture
from fastgrpo.train.rollout import RolloutPlan, rollout
from fastgrpo.train.update import grpo_backward

NOISE = 0.7
LOGGER = "fastgrpo.train.graphs"


def build(device: str = "cpu", groups: int = 2, seed: int = 0):
    model = tiny_editor.build_tiny_editor(device=device)
    torch.manual_seed(seed)
    params = model.add_lora(rank=4, alpha=4)
    with torch.no_grad():  # off the zero init of lora_B, so that every factor has a gradient
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    samples = [SyntheticEditTask(seed=3).sample(i) for i in range(2)]
    cond = model.encode(images_to_tensor([s.source for s in samples]), [s.instruction for s in samples])
    cond = cond.repeat_interleave(groups)
    schedule = model.schedule(3, 32, 32)
    return model, params, cond, schedule


def noise_for(model, batch: int, seed: int = 0) -> torch.Tensor:
    return model.initial_noise(batch, 32, 32, generator=torch.Generator().manual_seed(seed))


def plan_of(schedule, window=(0, 2)) -> RolloutPlan:
    return RolloutPlan.build(schedule, StepSpec(NOISE, schedule.t_cap), window)


def state_of(model, seed: int = 1) -> dict[str, Any]:
    return {"noise_state": noise_state(seed, device=model.device)}


def trained(ro, adv, steps):
    """The rollout with its advantages and the steps to train, as the trainer hands it to the update."""
    return replace(ro, advantages=adv.to(ro.device), trained=steps)


def grads_of(params) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def clear_grads(params) -> None:
    for p in params:
        p.grad = None


def graph_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


@pytest.fixture(scope="module")
def tiny():
    return build()


class ReplayOfBody:
    """Stands in for a captured graph on CPU: replay reruns the body and writes its outputs into the static ones."""

    def __init__(self, body, outputs):
        self.body, self.outputs, self.replays, self.was_reset = body, outputs, 0, False

    def replay(self) -> None:
        out = self.body()
        if self.outputs is not None:
            self.outputs.copy_(out)
        self.replays += 1

    def reset(self) -> None:
        self.was_reset = True


@pytest.fixture
def stand_in_capture(monkeypatch):
    """Graph runners on CPU take the replay path; ``captures`` lists the stand-in graphs made."""
    captures: list[ReplayOfBody] = []

    def capture(self, body, device):
        outputs = body()  # the real capture runs nothing; the warm-up before it does: gradients must be undone
        graph = ReplayOfBody(body, outputs)
        captures.append(graph)
        return graph, outputs

    monkeypatch.setattr(graph_capture.GraphRunner, "unavailable", lambda self, device: self.disabled_reason)
    monkeypatch.setattr(graph_capture.GraphRunner, "_capture", capture)
    return captures


# --- eager fallback (no CUDA) ----------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="off CUDA only")
def test_rollout_fallback_equals_eager_exactly_and_logs_the_reason_once(tiny, caplog):
    model, _, cond, schedule = tiny
    runner, plan = RolloutGraphRunner(model), plan_of(schedule)
    noise = noise_for(model, 4)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for seed in (1, 2):
            kw, ref_kw = state_of(model, seed), state_of(model, seed)
            out = rollout(model, cond, plan, noise, steps_fn=runner, **kw)
            ref = rollout(model, cond, plan, noise, **ref_kw)
            for name in ("latents", "log_probs", "times", "group_ids"):
                assert torch.equal(getattr(out, name), getattr(ref, name)), name
            assert out.sde_steps == ref.sde_steps
            assert torch.equal(kw["noise_state"], ref_kw["noise_state"])  # advanced in place as eagerly
            assert runner.used is False
    records = graph_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.WARNING
    assert "rollout runs eagerly" in records[0].getMessage() and "cpu" in records[0].getMessage()


@pytest.mark.skipif(torch.cuda.is_available(), reason="off CUDA only")
def test_update_fallback_equals_eager_exactly_and_logs_once(tiny, caplog):
    model, params, cond, schedule = tiny
    plan = plan_of(schedule)
    out = trained(rollout(model, cond, plan, noise_for(model, 4), **state_of(model)),
                  torch.tensor([1.0, -1.0, 0.5, -2.0]), (1,))  # fmt: skip
    kw = {"grpo": GRPOConfig(clip_low=0.2, clip_high=0.2, beta=0.05), "spec": plan.spec, "micro_batch": 3}
    clear_grads(params)
    ref = grpo_backward(model, out, cond, **kw)
    g_ref = grads_of(params)
    runner = UpdateGraphRunner(model, params)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(2):
            clear_grads(params)
            stats = grpo_backward(model, out, cond, step_fn=runner, **kw)
            assert torch.equal(stats.values, ref.values)
            assert all(torch.equal(a, b) for a, b in zip(grads_of(params), g_ref, strict=True))
    assert runner.used is False
    assert len(graph_records(caplog)) == 1
    assert "update micro-step runs eagerly" in graph_records(caplog)[0].getMessage()
    clear_grads(params)


def test_each_reason_to_run_eagerly_is_named(tiny, monkeypatch):
    model, _, _, _ = tiny
    runner = RolloutGraphRunner(model)
    assert "CUDA graphs need a CUDA device" in runner.unavailable(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert runner.unavailable(torch.device("cuda")) is None
    monkeypatch.setattr(graph_capture, "_sharded", lambda module: True)
    assert "sharded with FSDP" in runner.unavailable(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert "graphs do not nest" in runner.unavailable(torch.device("cuda"))
    runner.disabled_reason = "capture failed (RuntimeError: x)"
    assert runner.unavailable(torch.device("cuda")) == runner.disabled_reason


# --- the replay path, with a stand-in capture ------------------------------------------------------------------


def test_replayed_rollout_equals_eager_and_the_noise_state_advances(tiny, stand_in_capture):
    model, _, cond, schedule = tiny
    runner = RolloutGraphRunner(model)
    state, ref_state = noise_state(5), noise_state(5)
    noise = noise_for(model, 4)
    other = model.schedule(3, 32, 32, interval_steps=6)  # same K and t_cap, other times: an input, not in the key
    assert not torch.equal(other.times, schedule.times)
    swapped, ids = cond.index_select(torch.tensor([2, 3, 0, 1])), torch.tensor([1, 1, 0, 0])
    spec = StepSpec(NOISE, schedule.t_cap)
    calls = [(cond, schedule, noise, None), (cond, schedule, noise, None),
             (swapped, other, noise_for(model, 4, seed=9), ids)]  # fmt: skip
    outs = []
    for c, sched, x0, group_ids in calls:  # one capture, then replays; the same state object draws fresh noise
        plan = RolloutPlan.build(sched, spec, (1, 3))
        out = rollout(model, c, plan, x0, noise_state=state, group_ids=group_ids, steps_fn=runner)
        ref = rollout(model, c, plan, x0, noise_state=ref_state, group_ids=group_ids)
        assert runner.used is True
        for name in ("latents", "log_probs", "times", "group_ids"):
            assert torch.equal(getattr(out, name), getattr(ref, name)), name
        assert out.rewards.isnan().all() and out.sde_steps == (1, 2)
        assert torch.equal(state, ref_state)
        outs.append(out)
    assert len(stand_in_capture) == 1 and stand_in_capture[0].replays == 3
    assert int(state[1]) == 3 * 2  # two SDE steps per rollout
    assert not torch.equal(outs[0].latents, outs[1].latents)  # same inputs, advanced state: fresh noise
    assert outs[0].latents.data_ptr() != outs[1].latents.data_ptr()  # copies, not views of the static buffers


def test_replayed_rollout_recaptures_when_the_shape_or_window_changes(tiny, stand_in_capture):
    model, _, cond, schedule = tiny
    runner = RolloutGraphRunner(model)
    noise, two, one = noise_for(model, 2), cond.index_select(torch.arange(2)), cond.index_select(torch.arange(1))
    rollout(model, two, plan_of(schedule, (0, 2)), noise, steps_fn=runner, **state_of(model))
    rollout(model, two, plan_of(schedule, (1, 2)), noise, steps_fn=runner, **state_of(model))
    rollout(model, one, plan_of(schedule), noise[:1], steps_fn=runner, **state_of(model))
    rollout(model, two, plan_of(schedule, (0, 2)), noise, steps_fn=runner, **state_of(model))  # cached
    assert len(stand_in_capture) == 3 and len(runner.cache) == 3


def test_replayed_update_equals_eager(tiny, stand_in_capture):
    # beta = 0 here; the reference pass inside the micro-step runs in the capture-failure test below
    model, params, cond, schedule = tiny
    plan = plan_of(schedule)
    out = trained(rollout(model, cond, plan, noise_for(model, 4), **state_of(model)),
                  torch.tensor([1.0, -1.0, 0.5, -2.0]), (0, 1))  # fmt: skip
    kw = {"grpo": GRPOConfig(clip_low=0.2, clip_high=0.2, beta=0.0), "spec": plan.spec, "micro_batch": 2}
    clear_grads(params)
    ref = grpo_backward(model, out, cond, **kw)
    g_ref = grads_of(params)
    runner = UpdateGraphRunner(model, params)
    for call in range(2):
        clear_grads(params)  # as zero_grad(set_to_none=True) does between updates
        stats = grpo_backward(model, out, cond, step_fn=runner, **kw)
        assert runner.used is True
        torch.testing.assert_close(stats.values, ref.values, rtol=1e-6, atol=1e-9)
        for a, b in zip(grads_of(params), g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-10)
        # one graph for 2 steps x 2 micro-batches: each replay needs its own rows, step and times copied in
        assert len(stand_in_capture) == 1 and stand_in_capture[0].replays == 4 * (call + 1)
    assert all(g.abs().sum() > 0 for g in g_ref)
    # without clearing, a second update accumulates on top of the first
    grpo_backward(model, out, cond, step_fn=runner, **kw)
    for a, b in zip(grads_of(params), g_ref, strict=True):
        torch.testing.assert_close(a, 2 * b, rtol=1e-5, atol=1e-10)
    clear_grads(params)


def test_capture_failure_falls_back_logs_once_and_undoes_the_warm_up(tiny, monkeypatch, caplog):
    model, params, cond, schedule = tiny
    plan = plan_of(schedule)
    out = trained(rollout(model, cond, plan, noise_for(model, 4), **state_of(model)),
                  torch.tensor([1.0, -1.0, 0.5, -2.0]), (1,))  # fmt: skip
    kw = {"grpo": GRPOConfig(clip_low=0.2, clip_high=0.2, beta=0.05), "spec": plan.spec}
    clear_grads(params)
    ref = grpo_backward(model, out, cond, **kw)
    g_ref = grads_of(params)

    def failing_capture(self, body, device):
        body()  # a warm-up run accumulates into .grad ...
        raise RuntimeError("operation not permitted when stream is capturing")  # ... then the capture fails

    monkeypatch.setattr(graph_capture.GraphRunner, "unavailable", lambda self, device: self.disabled_reason)
    monkeypatch.setattr(graph_capture.GraphRunner, "_capture", failing_capture)
    update, roll = UpdateGraphRunner(model, params), RolloutGraphRunner(model)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(2):
            clear_grads(params)
            stats = grpo_backward(model, out, cond, step_fn=update, **kw)
            torch.testing.assert_close(stats.values, ref.values, rtol=1e-6, atol=1e-9)
            for a, b in zip(grads_of(params), g_ref, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-10)
            kw_r, ref_kw = state_of(model), state_of(model)
            r = rollout(model, cond, plan, out.latents[:, 0], steps_fn=roll, **kw_r)
            assert torch.equal(r.latents, rollout(model, cond, plan, out.latents[:, 0], **ref_kw).latents)
            assert torch.equal(kw_r["noise_state"], ref_kw["noise_state"])  # the failed warm-up left it alone
    assert update.used is False and roll.used is False
    assert len(update.cache) == 0 and len(roll.cache) == 0
    messages = [r.getMessage() for r in graph_records(caplog)]
    assert len(messages) == 2, messages  # one per runner, not one per call
    assert all("capture failed (RuntimeError: operation not permitted" in m for m in messages)
    clear_grads(params)


def test_training_graphs_report_whether_both_replayed(tiny, stand_in_capture):
    model, params, cond, schedule = tiny
    graphs = TrainingGraphs(model, params, max_graphs=2)
    assert graphs.used is False  # nothing ran yet
    two, plan = cond.index_select(torch.arange(2)), plan_of(schedule)
    out = rollout(model, two, plan, noise_for(model, 2), steps_fn=graphs.rollout_steps, **state_of(model))
    assert graphs.used is False
    out = trained(out, torch.tensor([-1.0, 1.0]), (1,))
    grpo_backward(model, out, two, grpo=GRPOConfig(beta=0.0), spec=plan.spec, step_fn=graphs.micro_step)
    assert graphs.used is True
    clear_grads(params)


# --- the shape cache -------------------------------------------------------------------------------------------


class FakeEntry:
    def __init__(self, key):
        self.key, self.released = key, False

    def release(self) -> None:
        self.released = True


def test_cache_evicts_the_least_recently_used_beyond_its_limit():
    cache = GraphCache(limit=2)
    built: list[FakeEntry] = []

    def get(key):
        return cache.get_or_build(key, lambda: built.append(FakeEntry(key)) or built[-1])

    a, b = get("a"), get("b")
    assert get("a") is a and len(built) == 2  # a hit builds nothing and makes "a" the most recent
    c = get("c")  # evicts "b", the least recently used
    assert b.released and not a.released and not c.released
    assert cache.keys() == ["a", "c"] and len(cache) == 2 and cache.evictions == 1
    for key in "defg":
        get(key)
    assert len(cache) == 2 and cache.evictions == 5
    assert [e.key for e in built if not e.released] == ["f", "g"]
    cache.clear()
    assert len(cache) == 0 and all(e.released for e in built)


def test_cache_keeps_nothing_when_a_build_fails():
    cache = GraphCache(limit=3)

    def fail() -> FakeEntry:
        raise RuntimeError("capture failed")

    with pytest.raises(RuntimeError):
        cache.get_or_build("x", fail)
    assert "x" not in cache and len(cache) == 0
    entry = cache.get_or_build("x", lambda: FakeEntry("x"))
    assert cache.get_or_build("x", fail) is entry


def test_runner_cache_stays_bounded_and_releases_old_graphs(tiny, stand_in_capture):
    model, _, cond, schedule = tiny
    runner = RolloutGraphRunner(model, max_graphs=1)
    noise = noise_for(model, 2)
    for rows in (1, 2, 2):
        index = torch.arange(rows)
        rollout(model, cond.index_select(index), plan_of(schedule), noise[:rows], steps_fn=runner, **state_of(model))
        assert len(runner.cache) == 1
    assert len(stand_in_capture) == 2 and stand_in_capture[0].was_reset  # batch 1 released when 2 arrived
    assert not stand_in_capture[1].was_reset and stand_in_capture[1].replays == 2
    assert runner.cache.evictions == 1


# --- bad arguments ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_graphs": 0}, r"max_graphs must be an int >= 1"),
        ({"max_graphs": True}, r"max_graphs must be an int >= 1"),
        ({"warmup": 0}, r"warmup must be an int >= 1"),
        ({"capture_error_mode": "strict"}, r"capture_error_mode='strict' is not one of"),
    ],
)
def test_bad_runner_settings_are_refused(tiny, kwargs, message):
    model, params, _, _ = tiny
    with pytest.raises(ValueError, match=message):
        RolloutGraphRunner(model, **kwargs)
    with pytest.raises(ValueError, match=message):
        UpdateGraphRunner(model, params, **kwargs)


def test_bad_update_parameters_are_refused(tiny):
    model, params, _, _ = tiny
    with pytest.raises(ValueError, match="params is empty"):
        UpdateGraphRunner(model, [])
    frozen = next(p for n, p in model.transformer.named_parameters() if "lora_" not in n)
    with pytest.raises(ValueError, match="requires_grad=True"):
        UpdateGraphRunner(model, [*params, frozen])
    with pytest.raises(ValueError, match="params is empty"):
        TrainingGraphs(model, [])


def test_bad_call_arguments_are_refused(tiny, stand_in_capture):
    model, params, cond, schedule = tiny
    runner, plan = RolloutGraphRunner(model), plan_of(schedule)
    noise = noise_for(model, 4)
    with pytest.raises(ValueError, match="built for another model"):
        rollout(tiny_editor.build_tiny_editor(), cond, plan, noise, steps_fn=runner, **state_of(model))
    with pytest.raises(ValueError, match="noise_state must be an int64 tensor"):
        rollout(model, cond, plan, noise, noise_state=torch.zeros(2), steps_fn=runner)
    with pytest.raises(ValueError, match="noise_state must be an int64 tensor"):
        rollout(model, cond, plan, noise, noise_state=torch.zeros(3, dtype=torch.int64), steps_fn=runner)
    with pytest.raises(ValueError, match="initial_noise has 2 rows for 4 conditions"):
        rollout(model, cond, plan, noise[:2], steps_fn=runner, **state_of(model))
    with pytest.raises(ValueError, match="SDE window"):
        plan_of(schedule, (2, 9))
    out = trained(rollout(model, cond, plan, noise, **state_of(model)), torch.zeros(4), (0,))
    update = UpdateGraphRunner(model, params)
    with pytest.raises(ValueError, match="built for another model"):
        grpo_backward(tiny_editor.build_tiny_editor(), out, cond, grpo=GRPOConfig(), spec=plan.spec, step_fn=update)
    for bad, message in (((2,), "must be distinct SDE steps"), ((), "trains no step")):  # checked before any capture
        with pytest.raises(ValueError, match=message):
            grpo_backward(model, replace(out, trained=bad), cond, grpo=GRPOConfig(), spec=plan.spec, step_fn=update)
    assert not stand_in_capture


# --- the trainer -------------------------------------------------------------------------------------------------

SMALL = [
    "sampler.prompts_per_step=2",
    "sampler.group_size=2",
    "sampler.train_steps=3",
    "sampler.eval_steps=3",
    "sampler.train_fraction=0.34",
    "logging.eval_every=0",
    "logging.save_every=0",
    "logging.progress=false",
    "runtime.max_steps=2",
    "optim.lr=0.003",
    "optim.grad_accum=2",
]


def run_small(tmp_path: Path, name: str, *extra: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
    from fastgrpo.train.config import load_config
    from fastgrpo.train.loop import Trainer

    cfg = load_config(None, [*SMALL, f"logging.output_dir={tmp_path}", f"logging.run_name={name}", *extra])
    trainer = Trainer(cfg, log=lambda _m: None)
    try:
        result = trainer.run()
    finally:
        trainer.close()
    lora = {k: v.detach().clone() for k, v in trainer.model.lora_state_dict().items()}
    return result.metrics, lora


def strip_times(rows: list[dict]) -> list[dict]:
    skip = ("time/", "images_per_s", "tflops_per_s", "mfu", "peak_mem")
    return [{k: v for k, v in r.items() if not k.startswith(skip)} for r in rows]


@pytest.mark.skipif(torch.cuda.is_available(), reason="off CUDA only (the gpu test covers CUDA)")
def test_trainer_with_cuda_graphs_off_cuda_runs_eagerly_says_so_and_matches(tmp_path, caplog):
    eager_rows, eager_lora = run_small(tmp_path, "eager")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        rows, lora = run_small(tmp_path, "graphs", "runtime.cuda_graphs=true")
    assert [r["cuda_graphs"] for r in rows] == [False, False]
    assert [r["cuda_graphs"] for r in eager_rows] == [False, False]
    assert strip_times(rows) == strip_times(eager_rows)
    assert all(torch.equal(lora[k], eager_lora[k]) for k in eager_lora)
    messages = [r.getMessage() for r in graph_records(caplog)]
    assert len(messages) == 2, messages  # the rollout's and the update's reason, once each for the whole run
    written = [json.loads(line) for line in (tmp_path / "graphs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["cuda_graphs"] for r in written] == [False, False]


# --- on a GPU ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cuda():
    return build("cuda")


@pytest.mark.gpu
def test_gpu_rollout_replay_matches_eager_and_draws_fresh_noise(tiny_cuda):
    model, _, cond, schedule = tiny_cuda
    runner, plan = RolloutGraphRunner(model), plan_of(schedule, (0, 3))
    noise = noise_for(model, 4)
    state, ref_state = noise_state(3, device="cuda"), noise_state(3, device="cuda")
    outs = []
    for _ in range(3):  # capture + replay, then two replays with the state advanced in place
        out = rollout(model, cond, plan, noise, noise_state=state, steps_fn=runner)
        ref = rollout(model, cond, plan, noise, noise_state=ref_state)
        assert runner.used is True
        torch.testing.assert_close(out.latents, ref.latents, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.log_probs, ref.log_probs, rtol=1e-5, atol=1e-5)
        assert torch.equal(state, ref_state)
        outs.append(out)
    assert len(runner.cache) == 1
    assert not torch.allclose(outs[0].latents[:, -1], outs[1].latents[:, -1])  # fresh noise on every replay
    assert not torch.allclose(outs[1].latents[:, -1], outs[2].latents[:, -1])
    # the same state value again reproduces the first replay
    again = rollout(model, cond, plan, noise, noise_state=noise_state(3, device="cuda"), steps_fn=runner)
    assert torch.equal(again.latents, outs[0].latents)


@pytest.mark.gpu
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_gpu_update_graph_gradients_match_eager(tiny_cuda, beta):
    model, params, cond, schedule = tiny_cuda
    plan = plan_of(schedule)
    out = trained(rollout(model, cond, plan, noise_for(model, 4), **state_of(model)),
                  torch.tensor([1.0, -1.0, 0.5, -2.0]), (0, 1))  # fmt: skip
    kw = {"grpo": GRPOConfig(clip_low=0.2, clip_high=0.2, beta=beta), "spec": plan.spec, "micro_batch": 3}
    clear_grads(params)
    ref = grpo_backward(model, out, cond, **kw)
    g_ref = grads_of(params)
    runner = UpdateGraphRunner(model, params)
    for _ in range(2):  # capture + replay, then replays only
        clear_grads(params)
        stats = grpo_backward(model, out, cond, step_fn=runner, **kw)
        assert runner.used is True
        torch.testing.assert_close(stats.values, ref.values, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads_of(params), g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)
    assert len(runner.cache) == 2  # micro-batches of 3 and 1 rows
    assert all(g.abs().sum() > 0 for g in g_ref)
    clear_grads(params)


@pytest.mark.gpu
def test_gpu_rollout_cache_stays_bounded(tiny_cuda):
    model, _, cond, schedule = tiny_cuda
    runner, plan = RolloutGraphRunner(model, max_graphs=2), plan_of(schedule)
    noise = noise_for(model, 4)
    for rows in (1, 2, 3, 1):
        index = torch.arange(rows, device="cuda")
        sub = cond.index_select(index)
        out = rollout(model, sub, plan, noise[:rows], steps_fn=runner, **state_of(model))
        ref = rollout(model, sub, plan, noise[:rows], **state_of(model))
        assert runner.used is True and len(runner.cache) <= 2
        torch.testing.assert_close(out.latents, ref.latents, rtol=1e-5, atol=1e-5)
    assert runner.cache.evictions == 2


@pytest.mark.gpu
def test_gpu_uncapturable_velocity_falls_back_to_eager(caplog, monkeypatch):
    model, _, cond, schedule = build("cuda")
    velocity = model.velocity

    def syncing_velocity(x, t, c):
        float(x.sum())  # a host read: fine eagerly, illegal while a graph is captured
        return velocity(x, t, c)

    monkeypatch.setattr(model, "velocity", syncing_velocity)
    runner, plan = RolloutGraphRunner(model), plan_of(schedule)
    noise = noise_for(model, 4)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(2):
            out = rollout(model, cond, plan, noise, steps_fn=runner, **state_of(model))
            ref = rollout(model, cond, plan, noise, **state_of(model))
            assert runner.used is False
            assert torch.equal(out.latents, ref.latents)
    assert not torch.cuda.is_current_stream_capturing()
    messages = [r.getMessage() for r in graph_records(caplog)]
    assert len(messages) == 1 and "capture failed" in messages[0]


@pytest.mark.gpu
def test_gpu_trainer_uses_graphs(tmp_path):
    rows, _ = run_small(tmp_path, "graphs", "runtime.cuda_graphs=true")
    eager_rows, _ = run_small(tmp_path, "eager")
    assert [r["cuda_graphs"] for r in rows] == [True, True]
    assert [r["cuda_graphs"] for r in eager_rows] == [False, False]
    assert rows[0]["reward_mean"] == pytest.approx(eager_rows[0]["reward_mean"], abs=1e-4)
    assert all(r["skipped_updates"] == 0 for r in rows)
