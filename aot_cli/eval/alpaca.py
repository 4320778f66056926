"""The AlpacaEval suite: generate answers, judge them against a reference, report win rates.

Data: the AlpacaEval 2.0 set (805 instructions with GPT-4 Turbo's reference answers) is read as the
JSON file it is (``alpaca_eval_gpt4_baseline.json`` of the hub dataset ``tatsu-lab/alpaca_eval``),
not through ``datasets.load_dataset`` (AlpacaEval's loader breaks across datasets/pandas majors,
alpaca_eval #454). ``--instructions FILE`` replaces it (a JSON/JSONL list of {"instruction",
optional "dataset", optional "output" = reference answer}); ``--reference FILE`` gives a custom
baseline ({"instruction", "output"} rows, matched by instruction).

Judge: with the ``alpaca`` extra installed, alpaca-eval's own annotator (``--judge`` names one or is
its YAML; its prompt, its log-prob parsing, and the length-controlled win rate on the full set),
asked through ``--judge-base-url``/``--judge-model`` when given (any OpenAI-compatible server, see
:mod:`aot_cli.eval.alpaca_annotator`). Without the extra, the built-in client of
:mod:`aot_cli.eval.judge` (the same weighted protocol with a prompt of our own) stands in. results.json
says which one made the numbers (settings.judge.implementation, its prompt and model), and
``aot compare`` refuses to put numbers of different judges side by side. Judge caches live in OUT,
never in site-packages.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download

from aot_cli.artifacts.models import load_for_generation, resolve_device
from aot_cli.artifacts.store import output_lock
from aot_cli.console import info, progress, warn
from aot_cli.errors import UserError
from aot_cli.eval.config import DEFAULT_JUDGE, AlpacaConfig
from aot_cli.eval.generate import MODEL_OUTPUTS, Throughput, generate_outputs, read_outputs
from aot_cli.eval.judge import (DEFAULT_JUDGE_MODEL, OPENAI_BASE_URL, SYSTEM_PROMPT, USER_TEMPLATE, JudgeClient,
                                JudgeSettings, api_key)
from aot_cli.eval.report import announce, write_eval
from aot_cli.eval.source import resolve_model
from aot_cli.jsonl import describe_error, parse_lines, read_text

STANDARD_REPO, STANDARD_FILE = "tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json"
STANDARD_SIZE = 805


def read_rows(path: Path, what: str) -> list[dict]:
    """A JSON list or JSONL file of objects with a non-empty "instruction" string."""
    if not path.is_file():
        raise UserError(f"{what} {path}: file not found")
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{path}:{getattr(exc, 'lineno', 1)}: {describe_error(exc)}") from None
    else:
        rows = [row for _, row in parse_lines(text, str(path))]
    for i, row in enumerate(rows, 1):
        instruction = row.get("instruction") if isinstance(row, dict) else None
        if not isinstance(instruction, str) or not instruction.strip():
            raise UserError(f"{path}: row {i}: expected an object with a non-empty 'instruction' string")
    return rows


def standard_set() -> list[dict]:
    """The 805 AlpacaEval 2.0 instructions with the GPT-4 Turbo reference outputs (hub JSON file)."""
    try:
        path = hf_hub_download(STANDARD_REPO, STANDARD_FILE, repo_type="dataset")
    except Exception as exc:  # offline, no cache, hub down: all mean the same to the user
        raise UserError(f"cannot get the AlpacaEval set ({STANDARD_REPO}: {STANDARD_FILE}) from the Hugging Face "
                        f"hub ({type(exc).__name__}); fetch it once with network access, or pass "
                        "--instructions FILE (a JSON list of {\"instruction\": ...})") from None
    return read_rows(Path(path), "AlpacaEval set")


def attach_references(rows: list[dict], reference: Path | None) -> list[dict]:
    """Each row with its reference answer: from --reference (matched by instruction) or its own 'output'."""
    by_instruction = {r["instruction"]: r for r in read_rows(reference, "--reference")} if reference else {}
    out = []
    for i, row in enumerate(rows, 1):
        ref = by_instruction.get(row["instruction"], {}).get("output") if reference else row.get("output")
        if not ref:
            where = f"--reference {reference}" if reference else "the instructions file (field 'output')"
            raise UserError(f"instruction {i} ({row['instruction'][:60]!r}) has no reference answer in {where}")
        generator = by_instruction.get(row["instruction"], row).get("generator", "reference")
        out.append({"instruction": row["instruction"], "dataset": row.get("dataset"),
                    "reference": ref, "reference_generator": generator})
    return out


def win_rate_metrics(preferences: list[float], lengths: list[int]) -> dict:
    """AlpacaEval's summary of soft preferences p in [0, 1] (P(model better)): win rate = 100 mean(p),
    standard error = 100 std(p, ddof=1) / sqrt(n), wins / draws / losses at p >, =, < 0.5, and the
    model outputs' mean length in characters."""
    n = len(preferences)
    mean = sum(preferences) / n
    var = sum((p - mean) ** 2 for p in preferences) / (n - 1) if n > 1 else 0.0
    return {"win_rate": 100 * mean, "standard_error": 100 * math.sqrt(var / n),
            "n_wins": sum(p > 0.5 for p in preferences), "n_draws": sum(p == 0.5 for p in preferences),
            "n_wins_base": sum(p < 0.5 for p in preferences), "n_total": n,
            "avg_length": sum(lengths) / len(lengths)}


