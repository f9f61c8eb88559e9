"""The error a training run stops with when it cannot go on (the CLI prints its message, no traceback)."""

from __future__ import annotations

__all__ = ["TrainingError"]


class TrainingError(RuntimeError):
    """The run cannot go on (diverged, rewards all failing, inconsistent resume); the message says why and what to
    do."""
