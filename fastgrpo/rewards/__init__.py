"""fastgrpo.rewards: reward components and their weighted composition (SPEC S2).

- :class:`MLLMJudge`: OpenAI-compatible chat-completions judges (GPT-4o class, vLLM/SGLang serving Qwen2.5-VL),
  three criteria 0-100 → ``[0, 1]``, or expected scores from log-probabilities;
- :class:`ClipReward`: open_clip text alignment + preservation outside the mask + edit direction;
- :class:`RuleReward`: pixel rules of the built-in synthetic task;
- :func:`build_reward` → :class:`CompositeReward`: named components combined by weights, each reported;
- :class:`AsyncRewardEvaluator`: scoring in the background, overlapped with the next rollout;
- :class:`RewardTally`: the scored batches of an iteration or an evaluation reduced to per-sample totals, means
  and failure counts (summed over ranks with one collective).

A batch of ``B`` edits is built and checked once, ``RewardBatch.build(sources, edited, instructions, masks=None,
captions=None, *, specs=None)`` (``ValueError`` naming the bad argument), and everything takes that batch: a
component's ``evaluate(batch) -> RewardResult`` (``score`` float32 ``[B]``, NaN where a sample could not be scored,
its sub-terms and failure reasons), ``CompositeReward.evaluate(batch) -> CompositeResult`` and
``AsyncRewardEvaluator.submit(batch) -> Future``. Importing this package is light: open_clip and httpx are imported
when a component is built.
"""

from fastgrpo.rewards.async_eval import AsyncRewardEvaluator
from fastgrpo.rewards.base import EditCaptions, RewardBatch, RewardFunction, RewardResult
from fastgrpo.rewards.clip import ClipReward, ClipRewardConfig
from fastgrpo.rewards.composite import CompositeResult, CompositeReward
from fastgrpo.rewards.http_client import HttpPolicy
from fastgrpo.rewards.judge import JudgeConfig, JudgeEndpoint, JudgeStats, MLLMJudge
from fastgrpo.rewards.registry import (
    RewardComponentConfig,
    RewardConfig,
    build_component,
    build_reward,
    register_reward,
)
from fastgrpo.rewards.rules import RuleReward, RuleRewardConfig
from fastgrpo.rewards.tally import RewardTally

__all__ = [
    "AsyncRewardEvaluator",
    "ClipReward",
    "ClipRewardConfig",
    "CompositeResult",
    "CompositeReward",
    "EditCaptions",
    "HttpPolicy",
    "JudgeConfig",
    "JudgeEndpoint",
    "JudgeStats",
    "MLLMJudge",
    "RewardBatch",
    "RewardComponentConfig",
    "RewardConfig",
    "RewardFunction",
    "RewardResult",
    "RewardTally",
    "RuleReward",
    "RuleRewardConfig",
    "build_component",
    "build_reward",
    "register_reward",
]
