"""`aot compare EVAL...`: eval artifacts side by side, one row per model, deltas to the first."""

from __future__ import annotations

import json

from aot_cli.artifacts.store import write_manifest
from aot_cli.eval.report import markdown, results_document


def _eval_dir(path, suite, model, scores, notes=None, settings=None):
    """An eval artifact as `aot eval` writes one: results.json, report.md, then the manifest."""
    path.mkdir()
    results = results_document(suite, model, scores, settings or {"x": 1}, notes)
    (path / "results.json").write_text(json.dumps(results))
    (path / "report.md").write_text(markdown(results))
    write_manifest(path, kind="eval", config={}, summary={"suite": suite, "scores": scores})
    return path


def test_compare_table_and_markdown(aot, tmp_path):
    base_v1 = _eval_dir(tmp_path / "base-v1", "openllm-v1", "base",
                        {"arc_challenge": {"acc_norm": 0.5}, "average": {"score": 0.4}})
    aot_v1 = _eval_dir(tmp_path / "aot-v1", "openllm-v1", "aot",
                       {"arc_challenge": {"acc_norm": 0.55}, "average": {"score": 0.45}})
    aot_ae = _eval_dir(tmp_path / "aot-ae", "alpacaeval", "aot",
                       {"alpacaeval": {"win_rate": 29.9, "standard_error": 1.3, "length_controlled_winrate": None}})
    table = tmp_path / "table.md"
    result = aot("compare", base_v1, aot_v1, aot_ae, "-o", table)
    assert result.exit_code == 0, result
    lines = table.read_text().splitlines()
    assert lines[0] == "| model | arc_challenge acc_norm | average | LC win rate | win rate |"
    assert lines[2] == "| base | 0.5000 | 0.4000 | — | — |"
    assert lines[3] == "| aot | 0.5500 (+0.0500) | 0.4500 (+0.0500) | — | 29.90 |"
    assert "+0.0500" in result.stdout
    assert result.stderr.splitlines()[-1] == f"wrote {table} (the table as markdown)"


def test_compare_bad_inputs(aot, tmp_path):
    one = _eval_dir(tmp_path / "one", "lm-eval", "m", {"t": {"acc": 0.1}})
    two = _eval_dir(tmp_path / "two", "lm-eval", "m", {"t": {"acc": 0.2}})
    result = aot("compare", one, two)
    assert result.exit_code == 2 and "both report 't acc' for m" in result.stderr
    other = tmp_path / "run"
    other.mkdir()
    write_manifest(other, kind="run", config={})
    result = aot("compare", one, other)
    assert result.exit_code == 2 and "expected a 'eval' one" in result.stderr
    result = aot("compare")
    assert result.exit_code == 2 and "missing EVAL" in result.stderr


def test_a_merged_model_shares_its_runs_row(aot, tmp_path):
    run, model = tmp_path / "run", tmp_path / "model"
    run.mkdir()
    model.mkdir()
    write_manifest(run, kind="run", config={})
    write_manifest(model, kind="model", config={}, summary={"source_run": str(run)})
    tasks = _eval_dir(tmp_path / "tasks", "lm-eval", str(model), {"t": {"acc": 0.5}})
    dom = _eval_dir(tmp_path / "dom", "dominance", str(tmp_path / "." / "run"),
                    {"implicit_rewards": {"accuracy": 0.75, "violation_fraction": 0.1, "violation_area": 0.01,
                                          "violation_ratio": 0.05, "p_value": 0.002, "violation_ratio_2nd": 0.0,
                                          "p_value_2nd": 0.001}})
    table = tmp_path / "t.md"
    assert aot("compare", tasks, dom, "-o", table).exit_code == 0
    lines = table.read_text().splitlines()
    assert lines[0] == ("| model | t acc | reward accuracy | violation fraction | violation area | "
                        "violation ratio (1st) | p-value (1st) | violation ratio (2nd) | p-value (2nd) |")
    assert len(lines) == 3
    assert lines[2] == f"| {model} | 0.5000 | 0.7500 | 0.1000 | 0.0100 | 0.0500 | 0.0020 | 0.0000 | 0.0010 |"


