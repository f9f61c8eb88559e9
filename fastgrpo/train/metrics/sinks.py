"""Where a metrics row goes: ``metrics.jsonl`` always, TensorBoard and Weights & Biases when configured.

A row is a flat mapping with an int ``"step"`` (the GRPO iteration it closes; 0 is the evaluation before training)
and float/int/bool/None values (None stands for NaN in the jsonl file). :func:`build_sinks` turns the ``logging``
section into a list of :class:`MetricsSink`; the trainer calls ``log(row)`` on each, on rank 0 only, and ``close()``
at the end. ``metrics.jsonl`` (:class:`JsonlSink`) is the record the trainer itself reads back (curves, results,
resume); the other sinks are views of the same rows.

To add a sink: write a class with ``log(row)`` and ``close()`` (the :class:`MetricsSink` protocol) that imports its
package inside ``__init__`` (so that the package stays optional and its absence is reported as one ``ValueError``
naming the package and the config key that turns the sink off), add a ``logging.<name>`` key to
:class:`fastgrpo.train.config.sections.LoggingConfig`, and append the sink in :func:`build_sinks`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import string
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from fastgrpo.train.storage.files import atomic_write_bytes, describe_os_error
from fastgrpo.train.storage.run_dir import RunDir, RunDirError

if TYPE_CHECKING:
    from fastgrpo.train.config.sections import LoggingConfig

__all__ = [
    "WANDB_STATE_FILENAME",
    "JsonlSink",
    "MetricsSink",
    "TensorBoardSink",
    "WandbSink",
    "build_sinks",
]

WANDB_STATE_FILENAME = "wandb_run.json"

_TENSORBOARD_MISSING = (
    "logging.tensorboard=true needs the tensorboard package: pip install tensorboard, or set "
    "logging.tensorboard=false (metrics.jsonl is always written)"
)
_WANDB_MISSING = (
    "logging.wandb=true needs the wandb package: pip install wandb (or the fastgrpo[wandb] extra), or set "
    "logging.wandb=false (metrics.jsonl is always written)"
)
_ID_ALPHABET = string.ascii_lowercase + string.digits


@runtime_checkable
class MetricsSink(Protocol):
    """A destination of metrics rows."""

    def log(self, row: Mapping[str, Any]) -> None:
        """Record one row (a flat mapping with an int ``"step"``)."""
        ...

    def close(self) -> None:
        """Flush and release the destination; calling it twice is harmless."""
        ...


def _scalars(row: Mapping[str, Any], *, bools: bool) -> dict[str, int | float | bool]:
    """The values of ``row`` other than ``step`` that are numbers (and bools when ``bools``); None and anything
    else is left out."""
    out: dict[str, int | float | bool] = {}
    for key, value in row.items():
        if key == "step":
            continue
        if isinstance(value, bool):
            if bools:
                out[key] = value
        elif isinstance(value, int | float):
            out[key] = value
    return out


def _step_of(row: Mapping[str, Any]) -> int:
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"a metrics row needs an int 'step' >= 0: got {step!r}")
    return step


class JsonlSink:
    """``metrics.jsonl`` of ``run_dir``: one JSON line per row, flushed (:meth:`RunDir.log_metrics`); NaN is
    written as ``null`` and infinities as +-1e308. A failed write raises :class:`RunDirError`."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir

    def log(self, row: Mapping[str, Any]) -> None:
        self.run_dir.log_metrics(row)

    def close(self) -> None:
        self.run_dir.close()


