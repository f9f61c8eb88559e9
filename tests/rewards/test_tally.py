"""RewardTally: per-sample totals, per-name sums, counts, means and failures of scored batches, over ranks."""

from __future__ import annotations

import math

import pytest
import torch

from fastgrpo.core.containers import RewardBreakdown
from fastgrpo.rewards import CompositeResult, RewardTally

NAN, INF = float("nan"), float("inf")


def composite(components: dict[str, torch.Tensor], weights: dict[str, float]) -> CompositeResult:
    return CompositeResult(RewardBreakdown(components, weights).validate())


def four_samples() -> CompositeResult:
    """Components of mixed dtypes with one NaN each in judge and clip; fidelity is logged only."""
    components = {
        "judge": torch.tensor([0.8, NAN, 0.5, 0.1]),
        "clip": torch.tensor([0.3, 0.2, NAN, 0.4], dtype=torch.float64),
        "fidelity": torch.tensor([1.0, 0.0, 0.5, 0.25]),
    }
    return composite(components, {"judge": 0.7, "clip": 0.3, "fidelity": 0.0})


def scored(seed: int, size: int) -> CompositeResult:
    """Random float32 scores with NaN and inf samples, a sub-term and a component that never scores."""
    generator = torch.Generator().manual_seed(seed)
    judge = torch.rand(size, generator=generator)
    clip = torch.rand(size, generator=generator) * 3 - 1
    judge[seed % 3 :: 3] = NAN
    clip[1::4] = INF
    components = {
        "judge": judge,
        "judge.preservation": judge.sqrt(),
        "clip": clip,
        "broken": torch.full((size,), NAN),
    }
    return composite(components, {"judge": 1.0, "judge.preservation": 0.0, "clip": 0.5, "broken": 0.0})


def trainer_totals(results: list[CompositeResult | None], chunk: int) -> torch.Tensor:
    """The per-sample rewards as the trainer built them before the tally."""
    totals = []
    for result in results:
        totals.append(torch.full((chunk,), float("nan")) if result is None else result.total().float().cpu())
    return torch.cat(totals)


