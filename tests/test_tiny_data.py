"""The generated preference set (aot_cli/tiny_data.py): deterministic, follows its rule, has no length
signal, goes through `aot prepare`, and is learned by the tiny model with `make demo`'s settings."""

from __future__ import annotations

import json

import pytest

from aot_cli.errors import UserError
from aot_cli.tiny_data import MAIN, MOODS, MORE, corpus, labelled_rows, main, preference_pairs


def _moods(answer: str) -> set[str]:
    """The moods whose phrases occur in an answer."""
    return {mood for mood in MOODS if any(phrase in answer for phrase in MAIN[mood] + MORE[mood])}


def test_first_row_and_determinism():
    pairs = preference_pairs(1280, seed=0)
    assert pairs[0] == {"prompt": "Give me one cheerful line about the stone kettle.",
                        "chosen": "The stone kettle sparkles like a happy song.",
                        "rejected": "The stone kettle hides from friends in grey shadows."}
    assert preference_pairs(1280, seed=0) == pairs
    assert preference_pairs(1280, seed=1) != pairs


def test_chosen_is_in_the_mood_the_prompt_asks_for_and_rejected_in_the_other():
    pairs = preference_pairs(1280, seed=0)
    assert len({p["prompt"] for p in pairs}) == 1280  # every prompt once: a split by prompt holds out new ones
    asked = [[m for m in MOODS if m in p["prompt"]] for p in pairs]
    assert all(len(a) == 1 for a in asked)
    assert sum(a == ["cheerful"] for a in asked) == 656  # about half of each mood: no answer word wins alone
    for pair, (mood,) in zip(pairs, asked):
        assert _moods(pair["chosen"]) == {mood} and _moods(pair["rejected"]) == set(MOODS) - {mood}
        thing = " ".join(pair["chosen"].split()[1:3])  # both answers are about the prompt's thing
        assert f" the {thing}" in pair["prompt"] and pair["rejected"].startswith(f"The {thing} ")


def test_length_says_nothing_about_preference():
    pairs = preference_pairs(1280, seed=0)
    words = [(len(p["chosen"].split()), len(p["rejected"].split())) for p in pairs]
    longer = sum(c > r for c, r in words) / len(words)
    shorter = sum(c < r for c, r in words) / len(words)
    assert longer == pytest.approx(0.4414, abs=1e-4) and shorter == pytest.approx(0.4641, abs=1e-4)
    assert {c - r for c, r in words} >= set(range(-6, 7))  # differences of every size, both ways


def test_unpaired_variant_one_answer_per_prompt_balanced_labels():
    pairs, rows = preference_pairs(10, seed=3), labelled_rows(10, seed=3)
    assert [r["label"] for r in rows] == [True, False] * 5
    assert [r["completion"] for r in rows] == [p["chosen" if i % 2 == 0 else "rejected"] for i, p in enumerate(pairs)]
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in pairs]


def test_corpus_is_every_text_of_a_generated_set():
    texts = corpus(rows=4, seed=0)
    assert texts == [t for p in preference_pairs(4, seed=0) for t in (p["prompt"], p["chosen"], p["rejected"])]


def test_rows_out_of_range_is_a_user_error(capsys, tmp_path):
    with pytest.raises(UserError, match="--rows 2689: the generator has 2688 distinct prompts; ask for 1 to 2688 rows"):
        preference_pairs(2689)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "x.jsonl"), "--rows", "0"])
    assert exit_info.value.code == 2 and not (tmp_path / "x.jsonl").exists()
    assert capsys.readouterr().err == ("error: --rows 0: the generator has 2688 distinct prompts; "
                                       "ask for 1 to 2688 rows\n")


def test_cli_writes_jsonl_that_prepare_reads(aot, tmp_path):
    from aot_cli.data.dataset import load_prepared

    main([str(tmp_path / "src" / "pairs.jsonl"), "--rows", "20", "--seed", "5"])
    main([str(tmp_path / "src" / "labels.jsonl"), "--rows", "20", "--seed", "5", "--unpaired"])
    lines = (tmp_path / "src" / "pairs.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == preference_pairs(20, seed=5)
    for name, shape, paired in (("pairs", "paired-strings", True), ("labels", "labelled", False)):
        result = aot("prepare", tmp_path / "src" / f"{name}.jsonl", "--test-size", "4", "-o", tmp_path / name)
        assert result.exit_code == 0, result
        artifact, _ = load_prepared(tmp_path / name)
        assert artifact.summary["format"] == shape and artifact.paired is paired
        assert artifact.counts == {"train": 16, "test": 4}


@pytest.mark.slow
def test_the_tiny_model_learns_the_rule_with_the_demo_settings(aot, tiny_model_dir, tmp_path):
    """`make demo`'s data and training flags: held-out implicit-reward accuracy far above chance."""
    source = tmp_path / "prefs.jsonl"
    main([str(source), "--rows", "1280", "--seed", "0"])
    assert aot("prepare", source, "--test-size", "0.1", "-o", tmp_path / "data").exit_code == 0
    result = aot("train", "--model", tiny_model_dir, "--data", tmp_path / "data", "-o", tmp_path / "run",
                 "--loss", "aot", "--max-steps", 120, "--batch-size", 4, "--grad-accum", 4, "--lr", 5e-3,
                 "--max-length", 128, "--max-prompt-length", 64, "--save-steps", 0)
    assert result.exit_code == 0, result
    result = aot("eval", "dominance", tmp_path / "run", "-o", tmp_path / "dom")  # the run's own dataset
    assert result.exit_code == 0, result
    scores = json.loads((tmp_path / "dom" / "results.json").read_text())["scores"]
    assert scores["implicit_rewards"]["accuracy"] >= 0.9 and scores["implicit_rewards"]["violation_fraction"] == 0
    assert scores["after"]["mean_difference"] > scores["before"]["mean_difference"] + 0.05
