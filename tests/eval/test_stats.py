"""Bootstrap bands and almost-dominance tests: hand-computed values, properties, and their behaviour
on simulated samples (coverage of the bands, power and level of the test)."""

from __future__ import annotations

import time
from dataclasses import replace
from statistics import NormalDist

import numpy as np
import pytest

from aot_cli.eval.quantiles import quantile_levels
from aot_cli.eval.stats import (BootstrapSettings, almost_dominance, bootstrap, integrated_quantiles,
                                method_record, sorted_quantiles, violation_ratio)

LEVELS = quantile_levels()
Z = np.array([NormalDist().inv_cdf(t) for t in LEVELS])   # the standard normal's quantile curve


def test_sorted_quantiles_are_numpys():
    rows = np.sort(np.random.default_rng(0).normal(size=(5, 37)), axis=1)
    assert np.allclose(sorted_quantiles(rows, LEVELS), np.quantile(rows, LEVELS, axis=1).T)
    assert np.allclose(sorted_quantiles(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 1 / 3])), [2.5, 2.0])


def test_integrated_quantiles_by_hand_and_by_riemann_sum():
    # sorted [1, 2, 3]: Q(s) = 1 on (0, 1/3], 2 on (1/3, 2/3], 3 on (2/3, 1]
    assert np.allclose(integrated_quantiles(np.array([1.0, 2.0, 3.0]), np.array([1 / 3, 0.5, 2 / 3, 1.0])),
                       [1 / 3, 1 / 3 + 2 / 6, 1.0, 2.0])
    x = np.sort(np.random.default_rng(1).normal(size=11))
    s = (np.arange(200_000) + 0.5) / 200_000           # a fine midpoint rule on the step quantile function
    step = x[np.ceil(11 * s).astype(int) - 1]
    riemann = np.array([step[s < t].sum() / len(s) for t in (0.1, 0.45, 0.9)])
    assert np.allclose(integrated_quantiles(x, np.array([0.1, 0.45, 0.9])), riemann, atol=1e-4)


def test_violation_ratio_by_hand_and_its_symmetry():
    pos, neg = np.array([0.0, 2.0, 5.0, 1.0]), np.array([1.0, 2.0, 3.0, 4.0])
    # gaps pos - neg: -1, 0, 2, -3: wrong side 1 + 9 of a total 1 + 4 + 9
    assert violation_ratio(pos, neg) == pytest.approx(10 / 14)
    assert violation_ratio(neg, pos) == pytest.approx(4 / 14)          # eps(a, b) + eps(b, a) = 1
    assert violation_ratio(neg + 1, neg) == 0.0 and violation_ratio(neg, neg + 1) == 1.0
    assert violation_ratio(neg, neg) == 0.5                            # no gap: no order
    rows = np.stack([pos, neg, neg + 1])
    assert np.allclose(violation_ratio(rows, neg), [10 / 14, 0.5, 0.0])   # along the last axis


def test_almost_dominance_by_hand():
    resampled = np.array([0.05, 0.1, 0.15, 0.25])
    test = almost_dominance(0.1, resampled, epsilon=0.2, confidence=0.75)
    assert test.ratio == 0.1
    assert test.p_value == pytest.approx((1 + 1) / (4 + 1))             # one resample at or above 0.2
    assert test.upper == pytest.approx(np.quantile(resampled, 0.75))  # 0.175
    assert almost_dominance(0.0, np.zeros(999), epsilon=0.2, confidence=0.95).p_value == pytest.approx(1 / 1000)
    assert almost_dominance(0.5, np.full(9, 0.5), epsilon=0.2, confidence=0.95).p_value == 1.0


@pytest.mark.parametrize("paired", [True, False])
def test_a_clearly_dominating_sample_gets_a_small_p_value(paired):
    rng = np.random.default_rng(2)
    neg = rng.normal(0, 1, 300)
    pos = neg + 1 if paired else rng.normal(1, 1, 300)
    inf = bootstrap(pos, neg, paired=paired, levels=LEVELS, settings=BootstrapSettings())
    assert inf.first.ratio < 0.01 and inf.second.ratio < 0.01
    assert inf.first.p_value < 0.01 and inf.second.p_value < 0.01 and inf.first.upper < 0.2
    reverse = bootstrap(neg, pos, paired=paired, levels=LEVELS, settings=BootstrapSettings())
    assert reverse.first.ratio > 0.99 and reverse.first.p_value == 1.0 and reverse.second.p_value == 1.0


@pytest.mark.parametrize("paired", [True, False])
def test_identical_samples_do_not_dominate(paired):
    x = np.random.default_rng(3).normal(size=200)
    inf = bootstrap(x, x, paired=paired, levels=LEVELS, settings=BootstrapSettings())
    assert inf.first.ratio == 0.5 and inf.second.ratio == 0.5
    assert inf.first.p_value > 0.5 and inf.second.p_value > 0.5
    assert np.array_equal(inf.q_pos, inf.q_neg)
    if paired:   # every resample draws the same pairs on both sides: the difference is exactly 0
        assert inf.first.p_value == 1.0 and not inf.band_diff.any()


