"""Checkpoints of a run's components: each stateful part (the policy, the loop's counters, every rank's random
generators) saves and restores itself through ``state_dict`` / ``load_state_dict``; the checkpointer files them
with :class:`~fastgrpo.train.storage.checkpoints.CheckpointManager` (atomic, multi-rank) under their names.

Layout of ``shared.safetensors``: ``{name: component.state_dict() for the shared components, "config": the resolved
config}``; of ``rank-XXXXX.safetensors``: ``{name: component.state_dict() for the per-rank components}`` (plain
data and tensors, :mod:`~fastgrpo.train.storage.state_files`: nothing is unpickled).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from fastgrpo.train.storage.checkpoints import CheckpointError, CheckpointManager, LoadedCheckpoint

__all__ = ["Checkpointer", "Stateful"]


class Stateful(Protocol):
    """A part of a run that a checkpoint saves and restores."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class Checkpointer:
    """Saves and restores ``shared`` components (one copy, written by rank 0) and ``per_rank`` components (one copy
    per rank) with ``manager``.

    Args:
        manager: the run's checkpoint directory.
        shared: name -> component whose state is the same on every rank (computed on every rank: a component may
            gather shards in its ``state_dict``, a collective).
        per_rank: name -> component whose state differs by rank.
        config: the resolved config as plain data, saved beside the shared state.
    """

    def __init__(
        self,
        manager: CheckpointManager,
        *,
        shared: Mapping[str, Stateful],
        per_rank: Mapping[str, Stateful],
        config: Mapping[str, Any],
    ) -> None:
        reserved = set(shared) & ({"config"} | set(per_rank))
        if reserved:
            raise ValueError(f"component names {sorted(reserved)} are taken; name each component once, not 'config'")
        self.manager, self.shared, self.per_rank, self.config = manager, dict(shared), dict(per_rank), dict(config)

    def save(self, step: int, extra_writer: Callable[[Path], None] | None = None) -> Path:
        """Write the checkpoint of ``step`` on every rank (see :meth:`CheckpointManager.save`); ``extra_writer``
        adds files on rank 0 (the LoRA in the diffusers format). Raises
        :class:`~fastgrpo.train.storage.checkpoints.CheckpointError` when it cannot be written."""
        shared = {name: part.state_dict() for name, part in self.shared.items()}
        shared["config"] = self.config
        per_rank = {name: part.state_dict() for name, part in self.per_rank.items()}
        return self.manager.save(step, shared, per_rank, extra_writer=extra_writer)

    def restore_latest(self) -> LoadedCheckpoint | None:
        """Load the newest complete checkpoint into the components; None (nothing changed) when there is none.

        Raises :class:`~fastgrpo.train.storage.checkpoints.CheckpointError` for a checkpoint that lacks a component
        or does not fit it (another LoRA rank or target modules), naming the checkpoint.
        """
        loaded = self.manager.load(None)
        if loaded is None:
            return None
        for states, parts in ((loaded.shared, self.shared), (loaded.rank_state, self.per_rank)):
            missing = sorted(set(parts) - set(states))
            if missing:
                raise CheckpointError(
                    f"checkpoint {loaded.path} has no state for {missing}: it was written by another version of "
                    "fastgrpo; resume with that version, or start a fresh run (another logging.run_name)"
                )
            for name, part in parts.items():
                try:
                    part.load_state_dict(states[name])
                except (ValueError, KeyError) as error:
                    raise CheckpointError(
                        f"checkpoint {loaded.path} does not fit this run ({name}: {error}); resume with the settings "
                        "it was written with, or start a fresh run (another logging.run_name)"
                    ) from None
        return loaded
