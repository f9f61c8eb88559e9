"""Faults injected into real ``fastgrpo`` processes: a full disk, damaged, truncated and forged checkpoints, bad
data and rewards, signals, kills, an unreachable judge. Each scenario runs the command line as a subprocess and
checks the exit status, that no traceback reaches the user, that the message names the fix, and that no complete
checkpoint is lost (a damaged one is moved to ``corrupt-step-N`` with a ``WHY.txt``, never deleted).

The scenarios' processes run two at a time on a thread pool (see ``cli_fault_support``); each test waits for its
scenario and checks it. One trained run directory (2 iterations, checkpoints 1 and 2) is shared: a scenario that
damages it works on a copy.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import cli_fault_support as fx
import pytest
import yaml

TINY = fx.TINY
BASE_NAME = "base"
S1, S2, S3 = fx.step_name(1), fx.step_name(2), fx.step_name(3)


def setup_check(ok: bool, what: str) -> None:
    """A fault that did not take makes the scenario meaningless: stop it (as an error of the set-up)."""
    if not ok:
        raise RuntimeError(f"scenario set-up: {what}")


def no_traceback(result: fx.Result) -> None:
    assert "Traceback" not in result.stderr, result.describe()


def moved_aside(run_dir: Path, step: int) -> Path:
    """The ``corrupt-step-N`` directory of a damaged checkpoint, checked for its ``WHY.txt``."""
    corrupt = run_dir / "checkpoints" / f"corrupt-{fx.step_name(step)}"
    assert corrupt.is_dir(), fx.checkpoint_entries(run_dir)
    assert (corrupt / "WHY.txt").is_file()
    return corrupt


# --- the scenarios: each runs its processes and returns what its test checks ----------------------------------


def base_run(folder: Path) -> dict[str, Any]:
    """The shared run: 2 iterations, checkpoints 1 and 2. Its command puts overrides before and after an option
    (scenario 7 checks that form)."""
    output = folder / "runs"
    assert TINY[:2] == ["sampler.prompts_per_step=1", "sampler.group_size=2"]  # moved before the option below
    args = ["train", *TINY[:2], "--output-dir", str(output),
            f"logging.run_name={BASE_NAME}", *TINY[2:], "runtime.max_steps=2"]  # fmt: skip
    result = fx.run_cli(args, cwd=folder)
    run_dir = output / BASE_NAME
    if result.returncode != 0:
        raise AssertionError(f"the shared training run failed:\n{result.describe()}")
    return {"result": result, "run": run_dir, "steps": fx.complete_steps(run_dir)}


def resume_args(output: Path, *extra: str, steps: int = 3) -> list[str]:
    return ["train", "--output-dir", str(output), f"logging.run_name={BASE_NAME}", *TINY, f"runtime.max_steps={steps}",
            *extra]  # fmt: skip


def full_disk_tmpfs(folder: Path) -> Any:
    """The output directory on a 6 MiB tmpfs: the start-up space check (about 5 MiB for the LoRA exports and
    checkpoints it expects) passes, checkpoints of about 1 MiB each fill the disk after a few iterations."""
    if os.geteuid() != 0:
        return fx.Skip("mounting a tmpfs needs root")
    mount = folder / "small-disk"
    mount.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
    except FileNotFoundError:
        return fx.Skip("no mount command here")
    if mounted.returncode != 0:
        return fx.Skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        args = ["train", "--output-dir", str(mount), "logging.run_name=full", *TINY, "logging.keep_checkpoints=null",
                "runtime.max_steps=12"]  # fmt: skip
        result = fx.run_cli(args, cwd=folder)
        run_dir = mount / "full"
        entries = fx.checkpoint_entries(run_dir)
        steps = fx.complete_steps(run_dir)
        problems = {
            name: fx.checkpoint_problem(run_dir / "checkpoints" / name) for name in entries if name.startswith("step-")
        }
    finally:
        for _attempt in range(20):  # the run has exited and every file here was opened in a with-block
            unmounted = subprocess.run(["umount", str(mount)], capture_output=True, text=True, timeout=30)
            if unmounted.returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)
            raise AssertionError(f"could not unmount {mount}: {unmounted.stderr}")
    return {"result": result, "run": run_dir, "entries": entries, "steps": steps, "problems": problems}


def full_disk_injected(folder: Path) -> dict[str, Any]:
    """safetensors' disk-full error from the second LoRA file on: the checkpoint of iteration 2 fails."""
    output = folder / "runs"
    args = ["train", "--output-dir", str(output), "logging.run_name=full", *TINY, "runtime.max_steps=3"]
    result = fx.run_with_fault("enospc", 2, args, cwd=folder)
    return {"result": result, "run": output / "full"}


