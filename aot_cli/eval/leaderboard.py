"""Scores of the Open LLM Leaderboard suites from lm-eval results: pure functions, no lm-eval import.

v1 (the paper's Table 1): six tasks, each read at the leaderboard's metric, and their plain average.
v2: the ``leaderboard`` group, normalized the leaderboard's way so a random guesser scores 0: per task
(or per subtask, for BBH and MuSR, whose subtasks have different numbers of choices) the raw score
becomes ``max(score - baseline, 0) / (1 - baseline) * 100`` with baseline = 1 / number of choices,
subtasks are averaged without weights, and the six task scores are averaged. MATH and IFEval are
generative (baseline 0); IFEval is the mean of instruction- and prompt-level strict accuracy.
Source: huggingface.co/docs/leaderboards/open_llm_leaderboard/normalization.
"""

from __future__ import annotations

# lm-eval result key ("metric,filter") of each v1 task; the shots live in tasks/openllm_v1.yaml.
V1_METRICS = {
    "arc_challenge": "acc_norm,none",
    "hellaswag": "acc_norm,none",
    "mmlu": "acc,none",
    "truthfulqa_mc2": "acc,none",
    "winogrande": "acc,none",
    "gsm8k": "exact_match,strict-match",
}
# Score names where lm-eval's differs from the leaderboard's: truthfulqa_mc2 reports its MC2 score as acc.
V1_NAMES = {"truthfulqa_mc2": "mc2"}

# Number of answer choices of each leaderboard_bbh_* subtask (its doc_to_choice list in lm-eval).
BBH_CHOICES = {
    "boolean_expressions": 2, "causal_judgement": 2, "date_understanding": 6, "disambiguation_qa": 3,
    "formal_fallacies": 2, "geometric_shapes": 11, "hyperbaton": 2, "logical_deduction_five_objects": 5,
    "logical_deduction_seven_objects": 7, "logical_deduction_three_objects": 3, "movie_recommendation": 6,
    "navigate": 2, "object_counting": 19, "penguins_in_a_table": 5, "reasoning_about_colored_objects": 18,
    "ruin_names": 6, "salient_translation_error_detection": 6, "snarks": 2, "sports_understanding": 2,
    "temporal_sequences": 4, "tracking_shuffled_objects_five_objects": 5,
    "tracking_shuffled_objects_seven_objects": 7, "tracking_shuffled_objects_three_objects": 3,
    "web_of_lies": 2,
}
MUSR_CHOICES = {"murder_mysteries": 2, "object_placements": 5, "team_allocation": 3}
GPQA_CHOICES = 4
MMLU_PRO_CHOICES = 10


def normalize_within_range(score: float, baseline: float) -> float:
    """The leaderboard's normalization: 0 at (or below) the random baseline, 100 at a perfect score."""
    return max(score - baseline, 0.0) / (1.0 - baseline) * 100.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _metric(results: dict, task: str, key: str) -> float:
    try:
        return float(results[task][key])
    except KeyError:
        raise KeyError(f"lm-eval results lack {task!r} {key!r}") from None


def v1_scores(results: dict) -> dict:
    """{task: {metric: value}} for the six v1 tasks plus {"average": {"score": mean}} (0-1 scale)."""
    scores = {task: {V1_NAMES.get(task, key.split(",")[0]): _metric(results, task, key)}
              for task, key in V1_METRICS.items()}
    scores["average"] = {"score": _mean([next(iter(s.values())) for s in scores.values()])}
    return scores


def v2_scores(results: dict) -> dict:
    """Normalized leaderboard v2 scores (0-100) per task and their average, from lm-eval ``results``."""
    bbh = _mean([normalize_within_range(_metric(results, f"leaderboard_bbh_{name}", "acc_norm,none"), 1 / n)
                 for name, n in BBH_CHOICES.items()])
    musr = _mean([normalize_within_range(_metric(results, f"leaderboard_musr_{name}", "acc_norm,none"), 1 / n)
                  for name, n in MUSR_CHOICES.items()])
    gpqa = normalize_within_range(_metric(results, "leaderboard_gpqa", "acc_norm,none"), 1 / GPQA_CHOICES)
    mmlu_pro = normalize_within_range(_metric(results, "leaderboard_mmlu_pro", "acc,none"), 1 / MMLU_PRO_CHOICES)
    math = normalize_within_range(_metric(results, "leaderboard_math_hard", "exact_match,none"), 0.0)
    ifeval = _mean([normalize_within_range(_metric(results, "leaderboard_ifeval", key), 0.0)
                    for key in ("inst_level_strict_acc,none", "prompt_level_strict_acc,none")])
    scores = {"ifeval": ifeval, "bbh": bbh, "math_lvl5": math, "gpqa": gpqa, "musr": musr, "mmlu_pro": mmlu_pro}
    out = {task: {"normalized": value} for task, value in scores.items()}
    out["average"] = {"normalized": _mean(list(scores.values()))}
    return out


def task_scores(results: dict) -> dict:
    """Every metric lm-eval reported, as {task: {metric: value}}; the filter name is kept unless 'none'."""
    scores = {}
    for task, metrics in results.items():
        values = {}
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            values[metric if filt == "none" else f"{metric},{filt}"] = float(value)
        if values:
            scores[task] = values
    return scores
