"""Leaderboard suites: the v1 group YAML resolves to the leaderboard's shots and metrics; the v2
normalization on hand-computed numbers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from aot_cli.eval import leaderboard
from aot_cli.eval.leaderboard import normalize_within_range, v1_scores, v2_scores
from aot_cli.eval.lm_eval_suites import TASKS_DIR, V1_GROUP_FILE, group_shots


def test_v1_group_yaml_shots():
    assert group_shots(V1_GROUP_FILE) == {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5,
                                          "truthfulqa_mc2": 0, "winogrande": 5, "gsm8k": 5}
    assert set(group_shots(V1_GROUP_FILE)) == set(leaderboard.V1_METRICS)


def test_v1_group_resolves_through_lm_eval(monkeypatch):
    """Build the group with lm-eval's own factory, recording each leaf task's resolved config
    instead of loading its dataset (no hub access): every leaf gets its shots and its metric."""
    import lm_eval.tasks
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import _factory
    from lm_eval.tasks._index import TaskIndex

    class Recorded(ConfigurableTask):
        def __init__(self, config):
            self.cfg = dict(config)

        @property
        def task_name(self):
            return self.cfg["task"]

    monkeypatch.setattr(_factory, "ConfigurableTask", Recorded)
    root = Path(lm_eval.tasks.__file__).parent
    dirs = [root / d for d in ("arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k")] + [TASKS_DIR]
    index = TaskIndex().build(dirs)
    group = _factory.TaskFactory().build(index["aot_openllm_v1"], registry=index)
    leaves = {t.task_name: t.cfg for t in group.get_all_tasks()}
    shots = Counter(("mmlu" if name.startswith("mmlu_") else name, cfg["num_fewshot"]) for name, cfg in leaves.items())
    assert shots == Counter({("mmlu", 5): 57, ("arc_challenge", 25): 1, ("hellaswag", 10): 1,
                             ("truthfulqa_mc2", 0): 1, ("winogrande", 5): 1, ("gsm8k", 5): 1})
    for task, key in leaderboard.V1_METRICS.items():
        metric, filt = key.split(",")
        cfg = leaves[task] if task in leaves else leaves["mmlu_anatomy"]
        assert metric in [m["metric"] for m in cfg["metric_list"]], task
        if filt != "none":
            assert filt in [f["name"] for f in cfg["filter_list"]], task


def test_v1_scores_and_average():
    keys = leaderboard.V1_METRICS
    results = {task: {key: v, key.replace(",", "_stderr,"): 0.01}
               for (task, key), v in zip(keys.items(), [0.5, 0.7, 0.6, 0.4, 0.8, 0.1])}
    scores = v1_scores(results)
    assert scores["arc_challenge"] == {"acc_norm": 0.5} and scores["gsm8k"] == {"exact_match": 0.1}
    assert scores["truthfulqa_mc2"] == {"mc2": 0.4}      # lm-eval's "acc" of this task is the MC2 score
    assert scores["average"]["score"] == pytest.approx(3.1 / 6)


def test_normalize_within_range_hand_numbers():
    assert normalize_within_range(0.6, 0.25) == pytest.approx(46.6667, abs=1e-4)  # the leaderboard's GPQA example
    assert normalize_within_range(0.25, 0.25) == 0.0
    assert normalize_within_range(0.1, 0.25) == 0.0          # below random: clipped at 0
    assert normalize_within_range(1.0, 0.2) == pytest.approx(100.0)
    assert normalize_within_range(0.3, 0.0) == pytest.approx(30.0)


def test_v2_scores_hand_numbers():
    results = {f"leaderboard_bbh_{name}": {"acc_norm,none": 1.0} for name in leaderboard.BBH_CHOICES}
    results["leaderboard_bbh_boolean_expressions"] = {"acc_norm,none": 0.75}        # 2 choices -> 50
    results["leaderboard_musr_murder_mysteries"] = {"acc_norm,none": 0.7}           # 2 choices -> 40
    results["leaderboard_musr_object_placements"] = {"acc_norm,none": 0.4}          # 5 choices -> 25
    results["leaderboard_musr_team_allocation"] = {"acc_norm,none": 0.6}            # 3 choices -> 40
    results["leaderboard_gpqa"] = {"acc_norm,none": 0.6}                            # 4 choices -> 46.67
    results["leaderboard_mmlu_pro"] = {"acc,none": 0.05}                            # below 0.1 -> 0
    results["leaderboard_math_hard"] = {"exact_match,none": 0.2}                    # -> 20
    results["leaderboard_ifeval"] = {"inst_level_strict_acc,none": 0.5, "prompt_level_strict_acc,none": 0.3}
    scores = v2_scores(results)
    assert scores["bbh"]["normalized"] == pytest.approx((23 * 100 + 50) / 24)
    assert scores["musr"]["normalized"] == pytest.approx(35.0)
    assert scores["gpqa"]["normalized"] == pytest.approx(140 / 3)
    assert scores["mmlu_pro"]["normalized"] == 0.0
    assert scores["math_lvl5"]["normalized"] == pytest.approx(20.0)
    assert scores["ifeval"]["normalized"] == pytest.approx(40.0)
    expected = (40 + (23 * 100 + 50) / 24 + 20 + 140 / 3 + 35 + 0) / 6
    assert scores["average"]["normalized"] == pytest.approx(expected)


def test_v2_choice_counts_match_lm_eval_yamls():
    """The baselines' choice counts are the doc_to_choice lists of lm-eval's own task files."""
    import lm_eval.tasks
    import yaml

    folder = Path(lm_eval.tasks.__file__).parent / "leaderboard" / "bbh_mc"
    for name, n in leaderboard.BBH_CHOICES.items():
        text = (folder / f"{name}.yaml").read_text()
        line = next(line for line in text.splitlines() if line.startswith("doc_to_choice:"))
        assert len(yaml.safe_load(line)["doc_to_choice"]) == n, name


def test_task_scores_keeps_filters_and_skips_stderr():
    raw = {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict-match": 0.25,
                 "sample_len": 3}}
    assert leaderboard.task_scores(raw) == {"t": {"acc": 0.5, "exact_match,strict-match": 0.25}}