def damaged_in_place(folder: Path, base: dict[str, Any]) -> dict[str, Any]:
    """Bytes inside the newest ``shared.safetensors`` overwritten, its size unchanged; resume to 3 iterations."""
    output, run_dir = fx.copy_run(base["run"], folder)
    target = run_dir / "checkpoints" / S2 / "shared.safetensors"
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    target.write_bytes(bytes(data))
    damage = fx.checkpoint_problem(run_dir / "checkpoints" / S2)
    setup_check(damage == "shared.safetensors differs from what COMPLETE lists", f"the damage did not take ({damage})")
    result = fx.run_cli(resume_args(output), cwd=folder)
    return {"result": result, "run": run_dir, "damaged_bytes": bytes(data)}


def truncated_lora(folder: Path, base: dict[str, Any]) -> dict[str, Any]:
    """The newest checkpoint's LoRA file cut to half its size; resume to 3 iterations."""
    output, run_dir = fx.copy_run(base["run"], folder)
    target = run_dir / "checkpoints" / S2 / "lora" / "pytorch_lora_weights.safetensors"
    size = target.stat().st_size
    with open(target, "r+b") as handle:
        handle.truncate(size // 2)
    result = fx.run_cli(resume_args(output), cwd=folder)
    return {"result": result, "run": run_dir, "size": size}


def failed_start(folder: Path) -> dict[str, Any]:
    """A model path that does not exist, then the default model with the same run name."""
    output = folder / "runs"
    common = ["train", "--output-dir", str(output), "logging.run_name=exp", *TINY, "runtime.max_steps=1"]
    bad = fx.run_cli([*common, "model.type=flux_kontext", f"model.path={folder / 'nope'}"], cwd=folder, timeout=60)
    config_after_failure = (output / "exp" / "config.yaml").is_file()
    good = fx.run_cli(common, cwd=folder)
    return {"bad": bad, "good": good, "run": output / "exp", "config_after_failure": config_after_failure}


def rules_on_a_data_set(folder: Path) -> fx.Result:
    """``data.source`` set, the default (rule) reward left in place."""
    data = fx.write_dataset(folder / "data", good=3)
    args = ["train", "--output-dir", str(folder / "runs"), *TINY, "runtime.max_steps=1", f"data.source={data}"]
    return fx.run_cli(args, cwd=folder, timeout=60)


def data_smaller_than_an_iteration(folder: Path) -> dict[str, Any]:
    """3 records, 8 conditions per iteration, a judge reward (so that the config is valid)."""
    data = fx.write_dataset(folder / "data", good=3)
    args = ["train", "--output-dir", str(folder / "runs"), *TINY, "runtime.max_steps=1", f"data.source={data}",
            "sampler.prompts_per_step=8", fx.judge_reward()]  # fmt: skip
    return {"result": fx.run_cli(args, cwd=folder, timeout=60), "data": data}


def ctrl_c_twice(folder: Path) -> dict[str, Any]:
    """SIGINT, and 0.05 s later a second one, once the first checkpoint exists; 8 rollout steps make an iteration
    (about 0.3 s) last longer than that gap, so the second signal arrives before the graceful stop is done."""
    output = folder / "runs"
    args = ["train", "--output-dir", str(output), "logging.run_name=sigint", *TINY, "sampler.train_steps=8",
            "logging.keep_checkpoints=null", "runtime.max_steps=50"]  # fmt: skip
    run_dir = output / "sigint"
    process = fx.Background(args, cwd=folder)
    try:
        process.wait_for(lambda: (run_dir / "checkpoints" / S1 / "COMPLETE").is_file(), timeout=120,
                         what="first checkpoint")  # fmt: skip
        process.signal(signal.SIGINT)
        time.sleep(0.05)
        process.signal(signal.SIGINT)
        result = process.finish(timeout=60)
    finally:
        process.kill()
    return {"result": result, "run": run_dir, "steps": fx.complete_steps(run_dir)}


def ctrl_c_during_shutdown(folder: Path) -> dict[str, Any]:
    """The second SIGINT a moment late: after the graceful stop of the first, while the process shuts down."""
    output = folder / "runs"
    args = ["train", "--output-dir", str(output), "logging.run_name=late", *TINY, "runtime.max_steps=5"]
    result = fx.run_with_late_second_sigint(args, cwd=folder)
    return {"result": result, "run": output / "late"}


def pickled_payload(folder: Path, base: dict[str, Any]) -> dict[str, Any]:
    """The newest ``shared.safetensors`` replaced by a pickle that creates a witness file when unpickled, its size
    and SHA-256 written into ``COMPLETE``; resume, then ``fastgrpo eval --checkpoint`` of that checkpoint."""
    probe = folder / "probe-witness"
    pickle.loads(fx.witness_pickle(probe))
    setup_check(probe.is_file(), "unpickling the payload does not create its witness file")
    witness = folder / "witness"
    output, run_dir = fx.copy_run(base["run"], folder)
    checkpoint = run_dir / "checkpoints" / S2
    (checkpoint / "shared.safetensors").write_bytes(fx.witness_pickle(witness))
    fx.fix_marker(checkpoint, "shared.safetensors")
    setup_check(fx.checkpoint_problem(checkpoint) is None, "COMPLETE does not vouch for the forged file")
    resumed = fx.run_cli(resume_args(output), cwd=folder)
    witness_after_resume = witness.exists()
    evaluated = fx.run_cli(["eval", *TINY, "--json", "--checkpoint", str(checkpoint)], cwd=folder)
    return {
        "run": run_dir,
        "resumed": resumed,
        "evaluated": evaluated,
        "witness_after_resume": witness_after_resume,
        "witness_after_eval": witness.exists(),
    }


def pickled_lora_eval(folder: Path, base: dict[str, Any]) -> dict[str, Any]:
    """Both the shared state and the LoRA file of the newest checkpoint replaced by the witness pickle (``COMPLETE``
    fixed to match); ``fastgrpo eval --checkpoint``, which reads the LoRA file."""
    witness = folder / "witness"
    _, run_dir = fx.copy_run(base["run"], folder)
    checkpoint = run_dir / "checkpoints" / S2
    for name in ("shared.safetensors", "lora/pytorch_lora_weights.safetensors"):
        (checkpoint / name).write_bytes(fx.witness_pickle(witness))
        fx.fix_marker(checkpoint, name)
    setup_check(fx.checkpoint_problem(checkpoint) is None, "COMPLETE does not vouch for the forged files")
    result = fx.run_cli(["eval", *TINY, "--json", "--checkpoint", str(checkpoint)], cwd=folder)
    return {"result": result, "witness": witness.exists()}


def sigterm_then_resume(folder: Path) -> dict[str, Any]:
    """One SIGTERM once the first checkpoint exists, then the same command again."""
    output = folder / "runs"
    args = ["train", "--output-dir", str(output), "logging.run_name=sigterm", *TINY, "logging.keep_checkpoints=null",
            "runtime.max_steps=10"]  # fmt: skip
    run_dir = output / "sigterm"
    process = fx.Background(args, cwd=folder)
    try:
        process.wait_for(lambda: (run_dir / "checkpoints" / S1 / "COMPLETE").is_file(), timeout=120,
                         what="first checkpoint")  # fmt: skip
        process.signal(signal.SIGTERM)
        stopped = process.finish(timeout=60)
    finally:
        process.kill()
    steps_after_stop = fx.complete_steps(run_dir)
    resumed = fx.run_cli(args, cwd=folder)
    return {"stopped": stopped, "resumed": resumed, "run": run_dir, "steps_after_stop": steps_after_stop}


def sigkill_then_resume(folder: Path) -> dict[str, Any]:
    """SIGKILL in the middle of writing the second checkpoint (at its LoRA file: the rank and shared state files
    are already in ``.tmp-step-00000002``), then the same command with the plain CLI."""
    output = folder / "runs"
    args = ["train", "--output-dir", str(output), "logging.run_name=sigkill", *TINY, "runtime.max_steps=3"]
    run_dir = output / "sigkill"
    killed = fx.run_with_fault("sigkill", 2, args, cwd=folder)
    setup_check(killed.returncode == -signal.SIGKILL, f"the run was not killed:\n{killed.describe()}")
    entries_after_kill = fx.checkpoint_entries(run_dir)
    steps_after_kill = fx.complete_steps(run_dir)
    resumed = fx.run_cli(args, cwd=folder)
    return {
        "resumed": resumed,
        "run": run_dir,
        "entries_after_kill": entries_after_kill,
        "steps_after_kill": steps_after_kill,
    }


def unreachable_judge(folder: Path) -> dict[str, Any]:
    """A judge nothing answers, on the synthetic task, 2 all-failed iterations tolerated."""
    output = folder / "runs"
    args = ["train", "--output-dir", str(output), "logging.run_name=judge", *TINY, "runtime.max_steps=5",
            "optim.nonfinite_limit=2", fx.judge_reward()]  # fmt: skip
    return {"result": fx.run_cli(args, cwd=folder), "run": output / "judge"}


def missing_api_key(folder: Path) -> fx.Result:
    args = ["train", "--output-dir", str(folder / "runs"), *TINY, "runtime.max_steps=1",
            fx.judge_reward(api_key_env="FASTGRPO_TEST_MISSING_KEY")]  # fmt: skip
    return fx.run_cli(args, cwd=folder, timeout=60)


def data_check_mixed(folder: Path) -> fx.Result:
    """20 good records and 1 that is not an image (4.8%, within the default 5%)."""
    fx.write_dataset(folder / "mixed", good=20, bad=1)
    return fx.run_cli(["data", "check", str(folder / "mixed")], cwd=folder, timeout=60)


def data_check_all_bad(folder: Path) -> fx.Result:
    fx.write_dataset(folder / "bad", good=0, bad=3)
    return fx.run_cli(["data", "check", str(folder / "bad")], cwd=folder, timeout=60)


#: in the order they start (two at a time): the long, signalled ones first, the shared run early, the ones that
#: need it after a few others
SCENARIOS = {
    s.name: s
    for s in [
        fx.Scenario("base", base_run),
        fx.Scenario("sigterm", sigterm_then_resume),
        fx.Scenario("ctrl_c_twice", ctrl_c_twice),
        fx.Scenario("full_disk_tmpfs", full_disk_tmpfs),
        fx.Scenario("damaged_in_place", damaged_in_place, after=("base",)),
        fx.Scenario("truncated_lora", truncated_lora, after=("base",)),
        fx.Scenario("pickled_payload", pickled_payload, after=("base",)),
        fx.Scenario("pickled_lora_eval", pickled_lora_eval, after=("base",)),
        fx.Scenario("ctrl_c_during_shutdown", ctrl_c_during_shutdown),
        fx.Scenario("sigkill", sigkill_then_resume),
        fx.Scenario("failed_start", failed_start),
        fx.Scenario("unreachable_judge", unreachable_judge),
        fx.Scenario("full_disk_injected", full_disk_injected),
        fx.Scenario("data_smaller_than_an_iteration", data_smaller_than_an_iteration),
        fx.Scenario("missing_api_key", missing_api_key),
        fx.Scenario("rules_on_a_data_set", rules_on_a_data_set),
        fx.Scenario("data_check_mixed", data_check_mixed),
        fx.Scenario("data_check_all_bad", data_check_all_bad),
    ]
}


def scenarios(*names: str):
    """Name the scenarios a test checks (the pool starts only those of the selected tests)."""
    for name in names:
        assert name in SCENARIOS, name

    def mark(test):
        test.fault_scenarios = names
        return test

    return mark


@pytest.fixture(scope="module")
def pool(request, tmp_path_factory):
    wanted = {
        name
        for item in request.session.items
        if item.module is request.module
        for name in getattr(item.function, "fault_scenarios", ())
    }
    runner = fx.ScenarioPool(SCENARIOS, folder=lambda name: tmp_path_factory.mktemp(name))
    runner.start(wanted)
    yield runner
    runner.close()
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None and runner.seconds:  # --durations sees only the waits
        times = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in runner.seconds.items())
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nfault scenarios (wall time of each, two at a time): {times}")


