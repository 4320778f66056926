"""Dominance measurements on hand-computed samples."""

from __future__ import annotations

import numpy as np
import pytest

from aot_cli.eval.quantiles import (dominance, paired_accuracy, quantile_curve, quantile_levels,
                                    unpaired_accuracy, violation_area, violation_fraction)


def test_levels_and_curve():
    assert np.allclose(quantile_levels(3), [0.25, 0.5, 0.75])
    assert np.allclose(quantile_curve([5, 1, 4, 2, 3], quantile_levels(3)), [2, 3, 4])


def test_violation_fraction_and_area():
    q_pos, q_neg = np.array([0.0, 2.0, 5.0, 1.0]), np.array([1.0, 2.0, 3.0, 4.0])
    assert violation_fraction(q_pos, q_neg) == 0.5                  # levels 1 and 4
    assert violation_area(q_pos, q_neg) == pytest.approx((1 + 3) / 4)
    assert violation_fraction(q_neg + 1, q_neg) == 0.0 and violation_area(q_neg + 1, q_neg) == 0.0


def test_accuracies():
    assert paired_accuracy([1, 2, 3, 4], [0, 2, 5, 1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    # couples (x, y): x=1 beats 0, ties 1 -> 1.5; x=3 beats 0,1,2 -> 3; x=0 ties 0 -> 0.5  => 5 / 9
    assert unpaired_accuracy([1, 3, 0], [0, 1, 2]) == pytest.approx(5 / 9)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=40)
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in x for b in y])
    assert unpaired_accuracy(x, y) == pytest.approx(brute)


def test_dominance_of_a_shifted_sample_and_invariances():
    levels = quantile_levels(9)
    neg = np.arange(10.0)
    d = dominance(neg + 0.5, neg, paired=True, levels=levels)
    assert d == {"accuracy": 1.0, "violation_fraction": 0.0, "violation_area": 0.0, "mean_difference": 0.5}
    flipped = dominance(neg, neg + 0.5, paired=True, levels=levels)
    assert flipped["violation_fraction"] == 1.0 and flipped["violation_area"] == pytest.approx(0.5)
    # unpaired measurements ignore the order of the samples
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1, 1, 30), rng.normal(0, 1, 20)
    a = dominance(pos, neg, paired=False, levels=levels)
    b = dominance(rng.permutation(pos), rng.permutation(neg), paired=False, levels=levels)
    assert a == pytest.approx(b)
