"""Evaluations inside the loop: the gold reward beside the training reward, lora/best, the alarm's clean stop,
per-component advantages."""

from __future__ import annotations

import json

import pytest
import torch
from test_loop import SMALL, run_trainer, small_cfg, strip_times

from fastgrpo.models.lora import read_lora
from fastgrpo.train.cli import main
from fastgrpo.train.loop import Trainer
from fastgrpo.train.selection import EvaluationRecord, Verdict

GOLD = "eval.rewards={components: {gold_rules: {type: rules, weight: 1.0, keep_weight: 1.0}}}"
TRAIN = "rewards.components={sat: {type: saturation, weight: 1.0}, rules: {type: rules, weight: 0.0}}"


def test_the_gold_reward_is_logged_beside_the_training_reward_and_selects_lora_best(tmp_path, capsys):
    _, result = run_trainer(small_cfg(tmp_path, TRAIN, GOLD, "runtime.max_steps=4", "logging.eval_every=1"))
    evals = [r for r in result.metrics if "gold_reward_mean" in r]
    assert [r["step"] for r in evals] == [0, 1, 2, 3, 4]
    for row in evals:  # two rewards scored on the same edits: different figures, both with their errors
        assert row["gold_reward_mean"] != row["eval_reward_mean"] and row["gold/gold_rules"] == row["gold_reward_mean"]
        assert row["gold_reward_se"] > 0 and row["eval_reward_se"] > 0 and "eval/sat" in row
    best_row = max(evals, key=lambda r: r["gold_reward_mean"])
    best = json.loads((tmp_path / "run" / "lora" / "best" / "best.json").read_text())
    assert best["step"] == best_row["step"] and best["gold_reward_mean"] == best_row["gold_reward_mean"]
    assert result.best["step"] == best_row["step"]
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()  # the export kept lora/best
    weights, _ = read_lora(tmp_path / "run" / "lora" / "best")
    final, _ = read_lora(tmp_path / "run" / "lora")
    assert (best_row["step"] == 4) == all(torch.equal(weights[k], final[k]) for k in final)
    overrides = [*SMALL, f"logging.output_dir={tmp_path}", TRAIN, GOLD]
    assert main(["eval", "--lora", str(tmp_path / "run" / "lora" / "best"), "--json", *overrides]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gold_reward_mean"] == pytest.approx(best["gold_reward_mean"], abs=1e-6)


def test_without_a_gold_reward_the_gold_figures_are_the_training_ones(tmp_path):
    _, result = run_trainer(small_cfg(tmp_path, "runtime.max_steps=2"))
    for row in (r for r in result.metrics if "eval_reward_mean" in r):
        assert row["gold_reward_mean"] == row["eval_reward_mean"] and row["gold/rules"] == row["eval/rules"]


def test_a_resumed_run_keeps_the_record(tmp_path, monkeypatch):
    extra = (TRAIN, GOLD, "runtime.max_steps=4", "logging.eval_every=1", "logging.save_every=1")
    straight, _ = run_trainer(small_cfg(tmp_path, *extra, name="straight"))
    original = Trainer.iteration

    def stop_after_two(self, step):
        row = original(self, step)
        if step == 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        return row

    monkeypatch.setattr(Trainer, "iteration", stop_after_two)
    run_trainer(small_cfg(tmp_path, *extra, name="resumed"))
    monkeypatch.setattr(Trainer, "iteration", original)
    resumed, _result = run_trainer(small_cfg(tmp_path, *extra, name="resumed"))
    assert resumed.record.state_dict() == straight.record.state_dict()
    best = json.loads((tmp_path / "resumed" / "lora" / "best" / "best.json").read_text())
    assert best == json.loads((tmp_path / "straight" / "lora" / "best" / "best.json").read_text())


def test_the_alarm_ends_the_run_cleanly_when_asked(tmp_path, monkeypatch, caplog):
    real = EvaluationRecord.observe

    def alarm_at_two(self, step, ev):
        verdict = real(self, step, ev)
        if step == 2:
            self.strikes, self.fired_at = self.cfg.patience, step
            return Verdict(best=False, alarm=True)
        return verdict

    monkeypatch.setattr(EvaluationRecord, "observe", alarm_at_two)
    cfg = small_cfg(tmp_path, "runtime.max_steps=6", "logging.eval_every=1", "eval.stop_on_overoptimisation=true")
    _, result = run_trainer(cfg)
    assert result.steps_done == 2 and result.stopped_by is None
    assert result.ended_early.startswith("over-optimisation alarm at iteration 2")
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "COMPLETE").is_file()
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert "over-optimisation: at iteration 2" in caplog.text