def outcome(pool: fx.ScenarioPool, name: str) -> Any:
    value = pool.result(name)
    if isinstance(value, fx.Skip):
        pytest.skip(value.reason)
    return value


# --- 1. a full disk while a checkpoint is written --------------------------------------------------------------


@scenarios("full_disk_tmpfs")
def test_full_disk_on_a_small_tmpfs_stops_with_the_fix_and_keeps_the_checkpoints(pool):
    out = outcome(pool, "full_disk_tmpfs")
    result, steps = out["result"], out["steps"]
    assert result.returncode == 1, result.describe()
    no_traceback(result)
    for phrase in ("No space left on device", "free disk space", "logging.keep_checkpoints"):
        assert phrase in result.stderr, (phrase, result.describe())
    # the checkpoints written before the disk filled are all there, whole (keep_checkpoints=null prunes none)
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1)), (out["entries"], out["problems"])
    assert all(problem is None for problem in out["problems"].values()), out["problems"]
    assert not [name for name in out["entries"] if name.startswith(".tmp-")], out["entries"]  # failed write removed
    newest = out["run"] / "checkpoints" / fx.step_name(steps[-1])
    failed = out["run"] / "checkpoints" / fx.step_name(steps[-1] + 1)
    assert f"could not write checkpoint {failed}" in result.stderr, result.describe()
    assert f"The newest complete checkpoint {newest} is intact" in result.stderr, result.describe()


