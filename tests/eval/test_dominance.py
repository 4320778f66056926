"""`aot eval --suite dominance` on a tiny run trained by `aot train` (paired data), scored on the
paired test split and on its unpaired version; scores checked against the written log-probs and the
reference log-probs against an independent full-logits computation on the base model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from aot_cli.eval.dominance import compare, small_sample_note
from aot_cli.eval.quantiles import quantile_levels
from aot_cli.eval.stats import BootstrapSettings
from aot_cli.tiny_data import preference_pairs, write_jsonl


def _aot(*args):
    from aot_cli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    return result


@pytest.fixture(scope="session")
def trained(tiny_model_dir, tmp_path_factory):
    """(run dir, paired data, unpaired data): 4 AOT steps of LoRA on 32 generated pairs, 16 held out."""
    root = tmp_path_factory.mktemp("dominance")
    data, udata, run = root / "data", root / "udata", root / "run"
    source = write_jsonl(root / "prefs.jsonl", preference_pairs(48, seed=1))
    _aot("prepare", source, "--test-size", 16, "-o", data)
    _aot("prepare", data, "--unpair", "-o", udata)
    _aot("train", "--model", tiny_model_dir, "--data", data, "-o", run, "--max-steps", 4, "--batch-size", 4,
         "--grad-accum", 2, "--lr", 5e-3, "--beta", 0.1, "--max-length", 256, "--max-prompt-length", 128)
    return run, data, udata


def _assert_same(scores, expected):
    assert set(scores) == set(expected)
    for name, metrics in expected.items():
        assert scores[name] == pytest.approx(metrics, rel=1e-6), name


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_dominance_paired(aot, trained, tmp_path):
    run, data, _ = trained
    out = tmp_path / "dom"
    result = aot("eval", "dominance", run, "--data", data, "-o", out, "--batch-size", 8, "--bootstrap", 200,
                 "--confidence", 0.9, "--epsilon", 0.3, "--seed", 5)
    assert result.exit_code == 0, result
    assert f"wrote {out}: results.json, report.md, logps.jsonl, dominance.png" in result.stderr.splitlines()
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["paired"] is True and res["settings"]["n_test"] == 16 and res["settings"]["beta"] == 0.1
    assert set(res["scores"]) == {"before", "after", "implicit_rewards", "margins"}
    assert res["settings"]["statistics"] == {**res["settings"]["statistics"], "resamples": 200, "confidence": 0.9,
                                             "epsilon": 0.3, "seed": 5,
                                             "resampling": "pairs (chosen and rejected together)"}
    rows = _rows(out / "logps.jsonl")
    assert len(rows) == 16
    logps = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    boot = BootstrapSettings(resamples=200, confidence=0.9, epsilon=0.3, seed=5)
    _assert_same(res["scores"], compare(logps, paired=True, beta=0.1, levels=quantile_levels(), settings=boot)[0])
    # implicit-reward accuracy is DPO's reward accuracy: r_chosen > r_rejected
    r_c = 0.1 * (logps["policy_chosen"] - logps["ref_chosen"])
    r_r = 0.1 * (logps["policy_rejected"] - logps["ref_rejected"])
    assert res["scores"]["implicit_rewards"]["accuracy"] == pytest.approx(np.mean(r_c > r_r))
    assert res["scores"]["margins"]["accuracy"] == pytest.approx(np.mean(r_c > r_r))  # r_c - r_r = margin difference
    assert not np.allclose(logps["policy_chosen"], logps["ref_chosen"])   # training moved the policy
    png = (out / "dominance.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "implicit_rewards" in result.stdout and "almost-dominance tests (eps0 = 0.3, 200" in result.stdout
    assert "small_sample" in res["notes"] and "16 examples per side" in res["notes"]["small_sample"]


@pytest.mark.slow
def test_dominance_reference_is_the_base_model(aot, trained, tiny_model_dir, tmp_path):
    """Unpaired data; the reference log-probs equal the base model's, computed with full logits."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aot_cli.data.tokenize import TokenizeSettings, encode_example
    from aot_cli.train.logprobs import build_labels, plain_sequence_logps

    run, _, udata = trained
    out = tmp_path / "udom"
    result = aot("eval", "dominance", run, "--data", udata, "-o", out, "--limit", 6)
    assert result.exit_code == 0, result
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["paired"] is False and res["settings"]["n_test"] == 6
    rows = _rows(out / "logps.jsonl")
    test = load_from_disk(str(udata))["test"]
    assert [r["label"] for r in rows] == test["label"][:6]
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    enc = encode_example(tok, test[0]["prompt"], test[0]["completion"], TokenizeSettings(256, 128))
    ids = torch.tensor([enc.input_ids])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = plain_sequence_logps(base(ids).logits, build_labels(ids, mask, [enc.prompt_len]))
    assert rows[0]["ref"] == pytest.approx(float(expected), rel=1e-4)
    logps = {"policy": np.array([r["policy"] for r in rows]), "ref": np.array([r["ref"] for r in rows]),
             "label": np.array([r["label"] for r in rows])}
    scores, _ = compare(logps, paired=False, beta=0.1, levels=quantile_levels(), settings=BootstrapSettings())
    _assert_same(res["scores"], scores)
    assert res["settings"]["statistics"]["resampling"] == "each side independently"
    assert res["settings"]["statistics"]["resamples"] == 1000


