"""Stochastic-dominance measurements on two samples of scores: pure numpy, no I/O.

AOT asks that the positive scores dominate the negative ones in the first order: at every quantile
level t, ``Q_pos(t) >= Q_neg(t)``. On finite samples we check it at K evenly spaced levels
``t_k = k / (K + 1)``, k = 1..K (the median and the tails alike, never the extreme 0 and 1):

- violation fraction: the share of levels where ``Q_pos(t_k) < Q_neg(t_k)``;
- violation area: the mean over levels of ``max(Q_neg(t_k) - Q_pos(t_k), 0)``, a Riemann sum of
  ``integral_0^1 (Q_neg - Q_pos)_+ dt``, the quantity the AOT loss penalizes (up to its surrogate);
- accuracy: for paired samples the share of pairs with ``pos_i > neg_i``; for unpaired ones the
  probability that a random positive outscores a random negative (ties count half, i.e. the AUC);
- mean difference: ``mean(pos) - mean(neg)`` (the mean margin, for paired samples).
"""

from __future__ import annotations

import numpy as np


def quantile_levels(k: int = 99) -> np.ndarray:
    return np.arange(1, k + 1) / (k + 1)


def quantile_curve(values, levels: np.ndarray) -> np.ndarray:
    """Empirical quantiles (linear interpolation between order statistics)."""
    return np.quantile(np.asarray(values, dtype=np.float64), levels)


def violation_fraction(q_pos: np.ndarray, q_neg: np.ndarray) -> float:
    return float(np.mean(q_pos < q_neg))


def violation_area(q_pos: np.ndarray, q_neg: np.ndarray) -> float:
    return float(np.mean(np.maximum(q_neg - q_pos, 0.0)))


def paired_accuracy(pos, neg) -> float:
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    return float(np.mean(pos > neg) + 0.5 * np.mean(pos == neg))


def unpaired_accuracy(pos, neg) -> float:
    """P(X > Y) + P(X = Y) / 2 for X ~ pos, Y ~ neg, over all couples, in O(n log n)."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.sort(np.asarray(neg, dtype=np.float64))
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(pos) * len(neg)))


def dominance(pos, neg, *, paired: bool, levels: np.ndarray) -> dict:
    """Accuracy, violation fraction, violation area and mean difference of `pos` over `neg`."""
    q_pos, q_neg = quantile_curve(pos, levels), quantile_curve(neg, levels)
    accuracy = paired_accuracy(pos, neg) if paired else unpaired_accuracy(pos, neg)
    return {"accuracy": accuracy, "violation_fraction": violation_fraction(q_pos, q_neg),
            "violation_area": violation_area(q_pos, q_neg),
            "mean_difference": float(np.mean(pos) - np.mean(neg))}
