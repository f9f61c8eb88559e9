"""Metrics sinks: jsonl, TensorBoard (faked), Weights & Biases for real in offline mode, and the logging keys."""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from fastgrpo.train.config import load_config
from fastgrpo.train.config.sections import LoggingConfig
from fastgrpo.train.metrics.sinks import (
    WANDB_STATE_FILENAME,
    JsonlSink,
    MetricsSink,
    TensorBoardSink,
    WandbSink,
    build_sinks,
)
from fastgrpo.train.storage.run_dir import RunDir

ROWS = [
    {"step": 0, "eval_reward_mean": 0.25},
    {"step": 1, "reward_mean": 0.5, "loss": float("nan"), "cuda_graphs": False, "time/step": 1.5},
    {"step": 2, "reward_mean": 0.75, "loss": 0.125, "cuda_graphs": False, "time/step": 1.25, "kl": None},
]


@pytest.fixture
def run_dir(tmp_path: Path) -> RunDir:
    return RunDir(tmp_path / "runs" / "demo")


# --- jsonl ----------------------------------------------------------------------------------------------------


def test_jsonl_sink_writes_the_rows(run_dir):
    sink = JsonlSink(run_dir)
    assert isinstance(sink, MetricsSink)
    for row in ROWS:
        sink.log(row)
    sink.close()
    sink.close()
    rows = run_dir.read_metrics()
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[1]["loss"] is None and rows[2]["kl"] is None  # NaN and None both reach the file as null
    assert rows[2] == {**ROWS[2], "kl": None}


# --- TensorBoard ----------------------------------------------------------------------------------------------


def test_tensorboard_missing_says_how_to_get_it(monkeypatch, tmp_path):
    # None in sys.modules makes the import fail whether or not tensorboard is installed
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    expected = (
        "logging.tensorboard=true needs the tensorboard package: pip install tensorboard, or set "
        "logging.tensorboard=false (metrics.jsonl is always written)"
    )
    with pytest.raises(ValueError) as raised:
        TensorBoardSink(tmp_path / "tensorboard")
    assert str(raised.value) == expected
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


class FakeWriter:
    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.scalars: list[tuple[str, float, int]] = []
        self.flushes = 0
        self.closed = 0

    def add_scalar(self, key: str, value: float, step: int) -> None:
        self.scalars.append((key, value, step))

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed += 1


def test_tensorboard_sink_writes_numbers_only(monkeypatch, tmp_path):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    sink = TensorBoardSink(tmp_path / "tb")
    writer = sink._writer
    assert writer.log_dir == str(tmp_path / "tb")
    sink.log(ROWS[2])
    assert sorted(writer.scalars) == [("loss", 0.125, 2), ("reward_mean", 0.75, 2), ("time/step", 1.25, 2)]
    assert writer.flushes == 1
    sink.close()
    sink.close()
    assert writer.closed == 1


# --- Weights & Biases -----------------------------------------------------------------------------------------


