"""Shape recognition and row normalization, one rule at a time."""

from __future__ import annotations

import pytest

from aot_cli.data.formats import (Drop, ShapeOptions, column_list, detect_shape, hh_messages, normalize_row,
                                  split_last_user, split_shared_prompt)
from aot_cli.data.operations import ScoreExpr
from aot_cli.errors import UserError

U = lambda c: {"role": "user", "content": c}
A = lambda c: {"role": "assistant", "content": c}


@pytest.mark.parametrize("row, shape", [
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "paired-strings"),
    ({"question": "q", "response_j": "a", "response_k": "b"}, "paired-strings"),
    ({"prompt": "p", "chosen": [U("p"), A("a")], "rejected": [U("p"), A("b")]}, "paired-messages"),
    ({"chosen": [U("p"), A("a")], "rejected": [U("p"), A("b")]}, "paired-messages"),
    ({"chosen": "\n\nHuman: p\n\nAssistant: a", "rejected": "\n\nHuman: p\n\nAssistant: b"}, "hh"),
    ({"conversations": [], "chosen": {}, "rejected": {}}, "sharegpt"),
    ({"instruction": "p", "completions": []}, "ultrafeedback"),
    ({"prompt": "p", "response": "a", "helpfulness": 3, "verbosity": 1}, "scored"),
    ({"prompt": "p", "response": "a", "helpfulness": "3"}, "scored"),  # a CSV row
    ({"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0}, "pku"),
    ({"prompt": "p", "completion": "a", "label": True}, "labelled"),
    ({"prompt": "p", "response": "a", "is_safe": False, "category": {}}, "labelled"),
    ({"messages": [U("p"), A("a")], "label": True}, "labelled"),
])
def test_detect_shape(row, shape):
    assert detect_shape(set(row), row) == shape


def test_detect_shape_with_a_custom_label_field():
    row = {"prompt": "p", "response": "a", "good": True}
    assert detect_shape(set(row), row, label_field="good") == "labelled"


def test_unknown_shape_names_columns_and_known_shapes():
    with pytest.raises(UserError, match=r"found columns a, b; known shapes: paired-strings \(prompt"):
        detect_shape({"a", "b"}, {"a": 1, "b": 2})
    with pytest.raises(UserError, match="found columns chosen, rejected"):  # strings without prompt or HH turns
        detect_shape({"chosen", "rejected"}, {"chosen": "a", "rejected": "b"})


def test_hh_transcript_to_messages():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 4\nmore"
    assert hh_messages(text) == [U("Hi there"), A("Hello!"), U("2+2?"), A("4\nmore")]
    assert hh_messages(text.lstrip("\n")) == hh_messages(text)


def test_shared_prompt_is_cut_back_to_the_last_user_turn():
    chosen = [U("q"), A("a"), U("r"), A("yes")]
    rejected = [U("q"), A("a"), U("r"), A("no")]
    assert split_shared_prompt(chosen, rejected) == ([U("q"), A("a"), U("r")], [A("yes")], [A("no")])
    assert split_shared_prompt([U("q"), A("x")], [U("q"), A("x")]) == ([U("q")], [A("x")], [A("x")])
    assert split_shared_prompt([U("q"), A("x")], [U("other"), A("x")]) is None
    assert split_last_user([U("q"), A("a"), U("r"), A("b")]) == ([U("q"), A("a"), U("r")], [A("b")])


def test_roles_are_normalized_and_content_untouched():
    row = {"conversations": [{"from": "human", "value": "  hi  "}], "chosen": {"from": "gpt", "value": "a "},
           "rejected": {"from": "gpt", "value": "b"}, "system": "sys"}
    (record,) = normalize_row("sharegpt", row, "f:1", ShapeOptions())
    assert record == {"prompt": [{"role": "system", "content": "sys"}, U("  hi  ")], "chosen": [A("a ")],
                      "rejected": [A("b")]}


def test_paired_messages_with_a_message_prompt_strips_it_from_the_answers():
    row = {"prompt": [U("q")], "chosen": [U("q"), A("a")], "rejected": [A("b")]}
    assert normalize_row("paired-messages", row, "w", ShapeOptions()) == \
        [{"prompt": [U("q")], "chosen": [A("a")], "rejected": [A("b")]}]
    row = {"prompt": "q", "chosen": [A("a")], "rejected": [A("b")]}
    assert normalize_row("paired-messages", row, "w", ShapeOptions()) == \
        [{"prompt": [U("q")], "chosen": [A("a")], "rejected": [A("b")]}]


def test_drop_reasons_and_errors():
    opts = ShapeOptions()
    assert normalize_row("paired-strings", {"prompt": "p", "chosen": "a"}, "f:2", opts) == \
        Drop("missing_field", "f:2: field 'rejected' is missing or null")
    assert normalize_row("ultrafeedback", {"instruction": "p", "completions": []}, "w", opts) == \
        Drop("too_few_responses", "w")
    assert normalize_row("hh", {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: x"},
                         "w", opts) == Drop("no_shared_prompt", "w")
    with pytest.raises(UserError, match="f:3: field 'better_response_id': expected 0 or 1, got 2"):
        normalize_row("pku", {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 2},
                      "f:3", opts)
    with pytest.raises(UserError, match="f:3: field 'chosen\\[1\\]': message content must be a string, got null"):
        normalize_row("paired-messages", {"chosen": [U("q"), {"role": "assistant", "content": None}],
                                          "rejected": [U("q")]}, "f:3", opts)


def test_ultrafeedback_reads_ratings_from_annotations():
    row = {"instruction": "p", "completions": [
        {"response": "a", "overall_score": 5, "annotations": {"honesty": {"Rating": "4"}}},
        {"response": "b", "overall_score": 7, "annotations": {"honesty": {"Rating": "N/A"}}}]}
    records = normalize_row("ultrafeedback", row, "w", ShapeOptions(score=ScoreExpr("honesty")))
    assert [(r["completion"], r["score"]) for r in records] == [("a", 4.0), ("b", None)]
    labelled = normalize_row("ultrafeedback", row, "w", ShapeOptions(label_field="overall_score", label_threshold=6))
    assert [r["label"] for r in labelled] == [False, True]


def test_fields_of_any_json_type_are_errors_not_crashes():
    """What the property tests (tests/test_prepare_properties.py) found: a role that is a list or an
    object (unhashable), a response id of 1.0 (used as a list index), annotations that are a list."""
    opts = ShapeOptions()
    for role in ([], {}, 1, None):
        with pytest.raises(UserError, match="field 'chosen\\[0\\]': unknown role"):
            normalize_row("paired-messages", {"chosen": [{"role": role, "content": "a"}], "rejected": []}, "w", opts)
    pku = {"prompt": "p", "response_0": "a", "response_1": "b"}
    for winner in (1, 1.0, "1", " 1 "):  # CSV cells are strings
        assert normalize_row("pku", {**pku, "better_response_id": winner}, "w", opts) == \
            [{"prompt": "p", "chosen": "b", "rejected": "a"}]
    for winner in (True, 0.5, "x", [], {}, 2):
        with pytest.raises(UserError, match="field 'better_response_id': expected 0 or 1"):
            normalize_row("pku", {**pku, "better_response_id": winner}, "w", opts)
    with pytest.raises(UserError, match="w: field 'completions\\[0\\].annotations': expected an object, got list"):
        normalize_row("ultrafeedback", {"instruction": "p", "completions": [
            {"response": "a", "overall_score": 1, "annotations": ["x"]}]}, "w", ShapeOptions(score=ScoreExpr("x")))
    sharegpt = {"conversations": [U("q")], "chosen": A("a"), "rejected": A("b")}
    with pytest.raises(UserError, match="w: field 'system': expected a string, got int"):
        normalize_row("sharegpt", {**sharegpt, "system": 3}, "w", opts)
    assert normalize_row("sharegpt", {**sharegpt, "system": None}, "w", opts)[0]["prompt"] == [U("q")]


def test_column_names_with_line_breaks_keep_an_error_on_one_line():
    assert column_list(["b", "a", "x\ny", "c\u2028d", " padded", ""]) == "'', ' padded', a, b, 'c\\u2028d', 'x\\ny'"
    with pytest.raises(UserError) as error:
        detect_shape({"a\nb"}, {})
    assert "found columns 'a\\nb';" in str(error.value) and "\n" not in str(error.value).split("known shapes")[0]