def _alpaca_eval_installed() -> bool:
    return importlib.util.find_spec("alpaca_eval") is not None


def use_builtin_judge() -> bool:
    """The built-in judge stands in when the alpaca extra is not installed; with it, alpaca-eval's
    annotator is the judge, whatever server it is sent to."""
    return not _alpaca_eval_installed()


def judge_builtin(config: Any, outputs: list[dict], rows: list[dict], out: Path,
                  full_set: bool) -> tuple[dict, list[dict], str]:
    """Judge with the built-in client; returns (metrics, annotations, LC-null reason). An instruction
    whose answer gives no preference is left out of the win rate and counted (n_no_preference)."""
    client = JudgeClient(judge_settings(config), out / "judge_cache.jsonl")
    annotations = []
    with progress() as bar:
        task = bar.add_task("judging", total=len(rows))
        for row, output in zip(rows, outputs):
            verdict = client.judge(row["instruction"], output["output"], row["reference"])
            annotations.append({"instruction": row["instruction"], "output": output["output"],
                                "reference": row["reference"], "generator": output["generator"], **verdict})
            bar.advance(task)
    judged = [a for a in annotations if a["preference"] is not None]
    problems = Counter(a["judge_problem"].split(":")[0] for a in annotations if a["preference"] is None)
    reasons = ", ".join(f"{reason} {n}" for reason, n in problems.most_common())
    if not judged:
        raise UserError(f"the judge gave no preference for any of the {len(annotations)} instructions ({reasons}; "
                        f"answers cached in {out / 'judge_cache.jsonl'}); is --judge-base-url an OpenAI-compatible "
                        "endpoint ending in /v1, and --judge-model a chat model that returns logprobs?")
    if problems:
        warn(f"no preference from the judge for {sum(problems.values())} of {len(annotations)} instructions "
             f"({reasons}): left out of the win rate, counted in n_no_preference (details in annotations.json)")
    metrics = win_rate_metrics([a["preference"] for a in judged], [len(a["output"]) for a in judged])
    metrics["n_no_preference"] = sum(problems.values())
    return metrics, annotations, "needs alpaca-eval's length-control model (the alpaca extra)"


def check_builtin_judge(config: Any) -> None:
    """The built-in judge speaks one protocol and needs a key for OpenAI itself."""
    if config.judge != DEFAULT_JUDGE:
        raise UserError(f"--judge {config.judge}: only {DEFAULT_JUDGE} is built in; other annotators need the "
                        "alpaca extra (pip install 'aot-cli[alpaca]')")
    api_key(judge_settings(config))


def builtin_judge_record(config: Any) -> dict:
    """What results.json says about the built-in judge: its protocol, that the prompt is ours (with
    its sha256, so a change of wording shows), the judge model and server."""
    prompt = hashlib.sha256((SYSTEM_PROMPT + "\n" + USER_TEMPLATE).encode()).hexdigest()
    return {"implementation": "aot built-in", "protocol": DEFAULT_JUDGE,
            "prompt": "aot built-in (aot_cli/eval/judge.py)", "prompt_sha256": prompt, **vars(judge_settings(config))}


def judge_settings(config: Any) -> JudgeSettings:
    return JudgeSettings(base_url=config.judge_base_url or OPENAI_BASE_URL,
                         model=config.judge_model or DEFAULT_JUDGE_MODEL, seed=config.seed)