def test_dominance_evals_with_and_without_tests(aot, tmp_path):
    """An eval made before the tests existed shows them as —; different eps0 get a warning."""
    old = _eval_dir(tmp_path / "old", "dominance", "base",
                    {"implicit_rewards": {"accuracy": 0.5, "violation_fraction": 0.5, "violation_area": 0.2}})
    tests = {"accuracy": 0.75, "violation_fraction": 0.1, "violation_area": 0.01, "violation_ratio": 0.05,
             "p_value": 0.002, "violation_ratio_2nd": 0.0, "p_value_2nd": 0.001}
    new = _eval_dir(tmp_path / "new", "dominance", "aot", {"implicit_rewards": tests},
                    settings={"statistics": {"epsilon": 0.2, "resamples": 1000}})
    table = tmp_path / "t.md"
    result = aot("compare", old, new, "-o", table)
    assert result.exit_code == 0 and "different settings" not in result.stderr
    lines = table.read_text().splitlines()
    assert lines[2] == "| base | 0.5000 | 0.5000 | 0.2000 | — | — | — | — |"
    assert lines[3].startswith("| aot | 0.7500 (+0.2500) | 0.1000 (-0.4000) | 0.0100 (-0.1900) | 0.0500 |")
    other = _eval_dir(tmp_path / "other", "dominance", "aot-2", {"implicit_rewards": tests},
                      settings={"statistics": {"epsilon": 0.5, "resamples": 1000}})
    result = aot("compare", new, other)
    assert result.exit_code == 0
    assert "dominance p-values were computed with different settings" in result.stderr
    assert f"{new}: eps0 0.2, 1000 resamples; {other}: eps0 0.5, 1000 resamples" in " ".join(result.stderr.split())


def test_v1_and_v2_averages_of_one_model(aot, tmp_path):
    v1 = _eval_dir(tmp_path / "v1", "openllm-v1", "m", {"gsm8k": {"exact_match": 0.25}, "average": {"score": 0.5}})
    v2 = _eval_dir(tmp_path / "v2", "openllm-v2", "m", {"bbh": {"normalized": 30.0}, "average": {"normalized": 20.0}})
    table = tmp_path / "t.md"
    assert aot("compare", v1, v2, "-o", table).exit_code == 0
    assert table.read_text().splitlines()[0] == "| model | gsm8k exact_match | average | bbh | v2 average |"


def test_labels_name_the_rows_in_order(aot, tmp_path):
    """--label renames rows in row order (a merged model and its run stay one row); the deltas still
    refer to the first row."""
    run, model = tmp_path / "runs" / "dpo", tmp_path / "models" / "dpo"
    run.mkdir(parents=True)
    model.mkdir(parents=True)
    write_manifest(run, kind="run", config={})
    write_manifest(model, kind="model", config={}, summary={"source_run": str(run)})
    base = _eval_dir(tmp_path / "base-tasks", "lm-eval", "org/base-7b", {"t": {"acc": 0.5}})
    dpo = _eval_dir(tmp_path / "dpo-tasks", "lm-eval", str(model), {"t": {"acc": 0.75}})
    dom = _eval_dir(tmp_path / "dpo-dom", "dominance", str(run),
                    {"implicit_rewards": {"accuracy": 0.625, "violation_fraction": 0.25, "violation_area": 0.5}})
    table = tmp_path / "t.md"
    result = aot("compare", base, dpo, dom, "--label", "base", "--label", "dpo", "-o", table)
    assert result.exit_code == 0, result
    lines = table.read_text().splitlines()
    assert lines[2] == "| base | 0.5000 |" + " — |" * 7
    assert lines[3] == "| dpo | 0.7500 (+0.2500) | 0.6250 | 0.2500 | 0.5000 |" + " — |" * 4  # no tests in this eval
    comma = tmp_path / "comma.md"
    assert aot("compare", base, dpo, dom, "--label", "base, dpo", "-o", comma).exit_code == 0
    assert comma.read_text() == table.read_text()


