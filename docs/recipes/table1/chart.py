"""The recipe's Table 1 as a picture: one panel per score, one bar per method (base first).

Reads the same eval directories as `aot compare` and builds the same table
(:func:`aot_cli.compare.build_table`, rows renamed by ``--label``), so the PNG and the markdown
never disagree. Each panel keeps its score's own scale (lm-eval in 0-1, AlpacaEval in 0-100); the
first row (the base) is grey with a dashed line across the panel, so every method reads as a
difference to it. With ``--paper COLUMN``, the paper's Table 1 AlpacaEval numbers (Melnyk et al.
2024, Merlinite-7B on UltraFeedback) are drawn as black diamonds on that column's panel beside the
methods of the same name.

``python chart.py -o table1.png --label base,aot_unpaired,aot,dpo,kto,ipo EVAL...``
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from matplotlib.figure import Figure

from aot_cli.artifacts.kinds import EvalArtifact
from aot_cli.artifacts.store import atomic_file
from aot_cli.compare import build_table, relabel
from aot_cli.errors import UserError

# AlpacaEval 2.0 of the paper's Table 1 (Merlinite-7B aligned on UltraFeedback), by the recipe's method names.
PAPER_ALPACA = {"base": 17.1, "aot_unpaired": 31.3, "aot": 29.9, "dpo": 27.4, "kto": 24.9, "ipo": 27.7}
PANEL_COLUMNS = 4


def draw(rows: list[str], columns: list[str], cells: dict, paper_column: str | None) -> Figure:
    """One bar panel per column that has at least one value; missing cells are left empty."""
    shown = [c for c in columns if any(cells.get((r, c)) is not None for r in rows)]
    if paper_column is not None and paper_column not in shown:
        raise UserError(f"--paper {paper_column!r}: no such column with values (columns: {', '.join(shown)})")
    ncols = min(PANEL_COLUMNS, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.9 * nrows + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = ["0.6"] + [f"C{i % 10}" for i in range(len(rows) - 1)]
    for ax, column in zip(axes, shown):
        values = [cells.get((r, column)) for r in rows]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(range(len(rows)), heights, color=colors)
        for bar, value in zip(bars, values):
            text = "—" if value is None else (f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 1), textcoords="offset points")
        if all(v is None or v >= 0 for v in values):
            ax.set_ylim(bottom=0)   # scores and rates start at 0 (an all-zero panel too)
        if values[0] is not None:
            ax.axhline(values[0], color="0.4", linestyle="--", linewidth=0.8)
        if column == paper_column:
            marks = [(i, PAPER_ALPACA[r]) for i, r in enumerate(rows) if r in PAPER_ALPACA]
            ax.scatter([i for i, _ in marks], [v for _, v in marks], marker="D", color="black", s=18, zorder=3,
                       label="paper (Table 1)")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(column, fontsize=9)
        ax.set_xticks(range(len(rows)), rows, rotation=35, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    fig.suptitle(f"Scores per method (grey, dashed: {rows[0]}, the baseline)", fontsize=10)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evals", nargs="+", metavar="EVAL", help="eval directories, as given to aot compare")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.png")
    parser.add_argument("--label", action="append", default=[], metavar="NAME",
                        help="row names in row order (comma-separated or repeated), as aot compare --label")
    parser.add_argument("--paper", metavar="COLUMN", help="mark the paper's AlpacaEval numbers on this column")
    args = parser.parse_args()
    try:
        rows, columns, cells = build_table([(p, EvalArtifact.load(p).results) for p in args.evals])
        labels = [name.strip() for value in args.label for name in value.split(",")]
        if labels:
            rows, cells = relabel(rows, cells, labels)
        fig = draw(rows, columns, cells, args.paper or None)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.output) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