def _outputs(config: Any, source: Any, device: str, rows: list[dict], path: Path) -> tuple[list[dict], Throughput]:
    """The model's answers to `rows`: those already in `path` (a resumed run) plus newly generated ones,
    and the throughput of the new ones."""
    generator = Path(source.spec).name or source.spec
    existing = read_outputs(path)
    others = {r.get("generator") for r in existing} - {generator}
    if others:
        raise UserError(f"{path} holds answers of another model ({', '.join(sorted(map(str, others)))}); "
                        "write to another -o directory or pass --overwrite")
    done = {r["instruction"]: r for r in existing}
    already = sum(r["instruction"] in done for r in rows)
    if already:
        info(f"resuming: {already} of {len(rows)} instructions already answered in {path}")
    if already == len(rows):
        return [done[r["instruction"]] for r in rows], Throughput(config.backend, by_length=True)
    options = dict(generator=generator, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                   temperature=config.temperature, seed=config.seed)
    if config.backend == "vllm":
        from aot_cli.eval import vllm_generate  # the optional vllm extra (preflight checked it is installed)

        return vllm_generate.generate_outputs(source, rows, path, dtype=config.dtype, **options)
    model, tokenizer = load_for_generation(source, config.dtype, device)
    return generate_outputs(model, tokenizer, rows, path, **options)


def evaluate(config: Any, source: Any, device: str, out: Path) -> tuple[dict, dict, dict]:
    """Generate (resumable) and judge; write model_outputs.json and annotations.json into `out`."""
    standard = config.instructions is None and config.reference is None
    rows = standard_set() if config.instructions is None else read_rows(config.instructions, "--instructions")
    rows = attach_references(rows[: config.limit] if config.limit else rows, config.reference)
    full_set = standard and len(rows) == STANDARD_SIZE
    builtin = use_builtin_judge()
    if builtin:   # fail before generating, not after
        check_builtin_judge(config)
        judge, judge_record = judge_builtin, builtin_judge_record(config)
    else:
        from aot_cli.eval import alpaca_annotator   # the optional `alpaca` extra: imports alpaca_eval

        alpaca_annotator.check(config)
        judge, judge_record = alpaca_annotator.judge, alpaca_annotator.judge_record(config)

    path = out / MODEL_OUTPUTS
    outputs, throughput = _outputs(config, source, device, rows, path)
    try:
        metrics, annotations, lc_reason = judge(config, outputs, rows, out, full_set)
    except UserError as exc:
        raise UserError(f"{exc}; the generated outputs are kept in {path}: rerun the same command to judge "
                        "them") from None
    (out / "annotations.json").write_text(json.dumps(annotations, indent=2, ensure_ascii=False, default=str) + "\n")

    notes = {}
    if metrics.get("length_controlled_winrate") is None:
        metrics["length_controlled_winrate"] = None
        if not full_set:
            lc_reason = f"only defined on the full {STANDARD_SIZE}-instruction AlpacaEval set with its reference"
        notes["length_controlled_winrate"] = f"null: {lc_reason or 'alpaca-eval did not compute it'}"
    settings = {"judge": judge_record, "instructions": str(config.instructions) if config.instructions else
                f"{STANDARD_REPO}/{STANDARD_FILE}", "reference": str(config.reference) if config.reference else None,
                "n_instructions": len(rows), "max_new_tokens": config.max_new_tokens,
                "temperature": config.temperature, "seed": config.seed, "batch_size": config.batch_size,
                "chat_template": True, "dtype": config.dtype, "device": device, "generator": outputs[0]["generator"]}
    settings["generation"] = throughput.record()
    if throughput.tokens_per_s is None:
        notes["tokens_per_s"] = "null: every answer was already in model_outputs.json (generated by an earlier run)"
    return {"alpacaeval": metrics}, settings, notes


def run(config: AlpacaConfig) -> dict:
    """`aot eval alpaca`. Unlike the other suites it writes into OUT as it goes: generation is the slow
    part and must survive a judge failure. The manifest, written last, marks OUT complete; an OUT
    without one is resumed (the answers already generated are kept)."""
    config.preflight()
    out = Path(config.output)
    source = resolve_model(config.model)
    with output_lock(out):
        if out.exists() and config.overwrite:
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        fresh = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            scores, settings, notes = evaluate(config, source, resolve_device(config.device), out)
        except BaseException:
            if fresh and not any(out.iterdir()):  # failed before any answer was kept: leave nothing behind
                out.rmdir()
            raise
        results = write_eval(out, config, "alpacaeval", source, scores, settings, notes)
    announce(results, out, (MODEL_OUTPUTS, "annotations.json", "judge_cache.jsonl", "alpaca_eval/"))
    return results
