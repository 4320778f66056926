"""The eval artifact's outputs: results.json (machine-readable), report.md, a rich table, the manifest.

results.json = {"suite", "model", "scores": {task: {metric: value}}, "settings": {everything that
changes scores}, "versions", "notes"}. Scores keep each tool's own scale (lm-eval 0-1, AlpacaEval
win rates and leaderboard-v2 normalized scores 0-100), so they match what those tools print.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from rich.table import Table

from aot_cli.artifacts.kinds import RESULTS
from aot_cli.artifacts.store import describe_input, library_versions, write_manifest
from aot_cli.config import to_dict
from aot_cli.console import info, out_console
from aot_cli.eval.dominance_legend import COMPARISONS, METRICS_LEGEND, TEST_COLUMNS, TESTS_LEGEND


def format_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def score_rows(scores: dict) -> list[tuple[str, str, Any]]:
    """(task, metric, value) rows in the order the suite reported them."""
    return [(task, metric, value) for task, metrics in scores.items() for metric, value in metrics.items()]


def score_tables(results: dict) -> tuple[list[tuple[str, list[str], list[list[str]]]], list[str]]:
    """([(title, header, rows of cell texts)], legend lines): one row per (task, metric); for dominance
    one row per comparison, its measurements in a first table and its almost-dominance tests (when
    the eval has them) in a second, and a legend saying what each row compares."""
    if results["suite"] != "dominance":
        rows = [[t, m, format_value(v)] for t, m, v in score_rows(results["scores"])]
        return [("", ["task", "metric", "value"], rows)], []
    what = COMPARISONS[bool(results["settings"].get("paired", True))]
    metrics = list(next(iter(results["scores"].values())))
    tests = [m for m in metrics if m in TEST_COLUMNS]
    measured = [m for m in metrics if m not in TEST_COLUMNS]

    def rows(columns: list[str]) -> list[list[str]]:
        return [[name, *(format_value(values.get(m)) for m in columns)] for name, values in results["scores"].items()]

    tables = [("", ["comparison"] + [m.replace("_", " ") for m in measured], rows(measured))]
    legend = [f"{name}: {what[name]}" for name in results["scores"] if name in what] + [METRICS_LEGEND]
    if tests:
        stats = results["settings"].get("statistics", {})
        title = (f"almost-dominance tests (eps0 = {stats.get('epsilon', '?')}, {stats.get('resamples', '?')} "
                 f"bootstrap resamples, seed {stats.get('seed', '?')})")
        tables.append((title, ["comparison"] + [TEST_COLUMNS[m] for m in tests], rows(tests)))
        legend.append(TESTS_LEGEND)
    return tables, legend


def results_document(suite: str, model: str, scores: dict, settings: dict, notes: dict | None = None) -> dict:
    return {"suite": suite, "model": model, "scores": scores, "settings": settings,
            "versions": library_versions(), "notes": notes or {}}


def markdown(results: dict) -> str:
    """report.md: the scores table(s), then notes and the settings that changed them."""
    tables, legend = score_tables(results)
    lines = [f"# {results['suite']}: {results['model']}"]
    for title, header, rows in tables:
        lines += [""] + ([f"## {title[0].upper()}{title[1:]}", ""] if title else [])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    if legend:
        lines += [""] + [f"- {line}" for line in legend]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {k}: {v}" for k, v in results["notes"].items()]
    lines += ["", "## Settings", "", "```json", json.dumps(results["settings"], indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"


def print_table(results: dict) -> None:
    tables, legend = score_tables(results)
    for title, header, rows in tables:
        table = Table(title=title or f"{results['suite']}: {results['model']}")
        for column in header:
            label = column in ("task", "metric", "comparison")
            table.add_column(column, justify="left" if label else "right", no_wrap=label)
        for row in rows:
            table.add_row(*row)
        out_console.print(table)
    for line in legend:
        out_console.print(line, highlight=False)
    for key, note in results.get("notes", {}).items():
        out_console.print(f"{key}: {note}", highlight=False)


def write_eval(out: Path, config: Any, suite: str, source: Any, scores: dict, settings: dict,
               notes: dict | None = None) -> dict:
    """Write results.json and report.md into `out`, then the manifest (last); returns the results.

    `config` is the sub-command's config (recorded with every input it read); `source` the resolved
    MODEL (:class:`aot_cli.eval.source.ModelSource`)."""
    settings["model_source"] = source.describe()
    results = results_document(suite, source.spec, scores, settings, notes)
    (out / RESULTS).write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(results))
    inputs = [describe_input(p) for p in config.input_paths() if p is not None]
    write_manifest(out, kind="eval", config=to_dict(config), inputs=inputs,
                   summary={"suite": results["suite"], "scores": results["scores"]})
    return results


def announce(results: dict, out: Path, extra_files: tuple[str, ...] = ()) -> None:
    """The scores table, then what was written (the suite's own `extra_files` among them, those that
    are there) and what to run next (after the output is in place)."""
    print_table(results)
    files = [name for name in (RESULTS, "report.md", *extra_files) if (Path(out) / name.rstrip("/")).exists()]
    info(f"wrote {out}: {', '.join(files)}")
    info(f"next: aot compare BASELINE_EVAL_DIR {shlex.quote(str(out))} (side by side with differences to the "
         "first; add more eval directories)")
