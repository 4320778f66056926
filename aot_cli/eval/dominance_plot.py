"""dominance.png: what training changed and whether the positive rewards dominate, with confidence bands.

Four panels, read by columns. Left, before against after: the quantile curves of the margins
(paired data) or of each class's log-likelihood (unpaired), before training (the reference, dashed)
and after (the policy, solid); below them the shift ``Q_after(t) - Q_before(t)``, which stays
readable when the two curves overlap on a wide scale. Right, the implicit rewards: the chosen /
positive against the rejected / negative curves, and below them their difference with the
violations in red and both orders' almost-dominance tests in the title. Every curve carries its
pointwise bootstrap band (:mod:`aot_cli.eval.stats`). One colour per role in every panel: chosen /
positive blue, rejected / negative orange, margins purple; dashed = before, solid = after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from aot_cli.eval.stats import AlmostDominance, BootstrapSettings, Inference

COLORS = {"chosen": "tab:blue", "rejected": "tab:orange", "margin": "tab:purple", "difference": "black",
          "band": "0.55", "violation": "tab:red"}
BEFORE, AFTER = "--", "-"
UNIT = "nats × β"
X_LABEL = "quantile level t (share of examples below the curve)"
# Before and after are said to overlap when they differ by less than this share of the curve's range.
OVERLAP = 0.02


@dataclass(frozen=True)
class PlotLabels:
    """What the title and the footnote name: the run, the data, beta, the bootstrap settings."""

    run: str
    data: str
    beta: float
    settings: BootstrapSettings


def _short(path: str, limit: int = 48) -> str:
    """A path as given, or its last two parts when it is too long for a title."""
    if len(path) <= limit:
        return path
    return ".../" + "/".join(Path(path).parts[-2:])


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _test_line(order: str, test: AlmostDominance, confidence: float) -> str:
    return (f"{order}: ε = {test.ratio:.3f} ({confidence:.0%} upper bound {test.upper:.3f}), "
            f"{_p_text(test.p_value)}")


def _curve(ax, levels: np.ndarray, curve: np.ndarray, band: np.ndarray, *, color: str, style: str, label: str):
    ax.fill_between(levels, band[0], band[1], color=color, alpha=0.18, lw=0)
    ax.plot(levels, curve, style, color=color, lw=1.6, label=label)


def _difference(ax, levels: np.ndarray, inference: Inference, *, color: str, label: str, confidence: float,
                violations: bool) -> None:
    """Q_first - Q_second with its band (both curves from the same resamples); red below 0."""
    diff = inference.q_pos - inference.q_neg
    ax.fill_between(levels, inference.band_diff[0], inference.band_diff[1], color=color, alpha=0.18, lw=0,
                    label=f"{confidence:.0%} bootstrap band of the line below")
    ax.plot(levels, diff, color=color, lw=1.6, label=label)
    if violations:
        ax.fill_between(levels, diff, 0, where=diff < 0, color=COLORS["violation"], alpha=0.4, lw=0,
                        label="violation (difference below 0)")
    ax.axhline(0, color="black", lw=0.8)


def _tests_title(head: str, inference: Inference, confidence: float) -> str:
    return "\n".join((head, _test_line("1st order", inference.first, confidence),
                      _test_line("2nd order", inference.second, confidence)))


def _left_column(top, bottom, shift: dict[str, Inference], *, paired: bool, levels: np.ndarray,
                 confidence: float) -> None:
    """Before (dashed) and after (solid) curves of each role, and each role's shift after - before."""
    overlap = True
    for role, inf in shift.items():
        color = COLORS[{"margin": "margin", "positive": "chosen", "negative": "rejected"}[role]]
        name = "margin" if paired else f"{role} completions"
        _curve(top, levels, inf.q_neg, inf.band_neg, color=color, style=BEFORE, label=f"{name}, before (reference)")
        _curve(top, levels, inf.q_pos, inf.band_pos, color=color, style=AFTER, label=f"{name}, after (policy)")
        _difference(bottom, levels, inf, color=color, label=f"{name}: after − before", confidence=confidence,
                    violations=paired)
        overlap &= bool(np.max(np.abs(inf.q_pos - inf.q_neg)) < OVERLAP * max(np.ptp(inf.q_neg), 1e-12))
    if overlap:
        top.text(0.98, 0.04, "before and after overlap at this scale:\ntheir difference is drawn below",
                 transform=top.transAxes, ha="right", va="bottom", fontsize=8,
                 bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9})
    if paired:
        top.set_title("Preference margins β·log M(chosen)/M(rejected)\n"
                      "M = reference (before training, dashed) or policy (after, solid)")
        top.set_ylabel(f"margin ({UNIT})")
        bottom.set_title(_tests_title("What training changed: Q_after(t) − Q_before(t) of the margins "
                                      "(what paired AOT raises)", shift["margin"], confidence))
    else:
        top.set_title("Log-likelihood β·log M(y) of positive and negative completions\n"
                      "M = reference (before training, dashed) or policy (after, solid)")
        top.set_ylabel(f"β·log M(y) ({UNIT})")
        bottom.set_title("What training changed: Q_after(t) − Q_before(t) of each class\n"
                         "(above 0: the policy scores that class higher than the reference did)")
    bottom.set_ylabel(f"quantile shift ({UNIT})")


