"""Base-vs-trained report: variants of one model edited on the same held-out conditions, scored, compared.

A *variant* is ``(label, context[, weights])``: ``context()`` is a context manager that puts the model's weights
into that variant while it is open (``("base", model.reference)``, ``("trained", policy.ema_weights)``, or a
context that loads a LoRA file); ``weights`` says in words what they are (it goes into ``report.json``). Every
variant edits the same conditions with :func:`~fastgrpo.train.evaluate.edit_conditions` (ODE, ``eval_steps``,
the same ``seed``, so condition ``i`` starts from the same noise in every variant) and every reward given scores
the edits (``{"train": CompositeReward, "gold": CompositeReward}``; any names, in the order given).

- :func:`compare_variants` runs the edits and keeps, per variant, reward and component (``"total"``, each
  component and each ``{component}.{term}`` sub-term), the ``[n]`` per-condition scores (float64, NaN where not
  scored) and the ``uint8 [H, W, 3]`` edits of the first ``rows`` conditions only.
- :class:`Comparison` holds them and answers :meth:`Comparison.stats` (mean and standard error over the
  conditions, per variant), :meth:`Comparison.differences` (for every variant but the first, the baseline: the
  *paired* difference ``score_variant - score_baseline`` per condition, its mean and standard error, conditions
  where either score is NaN left out) and :meth:`Comparison.markdown`.
- :func:`write_report` writes, atomically, into a directory: ``report.png`` (one row per shown condition: the
  instruction above ``source | baseline | each other variant``, each tile captioned with the total of every reward
  and its components in small text), ``report.json`` (every figure, the per-condition scores, the labels, the
  reward names, the number of conditions, ``eval_steps``, the seed and each variant's weights; NaN is written as
  ``null``) and ``report.md`` (one table per reward: rows = ``total`` then the components, columns = each
  variant's mean ± SE and each difference ± SE). With ``rows == 0`` no ``report.png`` is written.
- :func:`write_run_report` is both in one call, for the end of a training run; :func:`run_compare` is
  ``fastgrpo compare`` (base model vs LoRA directories).

Standard errors use the population variance, as :meth:`~fastgrpo.rewards.tally.RewardTally.stderrs` does (so the
baseline's figures equal those of ``fastgrpo eval``): ``SE = std(x, ddof=0) / sqrt(n)`` over the ``n`` finite
values, NaN for ``n < 2``; the difference's SE is the same formula applied to the per-condition differences.

One process only: the edits are not split over ranks, and several ranks (``dist.active``) are refused with a
``ValueError`` (under FSDP every rank would have to take part in each forward, so rank 0 alone cannot run it).
"""

from fastgrpo.train.report.command import run_compare
from fastgrpo.train.report.comparison import (
    TOTAL,
    Comparison,
    ShownCondition,
    Stat,
    Variant,
    compare_variants,
    mean_se,
    paired_difference,
)
from fastgrpo.train.report.render import (
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    render_report_png,
    report_grid_size,
    write_report,
    write_run_report,
)

__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "REPORT_PNG",
    "TOTAL",
    "Comparison",
    "ShownCondition",
    "Stat",
    "Variant",
    "compare_variants",
    "mean_se",
    "paired_difference",
    "render_report_png",
    "report_grid_size",
    "run_compare",
    "write_report",
    "write_run_report",
]