def evaluation_sums_counts(results: list[CompositeResult]) -> tuple[dict[str, float], dict[str, float]]:
    """The per-name sums and counts as the evaluation accumulated them before the tally."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for result in results:
        values = {"total": result.total(), **result.breakdown.components}
        for name, value in values.items():
            finite = torch.isfinite(value)
            sums[name] = sums.get(name, 0.0) + float(torch.where(finite, value, 0.0).sum())
            counts[name] = counts.get(name, 0.0) + float(finite.sum())
    return sums, counts


def bits(values: torch.Tensor) -> torch.Tensor:
    return values.view(torch.int32)


def test_totals_with_a_failed_batch_match_the_trainer_bit_for_bit() -> None:
    results = [scored(0, 8), None, scored(1, 8), scored(2, 8)]
    tally = RewardTally()
    for result in results:
        tally.add(result, 8)
    totals = tally.totals()
    assert totals.dtype == torch.float32 and totals.device.type == "cpu" and totals.shape == (32,)
    assert torch.equal(bits(totals), bits(trainer_totals(results, 8)))
    assert torch.isnan(totals[8:16]).all() and tally.size == 32
    assert torch.isfinite(totals[:8]).any()


def test_means_and_counts_over_batches_match_the_evaluation() -> None:
    results = [scored(seed, size) for seed, size in ((3, 7), (4, 16), (5, 5))]
    tally = RewardTally()
    tally.add(results[0], 7)
    tally.add(None, 6)  # a batch whose evaluation failed adds nothing to the sums and counts
    tally.add(results[1], 16)
    tally.add(results[2], 5)
    sums, counts = evaluation_sums_counts(results)
    assert tally.names == sorted(sums) == ["broken", "clip", "judge", "judge.preservation", "total"]
    assert tally.sums() == sums and tally.counts() == counts  # exact: the same float64 additions in one order
    means = tally.means()
    assert all(means[n] == sums[n] / counts[n] for n in sums if n != "broken")
    assert math.isnan(means["broken"]) and tally.counts()["broken"] == 0.0
    judge = torch.cat([r.breakdown.components["judge"] for r in results])
    finite = judge[torch.isfinite(judge)].double()
    assert means["judge"] == pytest.approx(float(finite.mean()), rel=1e-6)
    assert counts["judge"] == finite.numel()
    assert counts["clip"] == 28 - 7  # 7 + 16 + 5 samples, inf at 1, 5 / 1, 5, 9, 13 / 1


def test_means_and_failures_of_one_batch() -> None:
    tally = RewardTally()
    tally.add(four_samples(), 4)
    means = tally.means()
    assert means["judge"] == pytest.approx(1.4 / 3) and means["fidelity"] == pytest.approx(1.75 / 4)
    assert means["clip"] == pytest.approx(0.9 / 3) and means["total"] == pytest.approx((0.65 + 0.19) / 2)
    assert tally.failed() == {"clip": 1, "fidelity": 0, "judge": 1, "total": 2}
    assert set(means) == set(tally.sums()) == set(tally.counts()) == {"judge", "clip", "fidelity", "total"}


def test_failed_counts_whole_failed_batches_for_every_name() -> None:
    tally = RewardTally()
    tally.add(None, 5)  # before any name is known: still counted for every name
    tally.add(four_samples(), 4)
    tally.add(None, 3)
    assert tally.failed() == {"clip": 1 + 8, "fidelity": 0 + 8, "judge": 1 + 8, "total": 2 + 8}
    assert tally.counts() == {"clip": 3.0, "fidelity": 4.0, "judge": 3.0, "total": 2.0}
    assert tally.size == 12 and tally.totals().shape == (12,)


def test_all_reduce_over_two_identical_ranks() -> None:
    results = [scored(6, 9), scored(7, 4)]
    tally = RewardTally()
    tally.add(results[0], 9)
    tally.add(None, 4)
    tally.add(results[1], 4)
    before = {"sums": tally.sums(), "counts": tally.counts(), "means": tally.means(), "failed": tally.failed(),
              "stderrs": tally.stderrs()}  # fmt: skip
    totals = tally.totals()
    sent: list[torch.Tensor] = []

    def two_ranks(packed: torch.Tensor) -> torch.Tensor:
        sent.append(packed.clone())
        return packed * 2  # the same tally on the other rank

    tally.all_reduce(two_ranks)
    names = sorted(before["sums"])
    packed, squares = sent  # the sums and counts first (as the evaluation always packed them), then the squares
    assert squares.shape == (len(names),)
    layout = [before["sums"][n] for n in names] + [before["counts"][n] for n in names]  # as the evaluation packs
    assert packed.dtype == torch.float64 and torch.equal(packed, torch.tensor(layout, dtype=torch.float64))
    assert tally.sums() == {n: 2 * v for n, v in before["sums"].items()}
    assert tally.counts() == {n: 2 * v for n, v in before["counts"].items()}
    means = tally.means()
    assert math.isnan(means.pop("broken")) and math.isnan(before["means"].pop("broken"))
    assert means == before["means"]
    for name, error in tally.stderrs().items():  # twice the samples, the same spread: the error shrinks by sqrt(2)
        if not math.isnan(before["stderrs"][name]):
            assert error == pytest.approx(before["stderrs"][name] / math.sqrt(2))
    assert tally.failed() == before["failed"] and torch.equal(bits(tally.totals()), bits(totals))  # this rank's
    with pytest.raises(RuntimeError, match="already called"):
        tally.all_reduce(two_ranks)
    with pytest.raises(RuntimeError, match="after all_reduce"):
        tally.add(None, 1)


def test_bad_input_names_the_problem() -> None:
    tally = RewardTally()
    for size in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="size must be an integer"):
            tally.add(None, size)
    with pytest.raises(ValueError, match="holds 4 samples but size is 3"):
        tally.add(four_samples(), 3)
    with pytest.raises(ValueError, match="CompositeResult or None"):
        tally.add(four_samples().breakdown, 4)  # type: ignore[arg-type]
    assert tally.totals().shape == (0,) and tally.means() == {} and tally.failed() == {}
    with pytest.raises(ValueError, match="without a scored batch"):
        tally.all_reduce(lambda t: t)
    tally.add(four_samples(), 4)
    with pytest.raises(ValueError, match="reward names"):
        tally.add(scored(0, 4), 4)
    with pytest.raises(ValueError, match="shape"):
        tally.all_reduce(lambda t: t[:1])


def test_standard_errors_and_per_sample_values_follow_the_batches() -> None:
    tally = RewardTally()
    first, second = scored(6, 3), scored(7, 4)
    tally.add(first, 3)
    tally.add(None, 2)
    tally.add(second, 4)
    total = torch.cat([first.total(), torch.full((2,), math.nan), second.total()])
    torch.testing.assert_close(tally.values("total"), total, equal_nan=True)
    finite = total[torch.isfinite(total)].double()
    expected = float(finite.std(unbiased=False) / math.sqrt(finite.numel()))
    assert tally.stderrs()["total"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(KeyError, match="no batch had"):
        tally.values("nothing")
