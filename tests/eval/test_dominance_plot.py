"""dominance.png is readable on its own: the title names the run, data and n, every axis is labelled
with its unit, one colour per role in every panel, before and after told apart."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from aot_cli.eval.dominance import compare, training_shift
from aot_cli.eval.dominance_plot import COLORS, PlotLabels, plot
from aot_cli.eval.quantiles import quantile_levels
from aot_cli.eval.stats import BootstrapSettings

LEVELS = quantile_levels()
SETTINGS = BootstrapSettings(resamples=100, seed=3)


@pytest.fixture
def figures(monkeypatch):
    """The figures saved during a test (the PNG is still written)."""
    saved = []
    original = Figure.savefig

    def keep(self, path, **kwargs):
        saved.append(self)
        return original(self, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def _logps(paired: bool, n: int = 40) -> dict:
    rng = np.random.default_rng(0)
    if paired:
        ref_c, ref_r = rng.normal(-50, 20, n), rng.normal(-55, 20, n)
        return {"ref_chosen": ref_c, "ref_rejected": ref_r, "policy_chosen": ref_c + rng.normal(1, 0.5, n),
                "policy_rejected": ref_r - rng.normal(1, 0.5, n)}
    ref = rng.normal(-50, 20, n)
    label = np.arange(n) % 2 == 0
    return {"ref": ref, "policy": ref + np.where(label, 1.0, -1.0) + rng.normal(0, 0.3, n), "label": label}


def _draw(paired: bool, path) -> None:
    logps = _logps(paired)
    _, inference = compare(logps, paired=paired, beta=0.1, levels=LEVELS, settings=SETTINGS)
    shift = training_shift(logps, inference, paired=paired, beta=0.1, levels=LEVELS, settings=SETTINGS)
    n = 40 if paired else (20, 20)
    plot(inference, shift, paired=paired, levels=LEVELS, n=n, path=path,
         labels=PlotLabels(run="runs/uf-aot", data="data/uf", beta=0.1, settings=SETTINGS))


def _line_colors(ax) -> dict[str, str]:
    return {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


@pytest.mark.parametrize("paired", [True, False])
def test_dominance_png_is_labelled(paired, figures, tmp_path):
    _draw(paired, tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    title = fig.get_suptitle()
    assert "run runs/uf-aot" in title and "data/uf" in title and "β = 0.1" in title
    assert ("n = 40 pairs" if paired else "n = 20 positive + 20 negative completions") in title
    axes = fig.axes
    assert len(axes) == 4
    for ax in axes:
        assert "nats × β" in ax.get_ylabel() and ax.get_title()
        assert ax.get_legend() is not None
    for ax in axes[2:]:
        assert ax.get_xlabel().startswith("quantile level t")
    footnote = " ".join(text.get_text() for text in fig.texts)
    assert "pointwise 95% bootstrap intervals (100 resamples" in footnote and "ε0 = 0.2" in footnote
    # both orders' tests are in the title of the reward-difference panel
    assert "1st order: ε = " in axes[3].get_title() and "2nd order: ε = " in axes[3].get_title()
    # one colour per role: the chosen / positive rewards are blue wherever they appear
    first = "chosen" if paired else "positive"
    assert _line_colors(axes[1])[f"{first} rewards"] == to_hex(COLORS["chosen"])
    if not paired:
        top, shift = _line_colors(axes[0]), _line_colors(axes[2])
        assert top["positive completions, after (policy)"] == shift["positive completions: after − before"] \
            == to_hex(COLORS["chosen"])
        assert top["negative completions, after (policy)"] == to_hex(COLORS["rejected"])
    # before and after are told apart by the line style
    styles = {line.get_label(): line.get_linestyle() for line in axes[0].get_lines()}
    name = "margin" if paired else "positive completions"
    assert styles[f"{name}, before (reference)"] == "--" and styles[f"{name}, after (policy)"] == "-"