@scenarios("full_disk_injected")
def test_full_disk_reported_by_safetensors_stops_with_the_fix_and_keeps_the_checkpoint(pool):
    out = outcome(pool, "full_disk_injected")
    result, run_dir = out["result"], out["run"]
    assert result.returncode == 1, result.describe()
    no_traceback(result)
    for phrase in ("No space left on device", "free disk space", "logging.keep_checkpoints", "logging.output_dir"):
        assert phrase in result.stderr, (phrase, result.describe())
    assert f"could not write checkpoint {run_dir / 'checkpoints' / S2}" in result.stderr, result.describe()
    assert fx.complete_steps(run_dir) == [1]
    assert fx.checkpoint_entries(run_dir) == [S1]  # the failed write left nothing behind


# --- 2., 3. a damaged or truncated newest checkpoint -------------------------------------------------------------


@scenarios("damaged_in_place")
def test_a_checkpoint_damaged_in_place_is_moved_aside_and_the_run_resumes_from_the_previous(pool):
    out = outcome(pool, "damaged_in_place")
    result, run_dir = out["result"], out["run"]
    assert result.returncode == 0, result.describe()
    no_traceback(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert any(S2 in line and "shared.safetensors does not match its checksum" in line for line in warnings), (
        result.describe()
    )
    corrupt = moved_aside(run_dir, 2)
    assert "shared.safetensors does not match its checksum" in (corrupt / "WHY.txt").read_text()
    assert (corrupt / "shared.safetensors").read_bytes() == out["damaged_bytes"]  # kept as it was, not deleted
    assert f"resumed from {run_dir / 'checkpoints' / S1} (iteration 1)" in result.stderr, result.describe()
    assert fx.metrics_steps(run_dir) == [1, 2, 3]
    assert fx.complete_steps(run_dir) == [1, 2, 3]  # step 1 untouched; 2 and 3 written anew


@scenarios("truncated_lora")
def test_a_truncated_lora_file_is_moved_aside_and_the_run_resumes_from_the_previous(pool):
    out = outcome(pool, "truncated_lora")
    result, run_dir = out["result"], out["run"]
    assert result.returncode == 0, result.describe()
    no_traceback(result)
    reason = f"lora/pytorch_lora_weights.safetensors has {out['size'] // 2} bytes, COMPLETE says {out['size']}"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert any(S2 in line and reason in line for line in warnings), result.describe()
    corrupt = moved_aside(run_dir, 2)
    assert reason in (corrupt / "WHY.txt").read_text()
    assert (corrupt / "lora" / "pytorch_lora_weights.safetensors").stat().st_size == out["size"] // 2
    assert f"resumed from {run_dir / 'checkpoints' / S1} (iteration 1)" in result.stderr, result.describe()
    assert fx.metrics_steps(run_dir) == [1, 2, 3]
    assert fx.complete_steps(run_dir) == [1, 2, 3]


# --- 4. - 7. start-up errors and the command line ---------------------------------------------------------------


@scenarios("failed_start")
def test_a_failed_start_is_quick_and_does_not_block_the_run_name(pool):
    out = outcome(pool, "failed_start")
    bad, good = out["bad"], out["good"]
    assert bad.returncode == 2, bad.describe()
    no_traceback(bad)
    assert "does not exist" in bad.stderr and "model.path" in bad.stderr, bad.describe()
    assert bad.seconds < 30, f"{bad.seconds:.1f} s: was the path tried as a hub id?"
    assert out["config_after_failure"]  # the run directory was made, and a failed start does not bind it
    assert good.returncode == 0, good.describe()
    no_traceback(good)
    assert f"done: 1 iterations in {out['run']}" in good.stderr, good.describe()
    assert fx.metrics_steps(out["run"]) == [1] and fx.complete_steps(out["run"]) == [1]


@scenarios("rules_on_a_data_set")
def test_the_rule_reward_on_a_data_set_is_refused_in_one_line(pool):
    result = outcome(pool, "rules_on_a_data_set")
    assert result.returncode == 2, result.describe()
    no_traceback(result)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.describe()
    for phrase in ("fastgrpo train: error:", "rewards.components", "clip", "mllm_judge", "data.source"):
        assert phrase in errors[0], (phrase, result.describe())


@scenarios("data_smaller_than_an_iteration")
def test_a_data_set_smaller_than_one_iteration_names_the_setting(pool):
    out = outcome(pool, "data_smaller_than_an_iteration")
    result = out["result"]
    assert result.returncode == 2, result.describe()
    no_traceback(result)
    errors = result.lines("fastgrpo train: error:")
    assert len(errors) == 1, result.describe()
    assert str(out["data"]) in errors[0] and "too small for one iteration" in errors[0], result.describe()
    assert "sampler.prompts_per_step" in errors[0], result.describe()
    for internal in ("groups_per_rank", "drop_last"):
        assert internal not in result.stderr, (internal, result.describe())


@scenarios("base")
def test_overrides_may_stand_between_options(pool):
    """``train sampler.prompts_per_step=1 sampler.group_size=2 --output-dir DIR logging.run_name=... ...``: the
    overrides on both sides of the option take effect (the defaults are 4 and 8)."""
    out = outcome(pool, "base")
    result, run_dir = out["result"], out["run"]
    assert result.returncode == 0, result.describe()
    no_traceback(result)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["sampler"]["prompts_per_step"], config["sampler"]["group_size"]) == (1, 2), config["sampler"]
    assert config["runtime"]["max_steps"] == 2 and config["logging"]["run_name"] == BASE_NAME, config
    assert fx.metrics_steps(run_dir) == [1, 2] and out["steps"] == [1, 2]


