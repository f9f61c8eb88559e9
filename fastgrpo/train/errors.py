"""The errors a training run stops with when it cannot go on (the CLI prints their message, no traceback)."""

from __future__ import annotations

__all__ = ["TrainingError", "TrainingInterrupted"]


class TrainingError(RuntimeError):
    """The run cannot go on (diverged, rewards all failing, inconsistent resume); the message says why and what to
    do."""


class TrainingInterrupted(TrainingError):
    """A second SIGINT/SIGTERM stopped the run at once, without a final checkpoint; the message says which
    checkpoint the same command resumes from. The CLI exits with 130 (128 + SIGINT), as shells expect."""
