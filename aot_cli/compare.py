"""`aot compare EVAL...`: several eval artifacts as one table, the paper's Table 1 layout.

One row per model (evals of the same model share a row: its openllm-v1 and alpacaeval directories,
and a merged model with the run it was merged from), one column per score, and every row after the
first shows its difference to the first row (the baseline: list it first). Rows are named by the
model each eval names (a path or a hub id), or by ``--label`` (e.g. by method, as the paper's Table 1
does). Printed as a rich table; ``-o FILE`` also writes it as markdown.

A dominance eval contributes its implicit-reward numbers: reward accuracy, violation fraction and
area, and the almost-dominance tests (violation ratio and p-value, first and second order; an eval
made before the tests existed shows them as —). Their p-values depend on the eval's eps0 and
resamples (``settings.statistics``): compare evals made with the same ones.

AlpacaEval win rates are a judge's opinion: numbers from alpaca-eval's annotator and from the
built-in stand-in (another prompt), or from two judge models, are not on one scale. compare refuses
to show them side by side, naming each eval's judge, unless ``--mix-judges`` says to (then it warns).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from aot_cli.artifacts.kinds import EvalArtifact, ModelArtifact, artifact_kind
from aot_cli.artifacts.store import atomic_file
from aot_cli.config import StepConfig, arg, opt
from aot_cli.console import info, out_console, warn
from aot_cli.errors import UserError
from aot_cli.eval.dominance_legend import TEST_COLUMNS
from aot_cli.eval.report import format_value

# Suites whose full score list is too long for a side-by-side table: their headline columns.
HEADLINES = {
    "alpacaeval": [("alpacaeval", "length_controlled_winrate"), ("alpacaeval", "win_rate")],
    "dominance": [("implicit_rewards", "accuracy"), ("implicit_rewards", "violation_fraction"),
                  ("implicit_rewards", "violation_area"), ("implicit_rewards", "violation_ratio"),
                  ("implicit_rewards", "p_value"), ("implicit_rewards", "violation_ratio_2nd"),
                  ("implicit_rewards", "p_value_2nd")],
}
SHORT = {"length_controlled_winrate": "LC win rate", "win_rate": "win rate"}
DOMINANCE_SHORT = {"accuracy": "reward accuracy", "violation_fraction": "violation fraction",
                   "violation_area": "violation area", **TEST_COLUMNS}


def column_name(task: str, metric: str) -> str:
    if task == "implicit_rewards" and metric in DOMINANCE_SHORT:
        return DOMINANCE_SHORT[metric]
    if (task, metric) == ("average", "normalized"):   # leaderboard v2's, beside v1's plain average
        return "v2 average"
    if metric in ("score", "normalized") or task == "alpacaeval":
        return SHORT.get(metric, task if metric in ("score", "normalized") else metric)
    return f"{task} {metric}"


@dataclass
class Config(StepConfig):
    """Options of ``aot compare``."""

    evals: list[str] = arg(help="Eval directories made by `aot eval ...`; the first row is the baseline.",
                           metavar="EVAL")
    output: Path | None = opt(None, "-o", "--output", help="Also write the table as markdown to this file.",
                                 metavar="FILE.md")
    mix_judges: bool = opt(False, "--mix-judges", help="Show AlpacaEval numbers made by different judges "
                           "(implementation, annotator/prompt or judge model) side by side; they are not on one "
                           "scale.")
    label: list[str] = opt([], "--label", help="Row names in row order (comma-separated or repeated), one per "
                           "model, e.g. --label base,aot,dpo (default: the model each eval names).", metavar="NAME")

    def labels(self) -> list[str]:
        """The --label names, split at commas; a UserError for an empty or repeated name."""
        names = [name.strip() for value in self.label for name in value.split(",")]
        if any(not name for name in names):
            raise UserError(f"--label {','.join(self.label)}: empty name (give one name per row, comma-separated)")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise UserError(f"--label names {', '.join(repeated)} more than one row; each row needs its own name")
        return names

    def preflight(self) -> None:
        self.labels()


def model_identity(spec: str) -> str:
    """The same key for a run, a model merged from it, and different spellings of their paths."""
    path = Path(spec)
    if not path.exists():
        return spec
    if artifact_kind(path) == "model":
        run = ModelArtifact.read(path).source_run
        if run is not None and run.exists():
            return str(run.resolve())
    return str(path.resolve())


def build_table(results: list[tuple[str, dict]]) -> tuple[list[str], list[str], dict]:
    """(row labels, column names, {(row, column): value}) from (eval dir, results.json) pairs."""
    rows: list[str] = []
    columns: list[str] = []
    cells: dict = {}
    where: dict = {}
    labels: dict[str, str] = {}
    for path, res in results:
        model = labels.setdefault(model_identity(res["model"]), res["model"])
        if model not in rows:
            rows.append(model)
        pairs = HEADLINES.get(res["suite"]) or [(t, m) for t, ms in res["scores"].items() for m in ms]
        for task, metric in pairs:
            value = res["scores"].get(task, {}).get(metric)
            column = column_name(task, metric)
            if (model, column) in cells:
                raise UserError(f"{path} and {where[model, column]} both report {column!r} for {model}; "
                                "compare one eval per suite and model")
            if column not in columns:
                columns.append(column)
            cells[model, column], where[model, column] = value, path
    return rows, columns, cells


def dominance_settings_note(results: list[tuple[str, dict]]) -> str | None:
    """A warning when dominance evals' p-values come from different thresholds or resamplings."""
    seen = {}
    for path, res in results:
        stats = res.get("settings", {}).get("statistics") if res["suite"] == "dominance" else None
        if stats:
            seen[path] = f"eps0 {stats.get('epsilon')}, {stats.get('resamples')} resamples"
    if len(set(seen.values())) <= 1:
        return None
    return ("the dominance p-values were computed with different settings, so they do not compare: "
            + "; ".join(f"{path}: {what}" for path, what in seen.items()))