# --- 8., 10., 11. signals and kills --------------------------------------------------------------------------


@scenarios("ctrl_c_twice")
def test_ctrl_c_twice_stops_at_once_with_one_line_naming_the_checkpoint_to_resume_from(pool):
    out = outcome(pool, "ctrl_c_twice")
    result, run_dir, steps = out["result"], out["run"], out["steps"]
    assert result.returncode == 130, result.describe()
    no_traceback(result)
    lines = result.lines("fastgrpo train:")
    assert len(lines) == 1, result.describe()
    assert "stopped at once by a second signal" in lines[0], result.describe()
    assert steps and steps == list(range(1, len(steps) + 1)), fx.checkpoint_entries(run_dir)
    newest = run_dir / "checkpoints" / fx.step_name(steps[-1])
    assert lines[0].endswith(f"logging.run_name=sigint resumes from {newest}"), (lines[0], steps)


@scenarios("ctrl_c_during_shutdown")
def test_a_second_ctrl_c_during_shutdown_does_not_claim_training_never_started(pool):
    out = outcome(pool, "ctrl_c_during_shutdown")
    result, run_dir = out["result"], out["run"]
    assert "stopped by SIGINT after iteration 2; checkpoint saved" in result.stderr, result.describe()
    assert fx.complete_steps(run_dir) == [1, 2]  # the graceful stop saved iteration 2 before the second signal
    assert result.returncode in (0, 130), result.describe()
    no_traceback(result)
    assert "before training started" not in result.stderr, result.describe()
    assert "nothing to resume" not in result.stderr, result.describe()