def test_bootstrap_is_deterministic_for_a_seed_and_cheap():
    rng = np.random.default_rng(4)
    pos, neg = rng.normal(0.2, 1, 300), rng.normal(0, 1, 250)
    settings = BootstrapSettings(seed=7)
    start = time.perf_counter()
    a = bootstrap(pos, neg, paired=False, levels=LEVELS, settings=settings)
    elapsed = time.perf_counter() - start
    b = bootstrap(pos, neg, paired=False, levels=LEVELS, settings=settings)
    c = bootstrap(pos, neg, paired=False, levels=LEVELS, settings=BootstrapSettings(seed=8))
    assert a.first == b.first and a.second == b.second and np.array_equal(a.band_diff, b.band_diff)
    assert not np.array_equal(a.band_diff, c.band_diff)
    assert np.allclose(a.q_pos, np.quantile(pos, LEVELS)) and np.allclose(a.q_neg, np.quantile(neg, LEVELS))
    assert elapsed < 1.0, f"1000 resamples of 300 + 250 values took {elapsed:.2f} s"
    # blocks of resamples (bounded memory) give the same numbers as one block
    small = bootstrap(pos, neg, paired=False, levels=LEVELS, settings=settings, block_values=10_000)
    assert small.first == a.first and np.array_equal(small.band_pos, a.band_pos)


def test_paired_samples_must_have_equal_sizes():
    with pytest.raises(ValueError, match="equal sizes, got 3 and 2"):
        bootstrap([1, 2, 3], [1, 2], paired=True, levels=LEVELS, settings=BootstrapSettings())


def test_bands_cover_the_population_quantiles_at_about_the_stated_rate():
    """Normal samples: the pointwise 90 % bands of each curve and of the difference cover the
    population curve at levels 0.1 to 0.9 about 90 % of the time."""
    rng = np.random.default_rng(5)
    middle = (LEVELS >= 0.1) & (LEVELS <= 0.9)
    settings = BootstrapSettings(resamples=300, confidence=0.9)
    covered, covered_diff = [], []
    for seed in range(60):
        pos, neg = rng.normal(0.5, 2.0, 150), rng.normal(0.0, 1.0, 150)
        inf = bootstrap(pos, neg, paired=False, levels=LEVELS, settings=replace(settings, seed=seed))
        truth, truth_diff = 0.5 + 2.0 * Z, 0.5 + Z
        covered.append(((inf.band_pos[0] <= truth) & (truth <= inf.band_pos[1]))[middle])
        covered_diff.append(((inf.band_diff[0] <= truth_diff) & (truth_diff <= inf.band_diff[1]))[middle])
    assert 0.85 <= np.mean(covered) <= 0.95
    assert 0.85 <= np.mean(covered_diff) <= 0.95


def test_the_estimate_converges_to_the_population_ratio():
    """N(0.4, 2) against N(0, 1): the curves cross; the population ratio on the same levels."""
    rng = np.random.default_rng(6)
    pos, neg = rng.normal(0.4, 2.0, 20_000), rng.normal(0.0, 1.0, 20_000)
    inf = bootstrap(pos, neg, paired=False, levels=LEVELS, settings=BootstrapSettings(resamples=20))
    population = float(violation_ratio(0.4 + 2.0 * Z, Z))
    assert population == pytest.approx(0.2, abs=0.01)
    assert inf.first.ratio == pytest.approx(population, abs=0.02)       # its standard error here is about 0.01


@pytest.mark.slow
@pytest.mark.parametrize(("order", "paired"), [(1, False), (2, True)])
def test_the_test_holds_its_level_at_the_boundary(order, paired):
    """Populations whose violation ratio is exactly eps0 = 0.2: H0 holds (at its boundary), so a 5 %
    test rejects about 5 % of the time (Monte Carlo standard error 1.5 points at 200 repetitions)."""
    phi = np.array([NormalDist().pdf(v) for v in Z])

    def population(mu):       # 2nd order: integral_0^t (mu + 2 z(s)) ds = mu t - 2 phi(z(t))
        return float(violation_ratio(mu + 2 * Z, Z) if order == 1 else violation_ratio(mu * LEVELS - 2 * phi, -phi))

    low, high = -5.0, 5.0
    for _ in range(60):       # the population ratio falls as mu grows: bisect for 0.2
        mid = (low + high) / 2
        low, high = (mid, high) if population(mid) > 0.2 else (low, mid)
    mu = (low + high) / 2
    rng = np.random.default_rng(order)
    rejected = 0
    for seed in range(200):
        shared = rng.normal(size=200)          # paired: a prompt effect both sides share
        neg = 0.6 * shared + 0.8 * rng.normal(size=200) if paired else rng.normal(size=200)
        noise = 0.6 * shared + 0.8 * rng.normal(size=200) if paired else rng.normal(size=200)
        inf = bootstrap(mu + 2 * noise, neg, paired=paired, levels=LEVELS,
                        settings=BootstrapSettings(resamples=400, seed=seed))
        rejected += (inf.first if order == 1 else inf.second).p_value <= 0.05
    assert 0.01 <= rejected / 200 <= 0.10


def test_method_record():
    record = method_record(BootstrapSettings(resamples=500, confidence=0.9, epsilon=0.3, seed=2), paired=True)
    assert {k: record[k] for k in ("resamples", "confidence", "epsilon", "seed")} == \
        {"resamples": 500, "confidence": 0.9, "epsilon": 0.3, "seed": 2}
    assert record["resampling"] == "pairs (chosen and rejected together)" and "percentile" in record["method"]
