"""Reward evaluation in the background, so that the trainer overlaps it with the next rollout (DESIGN step 4).

::

    with AsyncRewardEvaluator(build_reward(cfg), max_pending=2) as rewards:
        batch = RewardBatch.build(sources, edited, instructions, masks)  # inputs checked here
        pending = rewards.submit(batch)                                  # returns at once
        next_rollout = rollout(...)                                      # runs while the batch is scored
        result = pending.result(timeout=600)                             # CompositeResult

One worker thread evaluates the batches in submission order (GPU work of the CLIP reward stays ordered and its
memory bounded; the judge's requests fan out on its own pools). At most ``max_pending`` batches are queued or
running: :meth:`AsyncRewardEvaluator.submit` waits for a slot (up to ``block_timeout_s``, then ``TimeoutError``),
which keeps a trainer that outruns its rewards from piling up images in memory.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fastgrpo.rewards.base import RewardBatch, RewardFunction
from fastgrpo.rewards.composite import CompositeReward

__all__ = ["AsyncRewardEvaluator"]


class AsyncRewardEvaluator:
    """Runs ``reward.evaluate`` (a :class:`CompositeReward` or a single :class:`RewardFunction`) on a worker thread.

    Args:
        reward: what to evaluate; its ``evaluate(batch)`` result is what the futures carry.
        max_pending: batches queued or running at most (>= 1).
        close_reward: whether :meth:`close` also closes ``reward``.
    """

    def __init__(
        self, reward: CompositeReward | RewardFunction, *, max_pending: int = 2, close_reward: bool = True
    ) -> None:
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be an integer >= 1, got {max_pending!r}")
        self.reward, self.max_pending, self._close_reward = reward, max_pending, close_reward
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fastgrpo-reward")
        self._closed = False

    def submit(self, batch: RewardBatch, *, block_timeout_s: float | None = None) -> Future[Any]:
        """Queue ``batch`` (a :class:`RewardBatch` of ``B`` edits, checked when it was built); returns a future.

        The future gives ``reward.evaluate(batch)`` (a :class:`~fastgrpo.rewards.composite.CompositeResult` for a
        composite, a :class:`~fastgrpo.rewards.base.RewardResult` for a single component) or the exception it
        raised. Waits up to ``block_timeout_s`` seconds (``None``: as long as it takes) for one of the
        ``max_pending`` slots.

        Raises:
            ValueError: ``batch`` is not a :class:`RewardBatch` (build one with :meth:`RewardBatch.build`).
            RuntimeError: the evaluator is closed.
            TimeoutError: no slot freed within ``block_timeout_s``.
        """
        if not isinstance(batch, RewardBatch):
            raise ValueError(
                f"AsyncRewardEvaluator.submit takes a RewardBatch, got {type(batch).__name__}; build one with "
                "RewardBatch.build(sources, edited, instructions, masks, captions, specs=...)"
            )
        if self._closed:
            raise RuntimeError("AsyncRewardEvaluator is closed; build a new one")
        if not self._slots.acquire(timeout=block_timeout_s):
            raise TimeoutError(
                f"{self.max_pending} reward batches still pending after {block_timeout_s} s; read their results "
                "before submitting more, or raise max_pending"
            )
        try:
            future = self._pool.submit(self.reward.evaluate, batch)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self, wait: bool = True) -> None:
        """Stop accepting batches; with ``wait``, finish the queued ones first. Closes the reward if asked to."""
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        if self._close_reward:
            self.reward.close()

    def __enter__(self) -> AsyncRewardEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