@scenarios("sigterm")
def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(pool):
    out = outcome(pool, "sigterm")
    stopped, resumed, run_dir = out["stopped"], out["resumed"], out["run"]
    assert stopped.returncode == 0, stopped.describe()
    no_traceback(stopped)
    summary = [line for line in stopped.lines("stopped by SIGTERM after ") if "iterations; resume" in line]
    assert len(summary) == 1 and summary[0].endswith("iterations; resume with the same command"), stopped.describe()
    done = int(summary[0].split()[4])
    assert 1 <= done < 10, stopped.describe()  # stopped early, not at the end
    assert f"after iteration {done}; checkpoint saved" in stopped.stderr, stopped.describe()
    assert out["steps_after_stop"] == list(range(1, done + 1))  # the checkpoint of the last iteration, saved
    assert resumed.returncode == 0, resumed.describe()
    no_traceback(resumed)
    assert f"resumed from {run_dir / 'checkpoints' / fx.step_name(done)} (iteration {done})" in resumed.stderr
    assert f"done: 10 iterations in {run_dir}" in resumed.stderr, resumed.describe()
    assert fx.metrics_steps(run_dir) == list(range(1, 11))
    assert fx.complete_steps(run_dir) == list(range(1, 11))


@scenarios("sigkill")
def test_sigkill_mid_checkpoint_leaves_a_partial_write_that_the_resume_removes(pool):
    out = outcome(pool, "sigkill")
    resumed, run_dir = out["resumed"], out["run"]
    assert out["entries_after_kill"] == [f".tmp-{S2}", S1] and out["steps_after_kill"] == [1]
    assert resumed.returncode == 0, resumed.describe()
    no_traceback(resumed)
    tmp = run_dir / "checkpoints" / f".tmp-{S2}"
    assert f"removed {tmp}, left by an interrupted save" in resumed.stderr, resumed.describe()
    assert f"resumed from {run_dir / 'checkpoints' / S1} (iteration 1)" in resumed.stderr, resumed.describe()
    assert f"done: 3 iterations in {run_dir}" in resumed.stderr, resumed.describe()
    assert fx.metrics_steps(run_dir) == [1, 2, 3]
    assert fx.checkpoint_entries(run_dir) == [S1, S2, S3]  # the default keeps 3; nothing else left behind
    assert fx.complete_steps(run_dir) == [1, 2, 3]