def _right_column(top, bottom, rewards: Inference, *, paired: bool, levels: np.ndarray, confidence: float) -> None:
    """Implicit rewards of both classes, and their difference with the violations and the tests."""
    first, second = ("chosen", "rejected") if paired else ("positive", "negative")
    _curve(top, levels, rewards.q_pos, rewards.band_pos, color=COLORS["chosen"], style=AFTER,
           label=f"{first} rewards")
    _curve(top, levels, rewards.q_neg, rewards.band_neg, color=COLORS["rejected"], style=AFTER,
           label=f"{second} rewards")
    top.fill_between(levels, rewards.q_pos, rewards.q_neg, where=rewards.q_pos < rewards.q_neg,
                     color=COLORS["violation"], alpha=0.4, lw=0, label=f"violation ({first} below {second})")
    top.set_title("Implicit rewards r = β·log π(y)/ref(y) (the paper's Figure 1a)\n"
                  + ("paired AOT trains the margins (left column)" if paired else
                     "unpaired AOT trains the positive rewards to dominate the negative ones"))
    top.set_ylabel(f"implicit reward ({UNIT})")
    _difference(bottom, levels, rewards, color=COLORS["difference"], label=f"Q_{first}(t) − Q_{second}(t)",
                confidence=confidence, violations=True)
    bottom.set_title(_tests_title(f"Dominance of the {first} rewards: Q_{first}(t) − Q_{second}(t)", rewards,
                                  confidence))
    bottom.set_ylabel(f"reward difference ({UNIT})")


def _footnote(labels: PlotLabels, paired: bool) -> str:
    s = labels.settings
    resampled = "pairs resampled together" if paired else \
        "positives and negatives resampled independently, each example's before and after together"
    return "\n".join((
        f"Shaded bands: pointwise {s.confidence:.0%} bootstrap intervals ({s.resamples} resamples, {resampled}, "
        f"seed {s.seed}). Red: quantile levels where the first curve is below the second.",
        r"ε: violation ratio $\int (Q_2 - Q_1)_+^2 \,/ \int (Q_1 - Q_2)^2$ (del Barrio et al. 2018) of a first "
        "curve Q1 (chosen / positive; after) over a second Q2 (rejected / negative; before):",
        r"    0 = the first dominates at every level, 0.5 = no order, 1 = reversed; 2nd order: the same on the "
        r"integrated quantiles $\int_0^t Q(s)\,ds$.",
        f"p: one-sided percentile-bootstrap test of H0: ε ≥ ε0 = {s.epsilon:g} (as in Nitsure et al. 2023); "
        f"p below {1 - s.confidence:.2g}: the first almost dominates at the {s.confidence:.0%} level."))


def plot(inference: dict[str, Inference], shift: dict[str, Inference], *, paired: bool, levels: np.ndarray,
         n: int | tuple[int, int], labels: PlotLabels, path: Path) -> None:
    """Write the four panels of the module docstring to `path`. `shift` maps each role ("margin", or
    "positive" and "negative") to its after-vs-before inference; `n` is the pairs, or (positives,
    negatives)."""
    fig = Figure(figsize=(14, 10.5))
    axes = fig.subplots(2, 2, sharex=True)
    _left_column(axes[0, 0], axes[1, 0], shift, paired=paired, levels=levels, confidence=labels.settings.confidence)
    _right_column(axes[0, 1], axes[1, 1], inference["implicit_rewards"], paired=paired, levels=levels,
                  confidence=labels.settings.confidence)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        ax.set_xlim(0, 1)
    for ax in axes[1]:
        ax.set_xlabel(X_LABEL)
    size = f"n = {n} pairs" if paired else f"n = {n[0]} positive + {n[1]} negative completions"
    fig.suptitle(f"aot eval dominance: run {_short(labels.run)}, test split of {_short(labels.data)}, {size}, "
                 f"β = {labels.beta:g}", fontsize=12)
    fig.text(0.01, 0.005, _footnote(labels, paired), fontsize=8, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.075, 1, 0.97))
    fig.savefig(path, dpi=110)