def _children_named(word: str) -> list[int]:
    """Pids of this process's children whose command line contains ``word`` (Linux ``/proc``; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and word in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """``wandb`` in offline mode with every folder under ``tmp_path`` and nothing that reaches the network; the
    W&B service process is shut down afterwards."""
    wandb = pytest.importorskip("wandb")
    home = tmp_path / "wandb-home"
    settings = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(home),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",  # leave pytest's capture of stdout/stderr alone
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_DISABLE_GIT": "true",
        "WANDB__DISABLE_STATS": "true",  # no system-metrics sampler
        "WANDB__DISABLE_META": "true",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    yield wandb
    wandb.teardown()
    assert _children_named("wandb") == [], "the W&B service process outlived wandb.teardown()"


def _records(path: Path, timeout_s: float = 20.0) -> list[Any]:
    """The records of a finished W&B run file, once W&B's service has written them: ``run.finish()`` can return
    before the service flushed the file, so this waits (up to ``timeout_s``) for the run's ``exit`` record."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = _parse_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _parse_records(path: Path) -> list[Any]:
    """The protobuf records of a W&B run file (``run-ID.wandb``): W&B writes them in the LevelDB log format (32 KiB
    blocks of chunks with a 7-byte header: CRC, little-endian length, chunk type) after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file (its format may have changed)"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _history(run_file: Path) -> dict[int, dict[str, Any]]:
    """``{step: {key: value}}`` of the history rows in a W&B run file (W&B's own ``_`` keys left out)."""
    rows = {}
    for record in _records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            rows[record.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return rows


def _offline_runs(run_dir: RunDir, run_id: str) -> list[Path]:
    return sorted((run_dir.path / "wandb").glob(f"offline-run-*-{run_id}"))


def test_wandb_offline_logs_the_rows_and_resumes_the_same_run(wandb_offline, run_dir):
    started = time.monotonic()
    config = {"sampler": {"group_size": 4}, "logging": {"run_name": "demo"}}
    sink = WandbSink(run_dir, config, project="fastgrpo-test")
    assert isinstance(sink, MetricsSink)
    run_id = sink.run_id
    assert run_id.isalnum() and len(run_id) == 12
    for row in ROWS:
        sink.log(row)
    sink.close()
    sink.close()

    (first,) = _offline_runs(run_dir, run_id)
    history = _history(first / f"run-{run_id}.wandb")
    assert sorted(history) == [0, 1, 2]
    assert history[0] == {"eval_reward_mean": 0.25}
    assert history[1]["reward_mean"] == 0.5 and history[1]["cuda_graphs"] is False and history[1]["time/step"] == 1.5
    assert history[1]["loss"] != history[1]["loss"]  # NaN is sent as NaN
    assert history[2] == {"reward_mean": 0.75, "loss": 0.125, "cuda_graphs": False, "time/step": 1.25}
    (run_record,) = [r.run for r in _records(first / f"run-{run_id}.wandb") if r.WhichOneof("record_type") == "run"]
    assert run_record.run_id == run_id and run_record.display_name == "demo" and run_record.project == "fastgrpo-test"
    sent_config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert sent_config["sampler"] == {"group_size": 4}
    assert json.loads((run_dir.path / WANDB_STATE_FILENAME).read_text())["last_step"] == 2

    # a resumed process: same W&B run; the steps W&B already holds are skipped, the new ones sent. (W&B names an
    # offline run's folder by the second it started: a resume within the same second would share the folder.)
    time.sleep(1.05)
    notices: list[str] = []
    again = WandbSink(run_dir, config, project="fastgrpo-test", log=notices.append)
    assert again.run_id == run_id
    for step in (1, 2, 3, 4):
        again.log({"step": step, "reward_mean": step / 10})
    again.close()
    assert again.skipped == 2 and len(notices) == 1 and "already holds step 1" in notices[0]
    runs = _offline_runs(run_dir, run_id)
    assert len(runs) == 2
    second = next(p for p in runs if p != first)
    assert _history(second / f"run-{run_id}.wandb") == {3: {"reward_mean": 0.3}, 4: {"reward_mean": 0.4}}
    internal_log = (second / "logs" / "debug-internal.log").read_text()
    assert "ignoring partial history" not in internal_log  # W&B itself dropped nothing
    assert time.monotonic() - started < 20


def test_wandb_other_project_counts_its_steps_afresh(wandb_offline, run_dir):
    first = WandbSink(run_dir, {}, project="one")
    first.log({"step": 5, "x": 1.0})
    first.close()
    other = WandbSink(run_dir, {}, project="two", entity=None)
    other.log({"step": 1, "x": 2.0})
    other.close()
    assert other.run_id == first.run_id and other.skipped == 0


def test_build_sinks_adds_wandb_when_asked(wandb_offline, run_dir):
    assert [type(s) for s in build_sinks(LoggingConfig(), run_dir, {})] == [JsonlSink]
    cfg = LoggingConfig(wandb=True, wandb_project="fastgrpo-test")
    sinks = build_sinks(cfg, run_dir, {"logging": {"wandb": True}})
    assert [type(s) for s in sinks] == [JsonlSink, WandbSink]
    for sink in sinks:
        sink.log({"step": 1, "reward_mean": 0.5})
        sink.close()
    assert run_dir.read_metrics() == [{"step": 1, "reward_mean": 0.5}]
    (offline,) = _offline_runs(run_dir, sinks[1].run_id)  # type: ignore[attr-defined]
    assert _history(offline / f"run-{sinks[1].run_id}.wandb") == {1: {"reward_mean": 0.5}}  # type: ignore[attr-defined]


def test_build_sinks_closes_what_it_built_when_a_sink_fails(monkeypatch, run_dir):
    monkeypatch.setitem(sys.modules, "wandb", None)
    closed = []
    monkeypatch.setattr(JsonlSink, "close", lambda self: closed.append(self))
    with pytest.raises(ValueError, match="pip install wandb"):
        build_sinks(LoggingConfig(wandb=True), run_dir, {})
    assert len(closed) == 1


def test_wandb_missing_says_how_to_get_it(monkeypatch, run_dir):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError) as raised:
        WandbSink(run_dir, {})
    message = str(raised.value)
    assert "pip install wandb" in message and "fastgrpo[wandb]" in message and "logging.wandb=false" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert not (run_dir.path / WANDB_STATE_FILENAME).exists()


def test_wandb_init_failure_is_one_clear_error(monkeypatch, run_dir):
    wandb = pytest.importorskip("wandb")

    def failing_init(**kwargs: Any) -> None:
        raise wandb.errors.CommError("Failed to get resume status: dial tcp: no such host\nwhile retrying")

    monkeypatch.setattr(wandb, "init", failing_init)
    with pytest.raises(ValueError) as raised:
        WandbSink(run_dir, {}, project="p")
    message = str(raised.value)
    assert "no such host" in message and "while retrying" not in message  # W&B's reason, first line only
    for fix in ("WANDB_MODE=offline", "wandb login", "logging.wandb=false"):
        assert fix in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_bad_rows_are_refused(monkeypatch, tmp_path):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    sink = TensorBoardSink(tmp_path / "tb")
    for step in (None, 1.5, True, -1):
        with pytest.raises(ValueError, match="a metrics row needs an int 'step'"):
            sink.log({"step": step, "x": 1.0})


# --- config keys ----------------------------------------------------------------------------------------------


def test_logging_wandb_keys_default_off():
    cfg = load_config(None).logging
    assert (cfg.wandb, cfg.wandb_project, cfg.wandb_entity) == (False, "fastgrpo", None)
    cfg = load_config(None, ["logging.wandb=true", "logging.wandb_project=edits", "logging.wandb_entity=team"])
    assert (cfg.logging.wandb, cfg.logging.wandb_project, cfg.logging.wandb_entity) == (True, "edits", "team")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"wandb": "yes"}, "logging.wandb must be true or false"),
        ({"wandb_project": ""}, "logging.wandb_project must be a W&B project name"),
        ({"wandb_project": None}, "logging.wandb_project must be a W&B project name"),
        ({"wandb_project": "a/b"}, "logging.wandb_project must be at most 128 characters without"),
        ({"wandb_project": "p" * 129}, "logging.wandb_project must be at most 128 characters"),
        ({"wandb_entity": ""}, "logging.wandb_entity must be null or a non-empty string"),
        ({"wandb_entity": "team:x"}, "logging.wandb_entity must be at most 128 characters without"),
    ],
)
def test_logging_wandb_keys_refuse_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        LoggingConfig(**values)