def test_bad_labels(aot, tmp_path):
    one = _eval_dir(tmp_path / "one", "lm-eval", "a", {"t": {"acc": 0.1}})
    two = _eval_dir(tmp_path / "two", "lm-eval", "b", {"t": {"acc": 0.2}})
    result = aot("compare", one, two, "--label", "base")
    assert result.exit_code == 2
    assert "--label gives 1 name(s) for 2 row(s) (a, b); give one name per model" in result.stderr
    result = aot("compare", one, two, "--label", "x,x")
    assert result.exit_code == 2 and "--label names x more than one row" in result.stderr
    result = aot("compare", one, two, "--label", "x,,y")
    assert result.exit_code == 2 and "empty name" in result.stderr
    out = tmp_path / "never.md"
    assert aot("compare", one, two, "--label", "x,x", "-o", out).exit_code == 2 and not out.exists()


ALPACA_EVAL_JUDGE = {"implementation": "alpaca_eval", "alpaca_eval_version": "0.6.6",
                     "annotator": "weighted_alpaca_eval_gpt4_turbo",
                     "prompt": "alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt", "prompt_sha256": "ab",
                     "model": "qwen-72b", "base_url": "http://127.0.0.1:8000/v1"}
BUILTIN_JUDGE = {"implementation": "aot built-in", "protocol": "weighted_alpaca_eval_gpt4_turbo",
                 "prompt": "aot built-in (aot_cli/eval/judge.py)", "prompt_sha256": "cd", "model": "qwen-72b",
                 "base_url": "http://127.0.0.1:8000/v1", "seed": 0}


def _alpaca(path, model, win_rate, judge):
    scores = {"alpacaeval": {"win_rate": win_rate, "length_controlled_winrate": None}}
    return _eval_dir(path, "alpacaeval", model, scores, settings={"judge": judge})


def test_alpacaeval_numbers_of_different_judges_are_not_mixed_unless_asked(aot, tmp_path):
    """The same judge model behind alpaca-eval's annotator and behind the built-in prompt gives two
    scales: one error line naming both evals and their judges; --mix-judges shows them with a warning.
    The same judge at another address is the same judge."""
    base = _alpaca(tmp_path / "base", "base", 20.0, ALPACA_EVAL_JUDGE)
    tuned = _alpaca(tmp_path / "tuned", "tuned", 30.0, BUILTIN_JUDGE)
    result = aot("compare", base, tuned)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result
    assert errors[0] == (
        f"error: the AlpacaEval evals were judged by different judges, so their win rates do not compare "
        f"({base}: alpaca_eval (annotator weighted_alpaca_eval_gpt4_turbo; judge model qwen-72b); {tuned}: "
        "aot built-in (weighted_alpaca_eval_gpt4_turbo protocol, prompt aot built-in (aot_cli/eval/judge.py); "
        "judge model qwen-72b)); judge them again with one judge, or pass --mix-judges to show them side by "
        "side anyway")
    result = aot("compare", base, tuned, "--mix-judges", "-o", tmp_path / "t.md")
    assert result.exit_code == 0, result
    assert "AlpacaEval numbers from different judges side by side (--mix-judges)" in " ".join(result.stderr.split())
    assert (tmp_path / "t.md").read_text().splitlines()[3] == "| tuned | — | 30.00 (+10.00) |"

    moved = _alpaca(tmp_path / "moved", "moved", 25.0, {**ALPACA_EVAL_JUDGE, "base_url": "http://gpu-box:8000/v1"})
    other_model = _alpaca(tmp_path / "small", "small", 25.0, {**ALPACA_EVAL_JUDGE, "model": "qwen-7b"})
    assert aot("compare", base, moved).exit_code == 0
    result = aot("compare", base, other_model)
    assert result.exit_code == 2 and "judge model qwen-7b" in result.stderr and "--mix-judges" in result.stderr
