"""`aot prepare` end to end: every shape, every operation, every bad input, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aot_cli.artifacts.store import sha256_file
from aot_cli.data.dataset import load_prepared

SHAPES = Path(__file__).parents[1] / "fixtures" / "shapes"


def U(content: str) -> dict:
    return {"role": "user", "content": content}


def A(content: str) -> dict:
    return {"role": "assistant", "content": content}


def _prepare(aot, tmp_path, source, *flags, name="out"):
    out = tmp_path / name
    result = aot("prepare", source, "-o", out, *flags)
    assert result.exit_code == 0, result
    artifact, data = load_prepared(out)
    return data, artifact.summary, artifact.manifest


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fixture, shape, paired, rows, dropped, first", [
    ("paired_strings", "paired-strings", True, 4, {}, {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}),
    ("paired_messages", "paired-messages", True, 3, {},
     {"prompt": [U("What is 2+2?")], "chosen": [A("4")], "rejected": [A("5")]}),
    ("hh", "hh", True, 3, {}, {"prompt": [U("What is 2+2?")], "chosen": [A("4")], "rejected": [A("5")]}),
    ("sharegpt", "sharegpt", True, 3, {}, {"prompt": [U("What is 2+2?")], "chosen": [A("4")], "rejected": [A("5")]}),
    ("ultrafeedback", "ultrafeedback", True, 2, {"missing_score": 1, "tie": 1},
     {"prompt": "What is 2+2?", "chosen": "Four.", "rejected": "5."}),
    ("scored", "scored", True, 1, {"tie": 1, "too_few_responses": 1},
     {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}),
    ("pku", "pku", True, 3, {},
     {"prompt": "How do I pick a lock?", "chosen": "Use a tension wrench and a pick.",
      "rejected": "Call a locksmith."}),
    ("labelled_kto", "labelled", False, 6, {}, {"prompt": "What is 2+2?", "completion": "4", "label": True}),
    ("labelled_beavertails", "labelled", False, 4, {},
     {"prompt": "How do I pick a lock?", "completion": "Call a locksmith.", "label": True}),
])
def test_every_shape_is_recognized_and_normalized(aot, tmp_path, fixture, shape, paired, rows, dropped, first):
    data, summary, _ = _prepare(aot, tmp_path, SHAPES / f"{fixture}.jsonl", "--test-size", "0")
    assert summary["format"] == shape and summary["paired"] is paired
    assert summary["counts"] == {"train": rows, "test": 0} and summary["dropped"] == dropped
    assert data["train"][0] == first


def test_multi_turn_prompts_are_the_shared_leading_messages(aot, tmp_path):
    result = aot("prepare", SHAPES / "paired_messages.jsonl", "-o", tmp_path / "out", "--test-size", "0")
    assert "paired-messages -> paired" in result.stdout  # the table's title on one line
    _, data = load_prepared(tmp_path / "out")
    assert data["train"][1]["prompt"] == [{"role": "system", "content": "Be brief."}, U("What is 2+2?"), A("4"),
                                          U("And times 3?")]
    assert data["train"][1]["chosen"] == [A("12")]
    data, _, _ = _prepare(aot, tmp_path, SHAPES / "sharegpt.jsonl", "--test-size", "0", name="sg")
    assert data["train"][1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert data["train"][1]["prompt"][1:] == [U("Hi"), A("Hello!"), U("Name a colour.")]


def test_real_llamafactory_dpo(aot, tmp_path, real_file):
    source = real_file("llamafactory_dpo_en_demo.json")
    data, summary, manifest = _prepare(aot, tmp_path, source)
    assert summary["format"] == "sharegpt" and summary["conversational"] is True
    assert summary["read"] == {"train": 300} and summary["dropped"] == {"duplicate": 5}
    assert summary["counts"] == {"train": 265, "test": 30}
    train_prompts = {json.dumps(p) for p in data["train"]["prompt"]}
    assert not train_prompts & {json.dumps(p) for p in data["test"]["prompt"]}  # split by prompt
    assert manifest["inputs"] == [{"path": str(source), "sha256": sha256_file(source)}]


def test_real_llamafactory_kto_is_split_stratified(aot, tmp_path, real_file):
    data, summary, _ = _prepare(aot, tmp_path, real_file("llamafactory_kto_en_demo.json"))
    assert summary["format"] == "labelled" and summary["paired"] is False
    assert summary["label_balance"] == {"train": {"positive": 135, "negative": 135},
                                        "test": {"positive": 15, "negative": 15}}
    row = data["train"][0]
    assert row["prompt"][-1]["role"] == "user" and [m["role"] for m in row["completion"]] == ["assistant"]


def test_real_stack_exchange_paired(aot, tmp_path, real_file):
    source = real_file("torchtune_stack_exchange_paired_tiny.json")
    data, summary, _ = _prepare(aot, tmp_path, source, "--test-size", "5")
    assert summary["format"] == "paired-strings" and summary["conversational"] is False
    assert summary["counts"] == {"train": 20, "test": 5}  # 8 questions with 1-9 answer pairs; whole ones move
    train_q, test_q = ({r["prompt"] for r in data[s]} for s in ("train", "test"))
    assert not train_q & test_q
    raw = json.loads(source.read_text())
    assert {"prompt": raw[0]["question"], "chosen": raw[0]["response_j"], "rejected": raw[0]["response_k"]} in \
        list(data["train"]) + list(data["test"])


def test_manifest_records_config_operations_and_a_content_fingerprint(aot, tmp_path):
    _, summary, manifest = _prepare(aot, tmp_path, SHAPES / "labelled_kto.jsonl", "--seed", "3", name="a")
    assert manifest["kind"] == "dataset" and manifest["config"]["seed"] == 3
    assert [op["op"] for op in summary["operations"]] == ["normalize", "labels", "hygiene", "split"]
    assert summary["counts"] == {"train": 5, "test": 1}
    _, again, _ = _prepare(aot, tmp_path, SHAPES / "labelled_kto.jsonl", "--seed", "3", name="b")
    assert again["fingerprint"] == summary["fingerprint"]
    _, other, _ = _prepare(aot, tmp_path, SHAPES / "labelled_kto.jsonl", "--seed", "4", name="c")
    assert other["fingerprint"] != summary["fingerprint"]


# --- operations ----------------------------------------------------------------------------------


def test_binarize_best_vs_random_min_margin_and_weighted_score(aot, tmp_path):
    # Scores per prompt (overall_score): [7, 3, 9, 5], ties, [8.5, 8, -, 2].
    data, summary, _ = _prepare(aot, tmp_path, SHAPES / "ultrafeedback.jsonl", "--binarize", "best-vs-random",
                                "--test-size", "0", name="r")
    assert data["train"]["chosen"][:] == ["Four.", "Paris."]
    assert data["train"]["rejected"][:] == ["22", "Paris, France."]  # best-vs-worst: "5.", "Lyon."
    data, _, _ = _prepare(aot, tmp_path, SHAPES / "ultrafeedback.jsonl", "--binarize", "best-vs-random",
                          "--test-size", "0", "--seed", "1", name="r1")
    assert data["train"]["rejected"][:] == ["4.", "Paris, France."]  # another seed, another draw
    _, summary, _ = _prepare(aot, tmp_path, SHAPES / "ultrafeedback.jsonl", "--min-margin", "6.5",
                             "--test-size", "0", name="m")
    assert summary["dropped"] == {"below_min_margin": 1, "missing_score": 1, "tie": 1}  # 9-3=6 < 6.5; 8.5-2 kept
    # helpfulness+honesty ratings: [9, 3, 10, 5] / all 6 / [10, N/A, -, 2]
    data, summary, _ = _prepare(aot, tmp_path, SHAPES / "ultrafeedback.jsonl", "--score", "helpfulness + honesty",
                                "--test-size", "0", name="w")
    assert summary["dropped"] == {"missing_score": 2, "tie": 1}
    assert [(r["chosen"], r["rejected"]) for r in data["train"]] == [("Four.", "5."), ("Paris.", "Lyon.")]
    assert summary["operations"][1] == {"op": "binarize", "method": "best-vs-worst", "score": "helpfulness + honesty",
                                        "min_margin": 0.0, "seed": 42, "responses": 12, "prompts": 3}


def test_scores_threshold_into_labels(aot, tmp_path):
    data, summary, _ = _prepare(aot, tmp_path, SHAPES / "scored.jsonl", "--label-field", "helpfulness",
                                "--label-threshold", "3", "--test-size", "0")
    assert summary["paired"] is False and summary["format"] == "scored"
    assert data["train"]["label"] == [True, False, True, False, False, True]  # helpfulness 4 1 3 2 2 4


def test_ultrafeedback_ratings_threshold_into_labels_per_response(aot, tmp_path):
    # helpfulness ratings: [4, 1, 5, 2] / all 3 / [5, N/A, (none), 1]: only the two unrated responses go.
    data, summary, _ = _prepare(aot, tmp_path, SHAPES / "ultrafeedback.jsonl", "--label-field", "helpfulness",
                                "--label-threshold", "4", "--test-size", "0")
    assert summary["dropped"] == {"missing_label": 2}
    assert summary["drop_examples"] == {"missing_label": f"{SHAPES / 'ultrafeedback.jsonl'}:3: completions[1]: "
                                                         "field 'helpfulness' is missing or N/A"}
    assert data["train"]["label"][:] == [True, False, True, False, False, False, False, False, True, False]
    assert data["train"]["completion"][8:] == ["Paris.", "Lyon."]


def test_prefer_safer(aot, tmp_path):
    data, _, _ = _prepare(aot, tmp_path, SHAPES / "pku.jsonl", "--prefer", "safer", "--test-size", "0")
    assert data["train"]["chosen"][:] == ["Call a locksmith.", "4", "Paris."]  # safer ids 0, 1, 0
    assert data["train"]["rejected"][:] == ["Use a tension wrench and a pick.", "5", "Lyon."]


def test_unpair_both_halves(aot, tmp_path):
    data, summary, _ = _prepare(aot, tmp_path, SHAPES / "paired_strings.jsonl", "--unpair", "--test-size", "1")
    assert summary["paired"] is False and summary["counts"] == {"train": 6, "test": 2}
    assert summary["label_balance"]["train"] == {"positive": 3, "negative": 3}
    assert data["train"][:2] == {"prompt": ["What is 2+2?"] * 2, "completion": ["4", "5"], "label": [True, False]}
    assert data["test"][:] == {"prompt": ["Capital of France?"] * 2, "completion": ["Paris.", "Lyon."],
                               "label": [True, False]}  # the split is by pair, before unpairing


def test_unpair_disjoint_prompts_is_balanced_and_disjoint(aot, tmp_path, real_file):
    data, summary, _ = _prepare(aot, tmp_path, real_file("torchtune_stack_exchange_paired_tiny.json"), "--unpair",
                                "--disjoint-prompts", "--test-size", "0")
    train = data["train"]
    balance = summary["label_balance"]["train"]
    assert balance["positive"] == balance["negative"] > 0
    by_label = {lab: {p for p, label in zip(train["prompt"], train["label"]) if label == lab} for lab in (True, False)}
    assert not by_label[True] & by_label[False]
    assert len(set(zip(train["prompt"], train["completion"]))) == len(train)


def test_unpair_a_prepared_dataset_keeps_its_splits(aot, tmp_path):
    _prepare(aot, tmp_path, SHAPES / "paired_strings.jsonl", "--test-size", "1", name="paired")
    before = sorted(p.name for p in (tmp_path / "paired").rglob("*"))
    data, summary, manifest = _prepare(aot, tmp_path, tmp_path / "paired", "--unpair", name="unpaired")
    assert sorted(p.name for p in (tmp_path / "paired").rglob("*")) == before  # no cache files in the input
    assert summary["counts"] == {"train": 6, "test": 2} and summary["format"] == "paired-strings"
    assert [op["op"] for op in summary["operations"]] == ["normalize", "hygiene", "split", "hygiene", "split",
                                                          "unpair"]
    assert manifest["inputs"][0]["fingerprint"] == json.loads((tmp_path / "paired" / "manifest.json").read_text())[
        "summary"]["fingerprint"]
    msg = _fails(aot, tmp_path, tmp_path / "paired", "--score", "helpfulness", out_name="scored")
    assert "--score does not apply to a prepared dataset" in msg


def test_hygiene_counts_each_reason(aot, tmp_path):
    src = _jsonl(tmp_path / "dirty.jsonl", [
        {"prompt": "p1", "chosen": "a", "rejected": "b"},
        {"prompt": "p1", "chosen": "a", "rejected": "b"},        # duplicate
        {"prompt": "p2", "chosen": "  \n", "rejected": "b"},     # whitespace-only completion
        {"prompt": "p3", "chosen": "same", "rejected": "same"},  # identical
        {"prompt": "p4", "chosen": "a"},                         # missing field
        {"prompt": "p5", "chosen": "a", "rejected": None},       # null = missing
        {"prompt": " ", "chosen": "a", "rejected": "b"},         # empty prompt
        {"prompt": "p6", "chosen": "c", "rejected": "d"},
    ])
    data, summary, _ = _prepare(aot, tmp_path, src, "--test-size", "0")
    assert summary["dropped"] == {"duplicate": 1, "empty_completion": 1, "empty_prompt": 1, "identical_pair": 1,
                                  "missing_field": 2}
    assert summary["drop_examples"] == {"missing_field": f"{src}:5: field 'rejected' is missing or null"}
    assert data["train"]["prompt"] == ["p1", "p6"]


def test_source_test_split_is_kept_and_limit_applies(aot, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5)]
    _jsonl(folder / "train.jsonl", rows)
    _jsonl(folder / "test.jsonl", [rows[0], {"prompt": "t", "chosen": "a", "rejected": "b"}])
    data, summary, manifest = _prepare(aot, tmp_path, folder)
    assert summary["counts"] == {"train": 4, "test": 2}  # p0 is in test, so its train copy goes
    assert summary["dropped"] == {"duplicate": 1} and {"op": "split", "from_source": True} in summary["operations"]
    assert len(manifest["inputs"]) == 2
    _, summary, _ = _prepare(aot, tmp_path, folder, "--limit", "3", name="lim")
    assert summary["read"] == {"train": 3, "test": 2} and summary["operations"][0] == {"op": "limit", "rows": 3}


def test_stratified_split_by_count(aot, tmp_path):
    rows = [{"prompt": f"p{i}", "completion": "c", "label": i < 8} for i in range(10)]
    _, summary, _ = _prepare(aot, tmp_path, _jsonl(tmp_path / "l.jsonl", rows), "--test-size", "5")
    assert summary["label_balance"] == {"train": {"positive": 4, "negative": 1}, "test": {"positive": 4, "negative": 1}}


def test_config_file_sets_options(aot, tmp_path):
    cfg = tmp_path / "prep.yaml"
    cfg.write_text("test-size: 0\nunpair: true\n")
    _, summary, _ = _prepare(aot, tmp_path, SHAPES / "paired_strings.jsonl", "--config", cfg)
    assert summary["counts"] == {"train": 8, "test": 0}


def test_tokenizer_lengths_and_max_length(aot, tmp_path, tiny_model_dir):
    from aot_cli.data.tokenize import load_tokenizer, tokenizer_fingerprint

    _, summary, manifest = _prepare(aot, tmp_path, SHAPES / "paired_strings.jsonl", "--test-size", "0",
                                    "--tokenizer", tiny_model_dir, name="all")
    # The tokenizer is recorded by what changes token ids, not by hashing every file of a model directory.
    tok_fp = tokenizer_fingerprint(load_tokenizer(tiny_model_dir))
    assert manifest["inputs"][-1] == {"tokenizer": str(tiny_model_dir), "fingerprint": tok_fp}
    # Chat-templated token counts of the 4 rows (BOS + ChatML prompt; answer + <|im_end|>): the same
    # numbers `aot inspect` shows; total = prompt + the longer answer.
    assert summary["token_lengths"]["train"] == {
        "prompt": {"p50": 15, "p95": 18, "max": 18}, "chosen": {"p50": 4, "p95": 5, "max": 5},
        "rejected": {"p50": 4, "p95": 6, "max": 6}, "total": {"p50": 18, "p95": 24, "max": 24}}
    data, cut, _ = _prepare(aot, tmp_path, SHAPES / "paired_strings.jsonl", "--test-size", "0",
                            "--tokenizer", tiny_model_dir, "--max-length", 22, name="cut")
    assert cut["dropped"] == {"too_long": 1} and cut["counts"] == {"train": 3, "test": 0}
    assert cut["token_lengths"]["train"]["total"] == {"p50": 18, "p95": 20, "max": 20}
    assert list(data["train"]["prompt"]) == ["What is 2+2?", "Capital of France?", "Say hi."]  # colour: 24 tokens


def test_tokenizer_without_chat_template_takes_one_from_a_file(aot, tmp_path, tiny_model_dir):
    # Base models (Mistral-7B-v0.1) have no chat template; prepare takes --chat-template as train does.
    from aot_cli.data.tokenize import load_tokenizer
    from aot_cli.tiny_model import chat_template

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "bare")
    msg = _fails(aot, tmp_path, SHAPES / "paired_strings.jsonl", "--tokenizer", tmp_path / "bare")
    assert "no chat template; give one with --chat-template FILE" in msg
    (tmp_path / "chatml.jinja").write_text(chat_template())
    _, summary, _ = _prepare(aot, tmp_path, SHAPES / "paired_strings.jsonl", "--test-size", "0",
                             "--tokenizer", tmp_path / "bare", "--chat-template", tmp_path / "chatml.jinja")
    assert summary["token_lengths"]["train"]["total"] == {"p50": 18, "p95": 24, "max": 24}  # as with the model's own
    # A bad tokenizer is reported before the data is read (a typo should not cost a 60k-row pass).
    assert "nowhere: no such directory" in _fails(aot, tmp_path, SHAPES / "paired_strings.jsonl",
                                                  "--tokenizer", tmp_path / "nowhere", out_name="o3")
    assert "--chat-template needs --tokenizer" in _fails(aot, tmp_path, SHAPES / "paired_strings.jsonl",
                                                         "--chat-template", tmp_path / "chatml.jinja", out_name="o2")


# --- bad input: exit 2, one line naming file/row/field, OUT not created ---------------------------


def _fails(aot, tmp_path, source, *flags, out_name="out"):
    out = tmp_path / out_name
    result = aot("prepare", source, "-o", out, *flags)
    assert result.exit_code == 2, result
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(f".{out_name}.tmp-*"))
    return result.stderr.replace("\n", " ")


def test_missing_file(aot, tmp_path):
    assert "no such file or directory" in _fails(aot, tmp_path, tmp_path / "nope.jsonl")


def test_unknown_shape_lists_columns_and_shapes(aot, tmp_path):
    src = _jsonl(tmp_path / "x.jsonl", [{"text": "a", "id": 1}])
    msg = _fails(aot, tmp_path, src)
    assert msg.startswith(f"error: {src}: unknown data shape: found columns id, text; known shapes: ")
    assert "ultrafeedback (instruction, completions" in msg and "sharegpt (conversations" in msg


def test_empty_file_says_so(aot, tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_text("\n")
    assert _fails(aot, tmp_path, src).startswith(f"error: {src}: no rows to read")


def test_mistyped_field_names_file_line_field_and_type(aot, tmp_path):
    src = _jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                        {"prompt": "p", "chosen": 3, "rejected": "b"}])
    assert f"{src}:2: field 'chosen': expected a string, got int" in _fails(aot, tmp_path, src)


def test_mistyped_ultrafeedback_completions(aot, tmp_path):
    src = _jsonl(tmp_path / "x.jsonl", [{"instruction": "p", "completions": "x"}])
    assert _fails(aot, tmp_path, src).startswith(f"error: {src}:1: field 'completions': expected a list, got str")


def test_bad_role_in_messages(aot, tmp_path):
    src = _jsonl(tmp_path / "x.jsonl", [{"messages": [{"role": "robot", "content": "x"}], "label": True}])
    assert f"{src}:1: field 'messages[0]': unknown role 'robot'" in _fails(aot, tmp_path, src)


def test_malformed_json_line(aot, tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\n{"prompt": "p", "chosen": \n')
    assert f"{src}:3: not valid JSON" in _fails(aot, tmp_path, src)


def test_malformed_json_array(aot, tmp_path):
    src = tmp_path / "x.json"
    src.write_text('[\n {"prompt": "p", "chosen": "a", "rejected": "b"},\n {"prompt": }\n]')
    assert f"{src}:3: not valid JSON" in _fails(aot, tmp_path, src)


def test_non_utf8(aot, tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_bytes(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "caf\xe9"}\n')
    msg = _fails(aot, tmp_path, src)
    assert f"{src}:2: not UTF-8" in msg and "offset 63" in msg


def test_missing_fields_everywhere_name_the_first_row(aot, tmp_path):
    src = _jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a", "rejected": None},
                                        {"prompt": "q", "chosen": "b", "rejected": None}])
    msg = _fails(aot, tmp_path, src)
    assert msg.startswith(f"error: {src}: no training rows left (read 2 rows; dropped: missing_field 2; "
                          f"first missing_field: {src}:1: field 'rejected' is missing or null)")


def test_empty_result_says_what_dropped_the_rows(aot, tmp_path):
    src = _jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"},
                                        {"prompt": "q", "chosen": "", "rejected": "b"}])
    msg = _fails(aot, tmp_path, src, "--test-size", "1")
    assert "no training rows left (read 2 rows; dropped: " in msg and "identical_pair 1" in msg \
        and "empty_completion 1" in msg


def test_empty_result_after_unpairing(aot, tmp_path):
    src = _jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    msg = _fails(aot, tmp_path, src, "--test-size", "0", "--unpair", "--disjoint-prompts")
    assert msg.startswith(f"error: {src}: no training rows left (read 1 rows; dropped: unpair_balance 1)")


def test_output_under_a_file(aot, tmp_path):
    (tmp_path / "f").write_text("x")
    msg = _fails(aot, tmp_path, SHAPES / "paired_strings.jsonl", out_name="f/out")
    assert msg.startswith(f"error: {tmp_path / 'f' / 'out'}: cannot create it, {tmp_path / 'f'} is a file")


def test_existing_output_is_left_alone(aot, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    result = aot("prepare", SHAPES / "paired_strings.jsonl", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "already exists (pass --overwrite" in result.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"
    assert aot("prepare", SHAPES / "paired_strings.jsonl", "-o", tmp_path / "out", "--overwrite").exit_code == 0
    assert not (tmp_path / "out" / "keep.txt").exists()


@pytest.mark.parametrize("source, flags, fragment", [
    ("paired_strings", ("--format", "pku"), "--format pku needs column(s) response_0, response_1"),
    ("ultrafeedback", ("--score", "nope"), "--score field(s) nope not found"),
    ("paired_strings", ("--binarize", "best-vs-worst"), "--binarize applies to ultrafeedback or scored data"),
    ("paired_strings", ("--disjoint-prompts",), "--disjoint-prompts needs --unpair"),
    ("paired_strings", ("--max-length", "10"), "--max-length needs --tokenizer"),
    ("paired_strings", ("--test-size", "9"), "leaves no training rows"),
    ("paired_strings", ("--split", "train"), "--subset, --split and --revision apply to hub datasets"),
    ("paired_strings", ("--score", "helpfulness"), "--score applies when scored responses are binarized"),
    ("scored", ("--label-field", "helpfulness", "--label-threshold", "3", "--min-margin", "1"),
     "--min-margin applies when scored responses are binarized into pairs; " + str(SHAPES / "scored.jsonl") +
     " is scored with labels from --label-field"),
    ("scored", ("--label-field", "helpfulness", "--label-threshold", "3", "--unpair"),
     "--unpair needs paired data; " + str(SHAPES / "scored.jsonl") + " is scored with labels from --label-field"),
])
def test_flags_that_do_not_fit_the_data(aot, tmp_path, source, flags, fragment):
    assert fragment in _fails(aot, tmp_path, SHAPES / f"{source}.jsonl", *flags)


def test_benchmark_data_is_recognized(aot, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_bench", Path(__file__).parents[2] / "benchmarks" /
                                                  "prepare_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for shape, expected in (("binarized", "paired-messages"), ("raw", "ultrafeedback")):
        bench.generate(tmp_path / f"{shape}.jsonl", 200, shape)
        _, summary, _ = _prepare(aot, tmp_path, tmp_path / f"{shape}.jsonl", name=shape)
        assert summary["format"] == expected and summary["read"] == {"train": 200}
        accounted = sum(summary["counts"].values()) + sum(summary["dropped"].values())
        if shape == "binarized":  # every row is kept or dropped for a reason
            assert accounted == 200 and summary["dropped"]["duplicate"] > 0
        else:  # repeated instructions merge into one prompt's group before binarizing
            binarize = summary["operations"][1]
            assert binarize["responses"] == 800 and accounted == binarize["prompts"] < 200
