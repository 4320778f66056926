"""Operations on normalized rows: scores, labels, binarize, hygiene, split, unpair (hand-counted)."""

from __future__ import annotations

from collections import Counter

import pytest
from datasets import Dataset

from aot_cli.data.dataset import to_dataset
from aot_cli.data.operations import (ScoreExpr, binarize, hygiene, held_out_count, split_indices, to_label,
                                     unpair)
from aot_cli.errors import UserError


def test_score_expression_weights_fields_and_skips_missing():
    expr = ScoreExpr("0.5*helpfulness + 2*honesty + bonus")
    assert expr.fields == ["helpfulness", "honesty", "bonus"]
    assert expr({"helpfulness": 4, "honesty": "3", "bonus": 1}, "w") == 0.5 * 4 + 2 * 3 + 1
    assert expr({"helpfulness": 4, "honesty": "N/A", "bonus": 1}, "w") is None
    assert expr({"helpfulness": 4, "bonus": 1}, "w") is None
    assert expr({"helpfulness": float("nan"), "honesty": 1, "bonus": 1}, "w") is None  # NaN: a missing rating
    with pytest.raises(UserError, match="w: field 'bonus': expected a number for score, got list"):
        expr({"helpfulness": 4, "honesty": 1, "bonus": [1]}, "w")
    with pytest.raises(UserError, match="cannot read '3\\*'"):
        ScoreExpr("a + 3*")
    # HelpSteer2's reward weights penalize verbosity; a hyphen inside a name is part of the name.
    expr = ScoreExpr("0.65*helpfulness + 0.8*correctness - 0.4*verbosity - fine-grained_score")
    assert expr.terms == [(0.65, "helpfulness"), (0.8, "correctness"), (-0.4, "verbosity"),
                          (-1.0, "fine-grained_score")]
    assert ScoreExpr("-2*a+b").terms == [(-2.0, "a"), (1.0, "b")]


def test_to_label_flags_and_thresholds():
    assert [to_label(v, None, "w", "f") for v in (True, 0, 1, "false", "TRUE", "1")] == \
        [True, False, True, False, True, True]
    assert [to_label(v, 3, "w", "f") for v in (2, 3, 4.5, "3.5")] == [False, True, True, True]
    with pytest.raises(UserError, match="w: field 'f': expected true/false or 1/0, got float 0.7"):
        to_label(0.7, None, "w", "f")
    with pytest.raises(UserError, match="expected a number to compare with label_threshold, got str 'x'"):
        to_label("x", 1, "w", "f")


def _scored(prompt, *scores):
    return [{"prompt": prompt, "completion": f"{prompt}-{i}", "score": s} for i, s in enumerate(scores)]


def test_binarize_best_vs_worst_counts_every_drop():
    records = (_scored("a", 1, 5, 3) + _scored("b", 2, 2) + _scored("c", 4, None) + _scored("d", 1, 1.5)
               + _scored("e", 0, 9))
    pairs, dropped = binarize(records, "best-vs-worst", 1.0, seed=0)
    assert pairs == [{"prompt": "a", "chosen": "a-1", "rejected": "a-0"},
                     {"prompt": "e", "chosen": "e-1", "rejected": "e-0"}]
    assert dropped == Counter(tie=1, missing_score=1, too_few_responses=1, below_min_margin=1)


def test_binarize_best_vs_random_picks_a_strictly_lower_response():
    rejected = {binarize(_scored("a", 9, 1, 2, 3, 9), "best-vs-random", 0, seed=s)[0][0]["rejected"]
                for s in range(30)}
    assert rejected == {"a-1", "a-2", "a-3"}
    assert binarize(_scored("a", 9, 1, 2), "best-vs-random", 0, seed=7) == \
        binarize(_scored("a", 9, 1, 2), "best-vs-random", 0, seed=7)


def test_hygiene_on_messages_and_across_splits():
    m = lambda role, text: [{"role": role, "content": text}]
    rows = [{"prompt": m("user", "q"), "completion": m("assistant", "a"), "label": True},
            {"prompt": m("user", "q"), "completion": m("assistant", "a"), "label": False},  # not a duplicate
            {"prompt": m("user", "q"), "completion": m("assistant", " "), "label": True},
            {"prompt": [], "completion": m("assistant", "b"), "label": True}]
    ds = to_dataset(rows, paired=False, conversational=True)
    kept, dropped = hygiene(ds, paired=False, seen=set())
    assert len(kept) == 2 and dropped == Counter(empty_completion=1, empty_prompt=1)
    seen: set = set()
    hygiene(ds.select([0]), paired=False, seen=seen)
    kept, dropped = hygiene(ds, paired=False, seen=seen)
    assert len(kept) == 1 and dropped["duplicate"] == 1


