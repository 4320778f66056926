"""`aot eval tasks`: lm-eval in-process on local task YAMLs (one multiple-choice, one
generate_until), through the same code path as the leaderboard suites. One lm-eval run in total:
lm-eval's task index costs ~15 s to build."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aot_cli.eval.lm_eval_suites import check_task_names, resolve_chat_settings, split_task_names
from aot_cli.errors import UserError

TASK_DIR = Path(__file__).parents[1] / "fixtures" / "lm_eval_tasks"


@pytest.mark.slow
def test_lm_eval_on_a_lora_run(aot, lora_run_dir, tmp_path):
    out = tmp_path / "ev"
    result = aot("eval", "tasks", lora_run_dir, "-o", out, "--tasks", "aot_tiny_mc,aot_tiny_gen",
                 "--include-path", TASK_DIR, "--limit", 3, "--batch-size", 4, "--num-fewshot", 1)
    assert result.exit_code == 0, result
    # lm-eval's tqdm bars, off a terminal: plain lines, no carriage returns
    assert "\r" not in result.stderr
    assert re.search(r"^Running loglikelihood requests: \d+/\d+ \(100%\), done in \d+:\d\d:\d\d$", result.stderr, re.M)
    assert result.stderr.splitlines()[-2:] == [
        f"wrote {out}: results.json, report.md, lm_eval_results.json, samples/",
        f"next: aot compare BASELINE_EVAL_DIR {out} (side by side with differences to the first; add more eval "
        "directories)"]
    res = json.loads((out / "results.json").read_text())
    assert res["suite"] == "lm-eval" and res["model"] == str(lora_run_dir)
    settings = res["settings"]
    assert settings["apply_chat_template"] is True and settings["fewshot_as_multiturn"] is True
    assert settings["n_shot"] == {"aot_tiny_mc": 1, "aot_tiny_gen": 1} and settings["limit"] == 3
    assert settings["model_args"]["peft"] == str(lora_run_dir / "adapter")
    assert settings["lm_eval_version"] and settings["device"] == "cpu" and settings["batch_size"] == 4
    assert set(res["versions"]) >= {"torch", "transformers", "lm_eval", "peft"}

    # scores are what the per-example records say
    mc = [json.loads(line) for line in (out / "samples" / "aot_tiny_mc.jsonl").read_text().splitlines()]
    gen = [json.loads(line) for line in (out / "samples" / "aot_tiny_gen.jsonl").read_text().splitlines()]
    assert len(mc) == 3 and len(gen) == 3
    assert res["scores"]["aot_tiny_mc"]["acc"] == pytest.approx(sum(s["acc"] for s in mc) / 3)
    assert res["scores"]["aot_tiny_mc"]["acc_norm"] == pytest.approx(sum(s["acc_norm"] for s in mc) / 3)
    assert res["scores"]["aot_tiny_gen"]["exact_match"] == pytest.approx(sum(s["exact_match"] for s in gen) / 3)
    # chat template applied, one few-shot turn before the question
    prompt = gen[0]["arguments"][0][0]
    assert prompt.count("<|im_start|>user") == 2 and prompt.endswith("<|im_start|>assistant\n")

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "eval" and manifest["summary"]["scores"] == res["scores"]
    report = (out / "report.md").read_text()
    assert "| aot_tiny_mc | acc |" in report and '"apply_chat_template": true' in report
    assert "aot_tiny_gen" in result.stdout


def test_split_task_names():
    assert split_task_names(["a,b", " c ", "d,,"]) == ["a", "b", "c", "d"]


def test_unknown_task_suggests_close_names():
    with pytest.raises(UserError, match=r"unknown lm-eval task 'hellaswg' \(did you mean 'hellaswag'"):
        check_task_names(["arc_easy", "hellaswg"], ["arc_easy", "hellaswag", "mmlu"])


def test_chat_settings_defaults_per_suite():
    assert resolve_chat_settings("openllm-v1", None, None) == (False, False)
    assert resolve_chat_settings("openllm-v2", None, None) == (True, True)
    assert resolve_chat_settings("lm-eval", None, False) == (True, False)
    with pytest.raises(UserError, match="needs the chat template"):
        resolve_chat_settings("lm-eval", False, True)


def test_eval_bad_inputs(aot, tmp_path, tiny_model_dir):
    result = aot("eval", "openllm", tiny_model_dir, "-o", tmp_path / "o", "--version", "v3")
    assert result.exit_code == 2 and "'v3' is not one of v1, v2" in result.stderr
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    result = aot("eval", "tasks", empty, "-o", tmp_path / "o", "--tasks", "x")
    assert result.exit_code == 2 and "model directory without weights" in result.stderr
    result = aot("eval", "tasks", "./no/such/dir", "-o", tmp_path / "o", "--tasks", "x")
    assert result.exit_code == 2 and "no such directory" in result.stderr
    result = aot("eval", "tasks", tiny_model_dir, "-o", tmp_path / "o")
    assert result.exit_code == 2 and "missing --tasks" in result.stderr
    result = aot("eval", "openllm", tiny_model_dir, "-o", tmp_path / "o", "--tasks", "arc_easy")
    assert result.exit_code == 2 and "No such option: --tasks" in result.stderr   # the suite's tasks are fixed
    result = aot("eval", "tasks", tiny_model_dir, "-o", tmp_path / "o", "--tasks", "x", "--include-path",
                 tmp_path / "nope")
    assert result.exit_code == 2 and "--include-path" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_local_task_data_files_are_found_next_to_the_yaml_from_any_directory(aot, tmp_path, tiny_model_dir,
                                                                           monkeypatch):
    tasks = TASK_DIR
    monkeypatch.chdir(tmp_path)   # not the repository root: the YAML's relative data_files still resolve
    result = aot("eval", "tasks", tiny_model_dir, "-o", tmp_path / "o", "--tasks", "aot_tiny_mc",
                 "--include-path", tasks, "--limit", 2, "--device", "cpu")
    assert result.exit_code == 0, result
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "aot_broken.yaml").write_text((tasks / "aot_tiny_mc.yaml").read_text()
                                            .replace("aot_tiny_mc", "aot_broken").replace("aot_broken.jsonl",
                                                                                          "missing.jsonl"))
    result = aot("eval", "tasks", tiny_model_dir, "-o", tmp_path / "o2", "--tasks", "aot_broken",
                 "--include-path", broken)
    assert result.exit_code == 2
    assert f"data file missing.jsonl not found (looked for {broken / 'missing.jsonl'}" in result.stderr


def test_unreachable_model_or_data_is_a_user_error(aot, tiny_model_dir, tmp_path, monkeypatch):
    import lm_eval

    from aot_cli.eval import lm_eval_suites

    class Manager:
        all_tasks = ["arc_challenge"]

    def offline(**kwargs):
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(lm_eval_suites, "task_manager", lambda include_path, tasks: Manager())
    monkeypatch.setattr(lm_eval, "simple_evaluate", offline)
    result = aot("eval", "tasks", tiny_model_dir, "--tasks", "arc_challenge", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "Couldn't reach 'allenai/ai2_arc'" in result.stderr
    assert not (tmp_path / "o").exists()


def test_lm_eval_model_args_per_backend(lora_run_dir, tiny_model_dir):
    from aot_cli.eval.lm_eval_suites import hf_model_args
    from aot_cli.eval.source import resolve_model
    from aot_cli.eval.vllm_args import lm_eval_model_args

    lora = resolve_model(str(lora_run_dir))
    adapter = str(lora_run_dir / "adapter")
    assert hf_model_args(lora, "bf16") == {"pretrained": lora.pretrained, "tokenizer": adapter, "dtype": "bfloat16",
                                           "peft": adapter}
    # the tiny run's adapter has rank 4: vLLM's smallest max_lora_rank holds it; lm-eval turns on enable_lora
    assert lm_eval_model_args(lora, "bf16", 7) == {"pretrained": lora.pretrained, "tokenizer": adapter,
                                                   "dtype": "bfloat16", "seed": 7, "lora_local_path": adapter,
                                                   "max_lora_rank": 8}
    plain = resolve_model(str(tiny_model_dir))
    assert lm_eval_model_args(plain, "auto", 0) == {"pretrained": str(tiny_model_dir),
                                                    "tokenizer": str(tiny_model_dir), "dtype": "auto", "seed": 0}


def test_the_vllm_backend_reaches_lm_eval_as_its_vllm_model(aot, lora_run_dir, tiny_model_dir, tmp_path,
                                                            monkeypatch):
    """What lm-eval receives with --backend vllm (a stand-in for simple_evaluate: vLLM is not installed here)."""
    import lm_eval

    from aot_cli.eval import lm_eval_suites

    class Manager:
        all_tasks = ["arc_easy"]

    seen = {}

    def simple_evaluate(**kwargs):
        seen.update(kwargs)
        return {"results": {"arc_easy": {"acc,none": 0.5}}, "config": {}, "samples": {}}

    monkeypatch.setattr("aot_cli.eval.vllm_args.vllm_installed", lambda: True)
    monkeypatch.setattr(lm_eval_suites, "task_manager", lambda include_path, tasks: Manager())
    monkeypatch.setattr(lm_eval, "simple_evaluate", simple_evaluate)
    out = tmp_path / "o"
    result = aot("eval", "tasks", lora_run_dir, "--tasks", "arc_easy", "--backend", "vllm", "--batch-size", 64,
                 "-o", out)
    assert result.exit_code == 0, result
    adapter = str(lora_run_dir / "adapter")
    assert seen["model"] == "vllm" and seen["device"] is None and seen["batch_size"] == 64
    assert seen["model_args"] == {"pretrained": str(tiny_model_dir), "tokenizer": adapter, "dtype": "auto",
                                  "seed": 0, "lora_local_path": adapter, "max_lora_rank": 8}
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["backend"] == "vllm" and settings["model_args"] == seen["model_args"]
