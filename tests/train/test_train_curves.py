"""training_curves.png is readable on its own: labelled axes, legends that say what each line is."""

from __future__ import annotations

from matplotlib.figure import Figure

from aot_cli.train.metrics import plot_curves


def test_training_curves_are_labelled(monkeypatch, tmp_path):
    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kw: (saved.append(self), original(self, path, **kw)))
    record = {"loss": 0.6, "rewards/chosen": 0.1, "rewards/rejected": -0.1, "rewards/margins": 0.2,
              "rewards/accuracies": 0.75, "rewards/violation_fraction": 0.25}
    plot_curves([{**record, "step": s} for s in (1, 2, 3)], tmp_path / "c.png")
    (fig,) = saved
    for ax in fig.axes:
        assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() and ax.get_title()
    assert "nats × β" in fig.axes[1].get_ylabel()
    legend = [text.get_text() for text in fig.axes[2].get_legend().get_texts()]
    assert any(text.startswith("sorted violations: share of quantile levels where") for text in legend)