def test_per_component_advantages_train_on_two_rewards(tmp_path):
    two = "rewards.components={rules: {type: rules, weight: 1.0}, sat: {type: saturation, weight: 0.1}}"
    _summed, sum_result = run_trainer(small_cfg(tmp_path, two, "runtime.max_steps=2", name="sum"))
    _split, split_result = run_trainer(
        small_cfg(tmp_path, two, "runtime.max_steps=2", "grpo.adv_aggregation=per_component", name="split")
    )
    a, b = strip_times(sum_result.metrics), strip_times(split_result.metrics)
    assert a[1]["reward_mean"] == b[1]["reward_mean"]  # the same first rollouts ...
    assert a[1]["grad_norm"] != b[1]["grad_norm"]  # ... trained with other advantages
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in b[1:])


def _stat(report, label, reward, name="total"):
    return report["stats"][label][reward][name]["mean"]


def test_a_run_ends_with_the_base_vs_trained_report(tmp_path):
    cfg = small_cfg(tmp_path, TRAIN, GOLD, "runtime.max_steps=4", "logging.eval_every=1", "eval.report_conditions=2")
    trainer, result = run_trainer(cfg)
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    evals = {r["step"]: r for r in result.metrics if "gold_reward_mean" in r}
    best = result.best["step"]
    assert [v["label"] for v in report["variants"]] == ["base", "trained", *(["best"] if best != 4 else [])]
    assert report["conditions"] == 4 and len(report["shown"]) == 2 and set(report["rewards"]) == {"train", "gold"}
    # trained = the final evaluation, base = the zero-initialised LoRA of iteration 0, best = what lora/best holds
    assert _stat(report, "trained", "train") == pytest.approx(evals[4]["eval_reward_mean"], abs=1e-6)
    assert _stat(report, "trained", "gold") == pytest.approx(evals[4]["gold_reward_mean"], abs=1e-6)
    assert _stat(report, "base", "gold") == pytest.approx(evals[0]["gold_reward_mean"], abs=1e-6)
    if best != 4:
        assert _stat(report, "best", "gold") == pytest.approx(evals[best]["gold_reward_mean"], abs=1e-6)
    diff = report["differences"]["trained"]["train"]["total"]["mean"]
    assert diff == pytest.approx(_stat(report, "trained", "train") - _stat(report, "base", "train"), abs=1e-9)
    assert (run / "report.png").is_file() and "## gold reward" in (run / "report.md").read_text()
    # the report swapped weights in and out: the live LoRA is the one exported
    final, _ = read_lora(run / "lora")
    live = {k: v.detach() for k, v in trainer.model.lora_state_dict().items()}
    assert all(torch.equal(live[k], final[k]) for k in final)


def test_saved_weights_swaps_a_lora_in_and_restores_the_live_one(tmp_path):
    trainer, _ = run_trainer(small_cfg(tmp_path, "runtime.max_steps=2", "logging.eval_every=1"))
    saved, _ = read_lora(tmp_path / "run" / "checkpoints" / "step-00000002" / "lora")
    with torch.no_grad():
        for p in trainer.policy.params:
            p.add_(0.5)
    before = {k: v.detach().clone() for k, v in trainer.model.lora_state_dict().items()}
    with trainer.policy.saved_weights(tmp_path / "run" / "checkpoints" / "step-00000002" / "lora"):
        inside = trainer.model.lora_state_dict()
        assert all(torch.equal(inside[k].detach(), saved[k]) for k in saved)
    after = trainer.model.lora_state_dict()
    assert all(torch.equal(after[k].detach(), before[k]) for k in before)


def test_no_report_when_asked_and_a_failed_report_is_a_warning(tmp_path, monkeypatch, caplog):
    _, result = run_trainer(small_cfg(tmp_path, "runtime.max_steps=1", "eval.report_conditions=0", name="disabled"))
    assert result.steps_done == 1 and not (tmp_path / "disabled" / "report.json").exists()

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fastgrpo.train.report.write_run_report", full_disk)
    _, result = run_trainer(small_cfg(tmp_path, "runtime.max_steps=1", name="full"))
    assert result.steps_done == 1 and (tmp_path / "full" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert "the report was not written" in caplog.text and "fastgrpo compare --config" in caplog.text
    assert "no space left" in caplog.text.lower()


def test_the_train_command_names_lora_best_and_the_report(tmp_path, capsys):
    overrides = [*SMALL, f"logging.output_dir={tmp_path}", "logging.run_name=cli", "runtime.max_steps=2"]
    assert main(["train", *overrides]) == 0
    err = capsys.readouterr().err
    best = json.loads((tmp_path / "cli" / "lora" / "best" / "best.json").read_text())
    assert f"best gold reward {best['gold_reward_mean']:.4f} at iteration {best['step']}" in err
    assert str(tmp_path / "cli" / "lora" / "best") in err and str(tmp_path / "cli" / "report.md") in err