# --- 9. a checkpoint carrying a pickle ------------------------------------------------------------------------


@scenarios("pickled_payload", "pickled_lora_eval")
def test_a_pickled_payload_with_a_matching_checksum_is_refused_and_never_unpickled(pool):
    out = outcome(pool, "pickled_payload")
    resumed, run_dir = out["resumed"], out["run"]
    assert resumed.returncode == 1, resumed.describe()
    no_traceback(resumed)
    errors = resumed.lines("fastgrpo train: error:")
    assert len(errors) == 1, resumed.describe()
    assert f"cannot read checkpoint {run_dir / 'checkpoints' / S2}" in errors[0], resumed.describe()
    assert "not a safetensors file" in errors[0], resumed.describe()
    assert not out["witness_after_resume"], "resuming unpickled the checkpoint's shared state"
    assert fx.checkpoint_entries(run_dir) == [S1, S2]  # nothing was deleted
    assert fx.complete_steps(run_dir) == [1, 2]
    evaluated = out["evaluated"]
    assert not out["witness_after_eval"], "fastgrpo eval --checkpoint unpickled the shared state"
    assert evaluated.returncode == 0, evaluated.describe()  # it reads the (intact) LoRA file alone
    no_traceback(evaluated)
    assert f'"weights": "LoRA {run_dir / "checkpoints" / S2 / "lora"}"' in evaluated.stdout, evaluated.stdout
    lora = outcome(pool, "pickled_lora_eval")
    assert not lora["witness"], "fastgrpo eval --checkpoint unpickled the LoRA file"
    assert lora["result"].returncode != 0, lora["result"].describe()  # refused: see the next test