class TensorBoardSink:
    """TensorBoard event files in ``log_dir`` (``torch.utils.tensorboard.SummaryWriter``): one scalar per int/float
    value of a row (bools, None and ``step`` are left out) at global step ``row["step"]``, flushed after each row.

    Raises:
        ValueError: the ``tensorboard`` package cannot be imported (the message names ``pip install tensorboard``
            and ``logging.tensorboard=false``).
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(_TENSORBOARD_MISSING) from None
        self.log_dir = Path(log_dir)
        self._writer: Any = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, row: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        step = _step_of(row)
        for key, value in _scalars(row, bools=False).items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbSink:
    """One Weights & Biases run per run directory.

    ``wandb.init`` gets ``project``/``entity``, the run directory's name as the run name, the run id kept in
    ``RUN_DIR/wandb_run.json`` (made on first use: 12 random lowercase letters and digits, so that two run
    directories with the same name never share a W&B run, and a resumed run, which finds the file, continues the
    same W&B run with ``resume="allow"``), ``dir=RUN_DIR`` (W&B writes ``RUN_DIR/wandb/run-*`` or
    ``RUN_DIR/wandb/offline-run-*``) and ``config`` (the resolved config as plain nested data). The mode is W&B's
    own: the ``WANDB_MODE`` environment variable (``online`` by default, ``offline`` to write locally and upload
    later with ``wandb sync RUN_DIR/wandb/offline-run-*``, ``disabled``). The run is created with
    ``reinit="create_new"`` so that a W&B run the calling program already has stays untouched (wandb releases
    without that choice reuse the active run instead).

    :meth:`log` sends the int/float/bool values of a row (None and ``step`` are left out; NaN and infinities are sent
    as they are) at W&B step ``row["step"]``; :meth:`close` finishes the run.

    Resuming: the trainer cuts ``metrics.jsonl`` back to the checkpoint's step and logs the following steps again,
    but W&B already holds those steps from the interrupted process and ignores a step lower than its current one.
    The sink therefore skips, rather than sends, every row whose step W&B already has: below the step W&B reports
    for the resumed run (online mode), below the last step this sink sent in this process, or not above the last
    step sent by an earlier process (recorded in ``wandb_run.json`` after every row, which also covers offline runs,
    where W&B cannot know the earlier history until it is synced). W&B thus keeps the values first logged for the
    repeated steps and continues from the first new step; ``metrics.jsonl`` holds the resumed process's values.
    The first skipped row is reported once through ``log``. The record belongs to one project and entity: after a
    change of ``logging.wandb_project`` or ``logging.wandb_entity`` (allowed on resume) the count starts again.

    Raises:
        ValueError: the ``wandb`` package cannot be imported (the message names ``pip install wandb`` and
            ``logging.wandb=false``), or ``wandb.init`` fails (no network, no or bad API key, invalid project or
            mode): one message with W&B's reason and the fixes (``WANDB_MODE=offline``, ``wandb login``,
            ``logging.wandb=false``). Online, without network, W&B retries for about 90 seconds before failing.
        RunDirError: ``wandb_run.json`` cannot be written.
    """

    def __init__(
        self,
        run_dir: RunDir,
        config: Mapping[str, Any] | None = None,
        *,
        project: str = "fastgrpo",
        entity: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise ValueError(_WANDB_MISSING) from None
        self.run_dir = run_dir
        self.project = project
        self.entity = entity
        self._log_fn = log
        self._state_path = run_dir.path / WANDB_STATE_FILENAME
        state = self._read_state()
        self.run_id: str = state.get("id") or "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
        same_target = state.get("project") == project and state.get("entity") == entity
        last = state.get("last_step") if same_target else None
        self._last_sent: int | None = last if isinstance(last, int) and not isinstance(last, bool) else None
        self._write_state()  # the id must exist on disk before W&B creates the run under it
        try:
            settings = wandb.Settings(reinit="create_new")
        except Exception:  # releases whose reinit is only true/false: their default (reuse an active run) applies
            settings = wandb.Settings()
        try:
            self._run: Any = wandb.init(
                project=project,
                entity=entity,
                name=run_dir.path.name,
                id=self.run_id,
                resume="allow",
                dir=str(run_dir.path),
                config=dict(config or {}),
                settings=settings,
            )
        except Exception as error:  # wandb raises its own error classes, and pydantic ones for bad settings
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"logging.wandb=true could not start the W&B run {self.run_id} (project {project!r}): {reason}. "
                "Log in with `wandb login` (or set WANDB_API_KEY), run offline with WANDB_MODE=offline (upload "
                "later with `wandb sync`), or set logging.wandb=false (metrics.jsonl is always written)"
            ) from None
        # W&B's own view of the next step: after an online resume it is one past the last step it holds
        try:
            resumed_next = int(self._run.step)
        except Exception:  # a disabled run (WANDB_MODE=disabled) need not answer
            resumed_next = 0
        self._floor = max(resumed_next, 0 if self._last_sent is None else self._last_sent + 1)
        self.skipped = 0

    # state file -----------------------------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable or torn: a fresh id is better than refusing to log
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
            return {}
        return data

    def _write_state(self) -> None:
        state = {"id": self.run_id, "project": self.project, "entity": self.entity, "last_step": self._last_sent}
        try:
            atomic_write_bytes(self._state_path, (json.dumps(state) + "\n").encode("utf-8"))
        except OSError as error:
            raise RunDirError(describe_os_error(error, self._state_path, "write")) from None

    # sink -----------------------------------------------------------------------------------------------------

    def log(self, row: Mapping[str, Any]) -> None:
        if self._run is None:
            return
        step = _step_of(row)
        if step < self._floor:
            self.skipped += 1
            if self.skipped == 1:
                self._say(
                    f"W&B run {self.run_id} already holds step {step} (it continues after step {self._floor - 1}); "
                    "repeated steps after a resume go to metrics.jsonl only"
                )
            return
        self._run.log(_scalars(row, bools=True), step=step)
        # W&B merges a second row of the same step into the open one, so an equal step stays allowed here
        self._floor = step
        self._last_sent = step
        self._write_state()

    def close(self) -> None:
        if self._run is not None:
            run, self._run = self._run, None
            run.finish()

    def _say(self, message: str) -> None:
        if self._log_fn is not None:
            self._log_fn(message)
        else:
            print(message, file=sys.stderr, flush=True)


def build_sinks(
    logging_cfg: LoggingConfig,
    run_dir: RunDir,
    config: Mapping[str, Any],
    *,
    log: Callable[[str], None] | None = None,
) -> list[MetricsSink]:
    """The sinks of ``logging_cfg``: :class:`JsonlSink` always, then :class:`TensorBoardSink` into
    ``RUN_DIR/tensorboard`` when ``logging.tensorboard``, then :class:`WandbSink` when ``logging.wandb``.

    ``config`` is the resolved config as plain nested data (``config_to_dict``), sent to W&B; ``log`` receives the
    sinks' one-line notices (stderr when None). Call it on rank 0 only. When a sink cannot be built, the ones
    already built are closed and its ``ValueError`` is raised.
    """
    sinks: list[MetricsSink] = [JsonlSink(run_dir)]
    try:
        if logging_cfg.tensorboard:
            sinks.append(TensorBoardSink(run_dir.path / "tensorboard"))
        if logging_cfg.wandb:
            sinks.append(
                WandbSink(run_dir, config, project=logging_cfg.wandb_project, entity=logging_cfg.wandb_entity, log=log)
            )
    except BaseException:
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.close()
        raise
    return sinks