def judge_name(res: dict) -> str:
    """An AlpacaEval eval's judge in words: implementation, annotator or prompt, judge model. Two evals
    whose names differ were judged differently (the server's address does not count: one model served
    at two addresses is one judge)."""
    judge = res.get("settings", {}).get("judge")
    if not isinstance(judge, dict):
        return "an unrecorded judge"
    implementation = judge.get("implementation", "an unrecorded implementation")
    if implementation == "alpaca_eval":
        how = f"annotator {judge.get('annotator')}"
    else:
        how = f"{judge.get('protocol')} protocol, prompt {judge.get('prompt', 'aot built-in')}"
    model = judge.get("model")
    return f"{implementation} ({how}; judge model {model or 'the annotator default'})"


def check_judges(results: list[tuple[str, dict]], mix: bool) -> None:
    """A UserError (a warning with `mix`) when AlpacaEval evals were judged by different judges."""
    judges = {path: judge_name(res) for path, res in results if res["suite"] == "alpacaeval"}
    if len(set(judges.values())) <= 1:
        return
    listed = "; ".join(f"{path}: {name}" for path, name in judges.items())
    if not mix:
        raise UserError(f"the AlpacaEval evals were judged by different judges, so their win rates do not "
                        f"compare ({listed}); judge them again with one judge, or pass --mix-judges to show "
                        "them side by side anyway")
    warn(f"AlpacaEval numbers from different judges side by side (--mix-judges): {listed}")


def relabel(rows: list[str], cells: dict, labels: list[str]) -> tuple[list[str], dict]:
    """Rows and cells renamed by `labels` (in row order); a UserError unless there is one per row."""
    if len(labels) != len(rows):
        raise UserError(f"--label gives {len(labels)} name(s) for {len(rows)} row(s) ({', '.join(rows)}); "
                        "give one name per model, in the order of the rows")
    names = dict(zip(rows, labels))
    return labels, {(names[row], column): value for (row, column), value in cells.items()}


def cell_text(value, baseline, first_row: bool) -> str:
    if value is None:
        return "—"
    if first_row or baseline is None:
        return format_value(value)
    delta = value - baseline
    return f"{format_value(value)} ({delta:+.4f})" if abs(value) < 10 else f"{format_value(value)} ({delta:+.2f})"


def markdown(rows: list[str], columns: list[str], cells: dict) -> str:
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for i, row in enumerate(rows):
        texts = [cell_text(cells.get((row, c)), cells.get((rows[0], c)), i == 0) for c in columns]
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def run(config: Config) -> dict:
    """Print the comparison (and write it as markdown with -o); returns the table as plain values."""
    paths = list(config.evals or [])
    if not paths:
        raise UserError("aot compare needs at least one eval directory: aot compare EVAL [EVAL...]")
    results = [(p, EvalArtifact.load(p).results) for p in paths]
    check_judges(results, config.mix_judges)
    rows, columns, cells = build_table(results)
    labels = config.labels()
    if labels:
        rows, cells = relabel(rows, cells, labels)
    table = Table(title="eval comparison (differences to the first row)")
    table.add_column("model", overflow="fold")   # long paths and names wrap rather than lose their ends
    for column in columns:
        table.add_column(column, justify="right", overflow="fold")
    for i, row in enumerate(rows):
        table.add_row(row, *[cell_text(cells.get((row, c)), cells.get((rows[0], c)), i == 0) for c in columns])
    out_console.print(table)
    note = dominance_settings_note(results)
    if note:
        warn(note)
    if config.output is not None:
        output = Path(config.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(output) as tmp:
            tmp.write_text(markdown(rows, columns, cells))
        info(f"wrote {output} (the table as markdown)")
    else:
        info("add -o FILE.md to save this table as markdown")
    return {"rows": rows, "columns": columns, "cells": {f"{r} | {c}": v for (r, c), v in cells.items()}}