def test_held_out_count_fraction_and_count():
    assert [held_out_count(100, t) for t in (0, 0.1, 0.25, 1, 7)] == [0, 10, 25, 1, 7]
    assert held_out_count(3, 0.01) == 1
    with pytest.raises(UserError, match="test_size 2.5: a count must be a whole number"):
        held_out_count(5, 2.5)
    with pytest.raises(UserError, match="leaves no training rows"):
        held_out_count(5, 5)


def test_split_stratified_keeps_the_balance():
    labels = [True] * 30 + [False] * 10
    train, test = split_indices(40, 0.25, seed=1, labels=labels)
    assert len(test) == 10 and sum(labels[i] for i in test) in (7, 8)
    assert sorted(train + test) == list(range(40))
    train, test = split_indices(40, 4, seed=1, labels=labels)
    assert sum(labels[i] for i in test) == 3 and len(test) == 4


def test_split_by_prompt_never_shares_a_prompt():
    groups = ["a", "a", "a", "b", "c", "c", "d", "e"]
    for seed in range(10):
        train, test = split_indices(8, 2, seed=seed, groups=groups)
        assert len(test) == 2 and not {groups[i] for i in train} & {groups[i] for i in test}


def test_split_by_prompt_never_empties_train():
    # The test split takes whole prompts without overshooting; when every prompt is larger than the
    # count asked for, the smallest one goes; a single prompt cannot be split at all.
    assert split_indices(4, 1, seed=0, groups=["a", "a", "a", "b"]) == ([0, 1, 2], [3])
    assert split_indices(5, 1, seed=0, groups=["a", "a", "a", "b", "b"]) == ([0, 1, 2], [3, 4])
    with pytest.raises(UserError, match="all 4 rows share one prompt"):
        split_indices(4, 1, seed=0, groups=["a"] * 4)


def _pairs(rows):
    return to_dataset([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows], paired=True,
                      conversational=False)


def test_unpair_both_halves_in_order():
    out, dropped = unpair(_pairs([("p", "a", "b"), ("q", "c", "d")]), disjoint=False, seed=0)
    assert out.to_list() == [{"prompt": "p", "completion": "a", "label": True},
                             {"prompt": "p", "completion": "b", "label": False},
                             {"prompt": "q", "completion": "c", "label": True},
                             {"prompt": "q", "completion": "d", "label": False}]
    assert not dropped


def test_unpair_disjoint_prompts_balance_and_trim():
    rows = [(f"p{i}", f"good{i}", f"bad{i}") for i in range(5)] + [("p0", "good0", "worse0")]
    out, dropped = unpair(_pairs(rows), disjoint=True, seed=3)
    labels = out["label"]
    assert labels.count(True) == labels.count(False) == 2 and dropped == Counter(unpair_balance=1)
    pos = {p for p, lab in zip(out["prompt"], labels) if lab}
    neg = {p for p, lab in zip(out["prompt"], labels) if not lab}
    assert not pos & neg
    for row in out:
        assert row["completion"].startswith("good" if row["label"] else ("bad", "worse"))


def test_unpair_of_an_empty_split_has_the_columns():
    out, _ = unpair(_pairs([]), disjoint=False, seed=0)
    assert out.column_names == ["prompt", "completion", "label"] and len(out) == 0
    assert isinstance(out, Dataset)


def test_scores_and_thresholds_must_be_finite_numbers():
    """An infinite score (or an integer past float range, which overflowed) made margins inf or NaN,
    and a NaN margin kept an all-infinite tie as a pair; 10**400 against --label-threshold crashed."""
    expr = ScoreExpr("helpfulness")
    for value in (float("inf"), "-inf", "1e400", 10 ** 400):
        with pytest.raises(UserError, match="field 'helpfulness': expected a finite number for score, got"):
            expr({"helpfulness": value}, "w")
    with pytest.raises(UserError, match="got an integer of about 401 digits"):
        expr({"helpfulness": 10 ** 400}, "w")
    assert expr({"helpfulness": 10 ** 300}, "w") == 1e300
    with pytest.raises(UserError, match="w: score '2\\*a \\+ b' is too large to compute"):
        ScoreExpr("2*a + b")({"a": 1e308, "b": 1}, "w")
    for value in (10 ** 400, float("nan"), "nan"):
        with pytest.raises(UserError, match="expected a number to compare with label_threshold"):
            to_label(value, 1, "w", "f")
    assert to_label(float("inf"), 1, "w", "f") is True