@pytest.mark.parametrize("override", ["logging.wandb=1", "logging.wandb_project=a#b", "logging.wandb_entity=[x]"])
def test_logging_wandb_overrides_name_the_key(override):
    with pytest.raises(ValueError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, [override])


def test_a_training_run_sends_every_metrics_row_to_wandb(wandb_offline, tmp_path):
    """``logging.wandb=true`` end to end: the trainer's rows (the initial evaluation at step 0, every iteration) go
    to the W&B run as they go to metrics.jsonl."""
    from fastgrpo.train.config import load_config
    from fastgrpo.train.loop import train

    small = ["sampler.prompts_per_step=1", "sampler.group_size=2", "sampler.train_steps=2", "sampler.eval_steps=2",
             "data.held_out=2", "logging.eval_every=2", "logging.progress=false", "runtime.max_steps=2"]  # fmt: skip
    cfg = load_config(None, [*small, f"logging.output_dir={tmp_path}", "logging.run_name=wb", "logging.wandb=true"])
    result = train(cfg, log=lambda _m: None)
    run_id = json.loads((result.run_dir / WANDB_STATE_FILENAME).read_text())["id"]
    (run,) = sorted((result.run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    history = _history(run / f"run-{run_id}.wandb")
    assert sorted(history) == [r["step"] for r in result.metrics] == [0, 1, 2]
    assert history[2]["eval_reward_mean"] == pytest.approx(result.final_eval)
    assert history[1]["reward_mean"] == pytest.approx(result.metrics[1]["reward_mean"])
