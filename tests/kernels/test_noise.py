"""In-kernel counter-based noise: reproducible from (seed, offset), fresh per offset, standard normal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from fastgrpo.kernels import noise_state, sde_step
from fastgrpo.kernels.sde import philox

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _philox_numpy(c, k, rounds=10):
    """Philox4x32 in numpy uint64 arithmetic (independent of the torch 16-bit-split version)."""
    c = [np.asarray(x, dtype=np.uint64) for x in c]
    k0, k1 = (np.uint64(x) for x in k)
    m32 = np.uint64(0xFFFFFFFF)
    for _ in range(rounds):
        pb = np.uint64(0xCD9E8D57) * c[2]
        pa = np.uint64(0xD2511F53) * c[0]
        c = [((pb >> np.uint64(32)) ^ c[1] ^ k0) & m32, pb & m32, ((pa >> np.uint64(32)) ^ c[3] ^ k1) & m32, pa & m32]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & m32, (k1 + np.uint64(0xBB67AE85)) & m32
    return c


def test_torch_philox_matches_numpy_and_published_vector():
    # Random123 known-answer test for Philox4x32-10 with counter 0 and key 0.
    zero = torch.zeros((), dtype=torch.int64)
    words = philox.philox4x32(zero, zero, zero, zero, zero, zero)
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    rng = np.random.default_rng(0)
    c = [rng.integers(0, 2**32, size=64, dtype=np.uint64) for _ in range(4)]
    k = [int(x) for x in rng.integers(0, 2**32, size=2, dtype=np.uint64)]
    got = philox.philox4x32(*(torch.from_numpy(x.astype(np.int64)) for x in c), torch.tensor(k[0]), torch.tensor(k[1]))
    for g, w in zip(got, _philox_numpy(c, k), strict=True):
        assert np.array_equal(g.numpy().astype(np.uint64), w)


def _draw(state_or_seed, shape=(3, 5000), backend="triton"):
    x = torch.zeros(shape, device=DEVICE)
    v = torch.zeros(shape, device=DEVICE)
    # with x = v = 0 and t -> t_next the step is x_next = s * eps: recover eps exactly up to rounding
    t, tn = 0.5, 0.25
    x_next, _ = sde_step(x, v, t, tn, noise_level=1.0, t_cap=0.9, seed=state_or_seed, backend=backend)
    s = (t / (1 - t)) ** 0.5 * (t - tn) ** 0.5
    return (x_next / s).cpu()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_kernel_noise_equals_reference_generator(backend):
    eps = _draw((2024, 3), backend=backend)
    want = philox.philox_normal(2024, 3, 3, 5000)
    torch.testing.assert_close(eps, want, rtol=0, atol=2e-5)


def test_same_seed_and_offset_identical_and_state_advances():
    state_a, state_b = noise_state(7, 10, device=DEVICE), noise_state(7, 10, device=DEVICE)
    first = _draw(state_a)
    assert torch.equal(first, _draw(state_b))
    assert state_a.tolist() == [7, 11]
    assert torch.equal(first, _draw((7, 10)))  # the int form gives the same draw
    second = _draw(state_a)
    assert not torch.equal(first, second)
    assert torch.equal(second, _draw((7, 11)))


def test_large_seed_and_offset_use_all_64_bits():
    a = _draw((2**40 + 5, 2**33 + 1))
    assert not torch.equal(a, _draw((5, 2**33 + 1)))
    assert not torch.equal(a, _draw((2**40 + 5, 1)))
    torch.testing.assert_close(a, philox.philox_normal(2**40 + 5, 2**33 + 1, 3, 5000), rtol=0, atol=2e-5)


def test_noise_is_standard_normal_and_independent_across_offsets_samples_elements():
    n = 3 * 16384
    draws = philox.philox_normal(99, 0, 8, n)  # 8 samples; also offsets below
    flat = draws.reshape(-1).double().numpy()
    # moments of 393k normals: |mean| < 5 sd of the estimate, variance, skew, kurtosis
    assert abs(flat.mean()) < 5 / np.sqrt(flat.size)
    assert abs(flat.var() - 1) < 5 * np.sqrt(2 / flat.size)
    assert abs(stats.skew(flat)) < 5 * np.sqrt(6 / flat.size)
    assert abs(stats.kurtosis(flat)) < 5 * np.sqrt(24 / flat.size)
    assert stats.kstest(flat[:100000], "norm").pvalue > 1e-4
    other = philox.philox_normal(99, 1, 8, n).reshape(-1).double().numpy()
    bound = 5 / np.sqrt(flat.size)
    assert abs(np.corrcoef(flat, other)[0, 1]) < bound  # offsets
    assert abs(np.corrcoef(draws[0].numpy(), draws[1].numpy())[0, 1]) < 5 / np.sqrt(n)  # samples
    rows = draws.double().numpy()
    for lag in (1, 1024, 2048, 3072):  # neighbours, and the quarters that share one Philox call
        assert abs(np.corrcoef(rows[:, :-lag].ravel(), rows[:, lag:].ravel())[0, 1]) < 5 / np.sqrt(rows.size)
    # pairs from one Box-Muller transform are independent, not merely uncorrelated: squares uncorrelated too
    q = rows.reshape(8, -1, 4, 1024)
    assert abs(np.corrcoef(q[:, :, 0].ravel() ** 2, q[:, :, 1].ravel() ** 2)[0, 1]) < 5 / np.sqrt(q[:, :, 0].size)
