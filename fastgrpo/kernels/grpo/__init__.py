"""The clipped GRPO objective of SPEC S3, reference in ``naive.py``."""

from fastgrpo.kernels.grpo.api import GRPOStats, grpo_loss

__all__ = ["GRPOStats", "grpo_loss"]