@scenarios("pickled_lora_eval")
def test_eval_of_a_checkpoint_whose_lora_is_a_pickle_fails_with_a_message(pool):
    out = outcome(pool, "pickled_lora_eval")
    result = out["result"]
    assert result.returncode in (1, 2), result.describe()
    no_traceback(result)
    assert "pytorch_lora_weights.safetensors" in result.stderr, result.describe()


# --- 12., 13. rewards that cannot be computed ------------------------------------------------------------------


@scenarios("unreachable_judge")
def test_an_unreachable_judge_stops_the_run_naming_the_reward_components(pool):
    out = outcome(pool, "unreachable_judge")
    result, run_dir = out["result"], out["run"]
    assert result.returncode == 1, result.describe()
    no_traceback(result)
    errors = result.lines("fastgrpo train: error:")
    assert len(errors) == 1, result.describe()
    assert "every reward failed in 2 iterations in a row" in errors[0], result.describe()
    assert "rewards.components (judge)" in errors[0], result.describe()
    assert "WARNING fastgrpo.rewards.judge: judge: 2 of 2 samples not scored" in result.stderr, result.describe()
    assert "Connection refused" in result.stderr, result.describe()
    assert fx.metrics_steps(run_dir) == [1, 2]  # the iteration that stops the run has its row too
    assert fx.complete_steps(run_dir) == [1]  # the checkpoint of iteration 1 stays


@scenarios("missing_api_key")
def test_a_missing_api_key_variable_is_named(pool):
    result = outcome(pool, "missing_api_key")
    assert result.returncode == 2, result.describe()
    no_traceback(result)
    errors = result.lines("fastgrpo train: error:")
    assert len(errors) == 1, result.describe()
    assert "environment variable FASTGRPO_TEST_MISSING_KEY (api_key_env) is not set" in errors[0], result.describe()
    assert "export it" in errors[0], result.describe()


# --- 14. data check --------------------------------------------------------------------------------------------


@scenarios("data_check_mixed", "data_check_all_bad")
def test_data_check_names_a_bad_record_and_fails_an_all_bad_data_set(pool):
    mixed = outcome(pool, "data_check_mixed")
    assert mixed.returncode == 0, mixed.describe()
    no_traceback(mixed)
    assert ": OK" in mixed.stdout and "21: 20 usable, 1 bad" in mixed.stdout, mixed.stdout
    assert "[corrupt_image] record 'bad-0' (edits.jsonl:line 21)" in mixed.stdout, mixed.stdout
    all_bad = outcome(pool, "data_check_all_bad")
    assert all_bad.returncode == 1, all_bad.describe()
    no_traceback(all_bad)
    assert ": FAILED" in all_bad.stdout and "3: 0 usable, 3 bad" in all_bad.stdout, all_bad.stdout
    for i in range(3):
        assert f"[corrupt_image] record 'bad-{i}'" in all_bad.stdout, all_bad.stdout
    assert "allowed format (PNG, JPEG" in all_bad.stdout, all_bad.stdout
