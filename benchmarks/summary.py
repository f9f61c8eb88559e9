"""Session-wide store of benchmark medians: speedups against the Flow-GRPO eager baseline and the JSON summary.

Summary layout (``FASTGRPO_BENCH_SUMMARY``)::

    {"meta": {device, device_name, torch, triton, cuda, commit, size},
     "cases": {"<case>/<mode>/<dtype>/B<batch>": {"<provider>": {"median_s", "gbps", "frac_peak",
                                                                  "speedup_vs_flow_grpo_eager", ...}}}}

``speedup_vs_flow_grpo_eager`` is baseline median / provider median (> 1: faster than the baseline); it is
present only where both ran with timing. The file is rewritten after every benchmark, so a run cut short by a
time limit still leaves what it measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

BASELINE = "flow_grpo_eager"
PROVIDERS = (BASELINE, "torch_ref", "compiled_ref", "fused", "cuda")  # display order
SPEEDUP = f"speedup_vs_{BASELINE}"
SUMMARY_FIELDS = ("median_s", "p20_s", "p80_s", "gbps", "frac_peak", "peak_mem_bytes", "compile_s")
# Rates of the reward benchmarks (bench_rewards.py): the judge client and the CLIP reward.
SUMMARY_FIELDS += ("requests_per_s", "overhead_per_request_s", "images_per_s")
# End-to-end iterations (bench_train_step.py): utilisation, memory, the main phases and the warm-up iteration.
SUMMARY_FIELDS += ("mfu", "peak_mem_gib", "first_iteration_s", "phase_rollout_s", "phase_reward_s", "phase_update_s")
SUMMARY_FIELDS += ("phase_optimizer_s",)


class ResultStore:
    """Records per (case key, provider); keeps each record's pytest-benchmark ``extra_info`` in step."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.meta: dict[str, object] = {}
        self.cases: dict[str, dict[str, dict[str, object]]] = {}
        self._extra_info: dict[tuple[str, str], dict[str, object]] = {}

    def add(self, key: str, provider: str, extra_info: dict[str, object]) -> None:
        """Record a finished benchmark (its ``extra_info``, which later speedups are written into too)."""
        record = {name: extra_info[name] for name in SUMMARY_FIELDS if extra_info.get(name) is not None}
        self.cases.setdefault(key, {})[provider] = record
        self._extra_info[(key, provider)] = extra_info
        self._update_speedups(key)
        self.write()

    def _update_speedups(self, key: str) -> None:
        base = self.cases[key].get(BASELINE, {}).get("median_s")
        if base is None:
            return
        for provider, record in self.cases[key].items():
            median = record.get("median_s")
            if median:
                record[SPEEDUP] = base / median
                self._extra_info[(key, provider)][SPEEDUP] = record[SPEEDUP]

    def as_json(self) -> dict[str, object]:
        return {"meta": self.meta, "cases": self.cases}

    def write(self) -> None:
        """Rewrite the summary file atomically (no-op without a path)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.as_json(), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def table(self, providers: tuple[str, ...] = PROVIDERS) -> list[str]:
        """Terminal lines: median milliseconds per provider, with the speedup against the baseline in brackets.

        Providers recorded but not in ``providers`` (such as the reward benchmarks') get columns after them."""
        if not self.cases:
            return []
        seen = sorted({p for case in self.cases.values() for p in case if p not in providers})
        providers = (*providers, *seen)
        width = max(len(k) for k in self.cases) + 2
        lines = ["case".ljust(width) + "".join(p.rjust(22) for p in providers)]
        for key in sorted(self.cases):
            cells = []
            for provider in providers:
                record = self.cases[key].get(provider, {})
                median = record.get("median_s")
                cell = "-" if median is None else f"{median * 1e3:.3f} ms"
                if median is not None and provider != BASELINE and SPEEDUP in record:
                    cell += f" [{record[SPEEDUP]:.2f}x]"
                cells.append(cell.rjust(22))
            lines.append(key.ljust(width) + "".join(cells))
        return lines


STORE = pytest.StashKey[ResultStore]()
