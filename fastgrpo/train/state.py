"""The loop's own state: the iteration counter, the streak of iterations whose rewards all failed, and this rank's
random generators. Both are saved in checkpoints (``state_dict`` / ``load_state_dict``): :class:`TrainState` once
for all ranks, :class:`RNGState` per rank.

Everything random in an iteration is keyed by ``(seed, iteration, ...)`` through :func:`mix_seed`, or restored from
:class:`RNGState`, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastgrpo.train.errors import TrainingError

__all__ = ["RNGState", "TrainState", "mix_seed"]

_M63 = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style mixing), so nearby inputs give unrelated streams."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return value & _M63


@dataclass
class TrainState:
    """Counters of the loop.

    Attributes:
        step: iterations done (the next iteration is ``step``, 0-based).
        reward_failures_in_row: iterations in a row in which every reward failed.
    """

    step: int = 0
    reward_failures_in_row: int = 0

    def note_rewards(self, failed: int, total: int, *, limit: int, components: Sequence[str] = ()) -> None:
        """Count the iteration's failed rewards (``failed`` of ``total``, over all ranks); raise
        :class:`~fastgrpo.train.errors.TrainingError` when every reward failed in ``limit`` iterations in a row
        (``components``: the configured reward components, named in the message)."""
        if failed < total:
            self.reward_failures_in_row = 0
            return
        self.reward_failures_in_row += 1
        if self.reward_failures_in_row >= limit:
            raise TrainingError(
                f"every reward failed in {self.reward_failures_in_row} iterations in a row (last: {self.step + 1}); "
                f"check rewards.components ({', '.join(components) or 'none'}): a judge server down or unreachable, "
                "a missing model file? The warnings above give each component's reasons"
            )

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "reward_failures_in_row": self.reward_failures_in_row}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.reward_failures_in_row = int(state["reward_failures_in_row"])


class RNGState:
    """This rank's random generators (torch's CPU and, on CUDA, device generator, numpy's, Python's)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)