def test_report_table_one_row_per_comparison():
    from aot_cli.eval.report import markdown, results_document

    metrics = {"accuracy": 0.5, "violation_fraction": 0.25, "violation_area": 0.125, "mean_difference": 1.5}
    scores = {name: metrics for name in ("before", "after", "implicit_rewards")}
    lines = markdown(results_document("dominance", "run", scores, {"paired": False})).splitlines()
    assert lines[2:5] == ["| comparison | accuracy | violation fraction | violation area | mean difference |",
                          "|---|---|---|---|---|", "| before | 0.5000 | 0.2500 | 0.1250 | 1.5000 |"]
    assert "- before: the reference (before training): log ref(y) of positives vs negatives" in lines
    assert not any("almost-dominance" in line.lower() for line in lines)     # an eval from before the tests


def test_report_tests_table():
    from aot_cli.eval.report import markdown, results_document

    metrics = {"accuracy": 0.5, "violation_fraction": 0.25, "violation_area": 0.125, "mean_difference": 1.5,
               "violation_ratio": 0.0625, "p_value": 0.001, "violation_ratio_2nd": 0.5, "p_value_2nd": 1.0}
    settings = {"paired": True, "statistics": {"epsilon": 0.2, "resamples": 1000, "seed": 0}}
    lines = markdown(results_document("dominance", "run", {"margins": metrics}, settings)).splitlines()
    assert lines[2:5] == ["| comparison | accuracy | violation fraction | violation area | mean difference |",
                          "|---|---|---|---|---|", "| margins | 0.5000 | 0.2500 | 0.1250 | 1.5000 |"]
    assert lines[6:11] == ["## Almost-dominance tests (eps0 = 0.2, 1000 bootstrap resamples, seed 0)", "",
                           "| comparison | violation ratio (1st) | p-value (1st) | violation ratio (2nd) | "
                           "p-value (2nd) |", "|---|---|---|---|---|",
                           "| margins | 0.0625 | 0.0010 | 0.5000 | 1.0000 |"]
    assert any(line.startswith("- violation ratio: the share of the squared gap") for line in lines)


def test_small_sample_note():
    assert small_sample_note(20) == {} and small_sample_note((25, 40)) == {}
    assert "7 examples per side" in small_sample_note((7, 30))["small_sample"]


def test_dominance_bad_inputs(aot, lora_run_dir, tiny_model_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    from aot_cli.artifacts.store import write_manifest

    result = aot("eval", "dominance", lora_run_dir, "-o", tmp_path / "a")
    assert result.exit_code == 2 and "the run's dataset unused is gone; pass --data DATASET" in result.stderr
    result = aot("eval", "dominance", tiny_model_dir, "--data", lora_run_dir, "-o", tmp_path / "b")
    assert result.exit_code == 2 and "needs a run directory" in result.stderr
    no_test = tmp_path / "no-test"
    one_pair = Dataset.from_dict({"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]})
    DatasetDict({"train": one_pair}).save_to_disk(no_test)
    write_manifest(no_test, kind="dataset", config={}, summary={"paired": True})
    result = aot("eval", "dominance", lora_run_dir, "--data", no_test, "-o", tmp_path / "c")
    assert result.exit_code == 2 and "test is missing" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    empty_test = tmp_path / "empty-test"       # `aot prepare --test-size 0` makes such a dataset
    pairs = Dataset.from_dict({"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]})
    DatasetDict({"train": pairs, "test": pairs.select([])}).save_to_disk(empty_test)
    write_manifest(empty_test, kind="dataset", config={}, summary={"paired": True})
    result = aot("eval", "dominance", lora_run_dir, "--data", empty_test, "-o", tmp_path / "d")
    assert result.exit_code == 2 and "test split is empty" in result.stderr and "--test-size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "d").exists()
    from aot_cli.errors import UserError
    from aot_cli.eval.config import DominanceConfig

    with pytest.raises(UserError, match="is a 'run' artifact|expected a dataset|kind"):  # before torch is loaded
        DominanceConfig(model=str(lora_run_dir), data=lora_run_dir, output=tmp_path / "e").preflight()


def test_statistics_options_are_range_checked(aot, lora_run_dir, tmp_path):
    for flag, value, expected in (("--bootstrap", 10, "--bootstrap must be a finite number 100 to 100000, got 10"),
                                  ("--confidence", 1, "--confidence must be a finite number > 0.5, < 1, got 1"),
                                  ("--epsilon", 0.6, "--epsilon must be a finite number > 0, <= 0.5, got 0.6")):
        result = aot("eval", "dominance", lora_run_dir, "-o", tmp_path / "x", flag, value)
        assert result.exit_code == 2 and expected in result.stderr, result.stderr
        assert not (tmp_path / "x").exists()


def test_paths_are_printed_as_the_user_would_type_them(tmp_path, monkeypatch):
    """Manifests hold local inputs' absolute paths; the figure's title (the dataset) and merge's summary
    (the base model) show them relative when they lie below the working directory."""
    from aot_cli.console import as_typed

    monkeypatch.chdir(tmp_path)
    assert as_typed(tmp_path / "runs" / "data") == "runs/data"
    assert as_typed(tmp_path.parent / "elsewhere") == str(tmp_path.parent / "elsewhere")
    assert as_typed("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"  # a hub id
