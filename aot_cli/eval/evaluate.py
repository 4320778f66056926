"""`aot eval MODEL --suite ... -o OUT`: one config-driven command for every suite.

MODEL is a merged model directory, a run directory (a LoRA run's adapter goes to lm-eval as
``peft=``) or a hub id (:mod:`aot_cli.eval.source`). Each suite returns its scores and the settings
that produced them; this module writes the eval artifact around them (:mod:`aot_cli.eval.report`).

``aot eval compare OUT...`` is the same command with ``--suite compare``: the word ``compare`` in
the MODEL position selects it, so comparing stays one more suite of one command (same ``--config``
file, same ``-o``) rather than a second command tree.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from aot_cli.artifacts import MANIFEST, atomic_output, check_output, describe_input
from aot_cli.config import arg, opt, to_dict
from aot_cli.errors import UserError

LM_EVAL_SUITES = ("openllm-v1", "openllm-v2", "lm-eval")
SUITES = (*LM_EVAL_SUITES, "alpacaeval", "dominance", "compare")


@dataclass
class EvalConfig:
    """Evaluate a model: Open LLM Leaderboard suites, any lm-eval task, AlpacaEval, reward dominance."""

    model: Optional[list[str]] = arg(None, help="A merged model dir, a run dir, or a hub id; or `compare` "
                                     "followed by eval directories.", metavar="MODEL")
    output: Optional[Path] = opt(None, "-o", "--output", help="Eval directory to write (compare: a markdown file).")
    suite: Optional[str] = opt(None, "--suite", help="What to measure (default: lm-eval when --tasks is given).",
                               choices=SUITES)
    overwrite: bool = opt(False, "--overwrite", help="Replace an existing output directory.")
    seed: int = opt(0, "--seed", help="Seed for few-shot sampling and generation.")
    dtype: str = opt("auto", "--dtype", help="Weight dtype for evaluation (auto = as saved).",
                     choices=("auto", "bf16", "fp16", "fp32"))
    device: Optional[str] = opt(None, "--device", help="torch device (default: cuda when available, else cpu).")
    batch_size: int = opt(8, "--batch-size", help="Examples per forward pass (lm-eval and generation).")
    limit: Optional[int] = opt(None, "--limit", help="Evaluate only the first N examples of each task "
                               "(quick checks; scores are then not comparable).")
    # lm-eval
    tasks: list[str] = opt([], "--tasks", help="lm-eval task/group names, comma-separated or repeated.")
    include_path: Optional[Path] = opt(None, "--include-path", help="Directory of extra lm-eval task YAMLs.")
    num_fewshot: Optional[int] = opt(None, "--num-fewshot", help="Override every task's number of shots.")
    apply_chat_template: Optional[bool] = opt(None, "--apply-chat-template/--no-apply-chat-template",
                                              help="Format prompts with the model's chat template (default: "
                                                   "off for openllm-v1, on for openllm-v2 and lm-eval).")
    fewshot_as_multiturn: Optional[bool] = opt(None, "--fewshot-as-multiturn/--no-fewshot-as-multiturn",
                                               help="Few-shot examples as chat turns (default: with the "
                                                    "chat template).")
    # alpacaeval
    instructions: Optional[Path] = opt(None, "--instructions", help="JSON/JSONL list of {instruction[, dataset, "
                                       "output]} instead of the 805 AlpacaEval instructions.")
    reference: Optional[Path] = opt(None, "--reference", help="Baseline answers {instruction, output} "
                                    "(default: the set's GPT-4 Turbo outputs, or the instructions' 'output').")
    judge: str = opt("weighted_alpaca_eval_gpt4_turbo", "--judge", help="alpaca-eval annotator name or YAML.")
    judge_base_url: Optional[str] = opt(None, "--judge-base-url", help="OpenAI-compatible endpoint for the judge, "
                                        "e.g. http://127.0.0.1:8000/v1 (key: $OPENAI_API_KEY).")
    judge_model: Optional[str] = opt(None, "--judge-model", help="Judge model name (default: gpt-4-1106-preview).")
    max_new_tokens: int = opt(2048, "--max-new-tokens", help="Longest generated answer, in tokens.")
    temperature: float = opt(0.7, "--temperature", help="Sampling temperature (0 = greedy).")
    # dominance
    data: Optional[Path] = opt(None, "--data", help="Prepared dataset (`aot prepare`) whose test split is scored.")
    beta: Optional[float] = opt(None, "--beta", help="Reward scale beta (default: the run's).")


def resolve_suite(config: EvalConfig) -> tuple[str, list[str]]:
    """(suite, positional arguments): a leading word `compare` selects the compare suite."""
    models = list(config.model or [])
    if models[:1] == ["compare"] and config.suite in (None, "compare"):
        return "compare", models[1:]
    if config.suite:
        return config.suite, models
    if config.tasks:
        return "lm-eval", models
    raise UserError(f"missing --suite (one of: {', '.join(SUITES)}), or --tasks NAME for lm-eval tasks")


def run(config: EvalConfig) -> dict:
    """Dispatch to the suite and write the eval artifact; returns results.json's content."""
    from aot_cli.eval import dominance, lm_eval_suites
    from aot_cli.eval.source import resolve_device, resolve_model

    suite, models = resolve_suite(config)
    if suite == "compare":
        from aot_cli.eval import compare

        return compare.run(models, config.output)
    if len(models) != 1:
        raise UserError(f"expected one MODEL, got {len(models)}{': ' + ' '.join(models) if models else ''}")
    if config.output is None:
        raise UserError("missing -o/--output (the eval directory to write)")
    if suite == "alpacaeval":
        return _run_resumable(config, suite, models[0])
    check_output(config.output, config.overwrite)
    source = resolve_model(models[0])
    device = resolve_device(config.device)
    with atomic_output(config.output, config.overwrite) as tmp:
        if suite == "dominance":
            scores, settings = dominance.evaluate(config, source, device, tmp)
        else:
            scores, settings = lm_eval_suites.evaluate(config, suite, source, device, tmp)
        return _finish(tmp, config, suite, source, scores, settings)


def _finish(out: Path, config: EvalConfig, suite: str, source, scores: dict, settings: dict,
            notes: dict | None = None) -> dict:
    from aot_cli.eval import report

    settings["model_source"] = source.describe()
    results = report.results_document(suite, source.spec, scores, settings, notes)
    files = [p for p in (config.data, config.instructions, config.reference, config.include_path) if p is not None]
    inputs = [describe_input(source.spec)] + [describe_input(p) for p in files]
    report.write_eval(out, results, config=to_dict(config), inputs=inputs)
    return results


def _run_resumable(config: EvalConfig, suite: str, model: str) -> dict:
    """AlpacaEval writes into OUT as it goes (generation is the slow part and must survive a judge
    failure); the manifest, written last, marks it complete. An OUT without one is resumed."""
    from aot_cli.eval import alpaca
    from aot_cli.eval.source import resolve_device, resolve_model

    out = Path(config.output)
    if out.exists():
        if config.overwrite:
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        elif (out / MANIFEST).is_file() or not out.is_dir():
            raise UserError(f"{out} already exists (pass --overwrite to replace it)")
    source = resolve_model(model)
    out.mkdir(parents=True, exist_ok=True)
    scores, settings, notes = alpaca.evaluate(config, source, resolve_device(config.device), out)
    return _finish(out, config, suite, source, scores, settings, notes)
