"""Chat-template generation: the prompt is the templated user turn plus the assistant header,
left-padded batches answer exactly what single prompts answer, batches sorted by prompt length give
the same greedy answers in the same order as unsorted ones, generated tokens are counted, and the
vLLM backend's plumbing (its absence, its arguments, its wiring) works where vLLM is not installed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from aot_cli.eval.generate import Throughput, batch_plan, generate_batch, generated_lengths, in_order, prompt_ids
from aot_cli.eval.source import ModelSource
from aot_cli.eval.vllm_args import adapter_rank, engine_args, sampling_args, vllm_lora_rank
from aot_cli.errors import UserError

DATA = str(Path(__file__).parents[1] / "fixtures" / "alpaca_tiny.json")
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from aot_cli.data.tokenize import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), tok


def mixed_rows(n: int) -> list[dict]:
    """Instructions of 1 to ~60 words, lengths shuffled so that plain batches mix them."""
    words = "please explain why the quick brown fox jumps over the lazy dog and what it means".split()
    return [{"instruction": f"{i}: " + " ".join(words[j % len(words)] for j in range((i * 37) % 61 + 1)),
             "dataset": "mixed"} for i in range(n)]


def test_prompt_is_the_templated_user_turn(tiny):
    _, tok = tiny
    text = tok.decode(prompt_ids(tok, "What is the capital of France?"))
    assert text.startswith("<s><|im_start|>user\nWhat is the capital of France?<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n") and text.count("<s>") == 1


def test_batched_greedy_generation_matches_single_prompts(tiny):
    model, tok = tiny
    prompts = [prompt_ids(tok, p) for p in ("Hi", "Write a function that adds two numbers, then explain it politely.")]
    batched, counts = generate_batch(model, tok, prompts, max_new_tokens=8, temperature=0.0)
    singles = [generate_batch(model, tok, [p], max_new_tokens=8, temperature=0.0) for p in prompts]
    assert batched == [s[0][0] for s in singles] and all(batched)  # non-empty: the random model does not stop at once
    assert counts == [s[1][0] for s in singles] and all(1 <= c <= 8 for c in counts)


def test_batch_plan_sorts_longest_first_and_keeps_ties_in_order():
    assert batch_plan([3, 7, 5, 7, 1], 2) == [[1, 3], [2, 0], [4]]
    assert batch_plan([3, 7, 5, 7, 1], 2, by_length=False) == [[0, 1], [2, 3], [4]]
    assert batch_plan([], 4) == []
    lengths = [(i * 7919) % 101 for i in range(50)]
    plan = batch_plan(lengths, 8)
    flat = [k for batch in plan for k in batch]
    assert sorted(flat) == list(range(50)) and [len(b) for b in plan] == [8] * 6 + [2]
    assert [lengths[k] for k in flat] == sorted(lengths, reverse=True)


def test_generated_lengths_stop_at_the_first_eos():
    eos = 2
    new = torch.tensor([[5, 2, 9, 0], [5, 5, 5, 5], [2, 0, 0, 0], [7, 7, 2, 2]])
    assert generated_lengths(new, eos) == [2, 4, 1, 3]


def test_outputs_are_written_in_instruction_order_with_earlier_extras_kept():
    rows = [{"instruction": x} for x in "abc"]
    done = {"z": {"instruction": "z"}, "c": {"instruction": "c"}, "a": {"instruction": "a"}}
    assert [r["instruction"] for r in in_order(done, rows)] == ["a", "c", "z"]


def test_length_sorted_greedy_generation_equals_unsorted(tiny, tmp_path):
    from aot_cli.eval.generate import generate_outputs

    model, tok = tiny
    rows = mixed_rows(16)
    lengths = [len(prompt_ids(tok, r["instruction"])) for r in rows]
    assert batch_plan(lengths, 4) != batch_plan(lengths, 4, by_length=False)   # the batches really differ
    settings = dict(generator="g", batch_size=4, max_new_tokens=6, temperature=0.0, seed=0)
    plain, plain_speed = generate_outputs(model, tok, rows, tmp_path / "plain.json", by_length=False, **settings)
    ordered, speed = generate_outputs(model, tok, rows, tmp_path / "sorted.json", **settings)
    assert ordered == plain and [o["instruction"] for o in ordered] == [r["instruction"] for r in rows]
    assert json.loads((tmp_path / "sorted.json").read_text()) == ordered   # the file too, in instruction order
    assert speed.answers == plain_speed.answers == 16 and 16 <= speed.tokens == plain_speed.tokens <= 16 * 6
    record = speed.record()
    assert record["backend"] == "hf" and record["batch_order"] == "longest prompt first"
    assert plain_speed.record()["batch_order"] == "instruction order"
    assert record["generated_tokens"] == speed.tokens and record["tokens_per_s"] == pytest.approx(
        speed.tokens / speed.seconds, rel=1e-2)


def test_a_resumed_sampling_run_writes_what_an_uninterrupted_one_writes(tiny, tmp_path):
    from aot_cli.eval.generate import generate_outputs

    model, tok = tiny
    rows = [{"instruction": f"Say something about the number {i}" + "!" * (i % 3), "dataset": "t"} for i in range(5)]
    settings = dict(generator="g", batch_size=2, max_new_tokens=6, temperature=1.0, seed=3)
    whole, _ = generate_outputs(model, tok, rows, tmp_path / "whole.json", **settings)
    first_batch = batch_plan([len(prompt_ids(tok, r["instruction"])) for r in rows], 2)[0]
    part = tmp_path / "part.json"
    part.write_text(json.dumps([whole[k] for k in first_batch]))      # interrupted after the first batch
    resumed, speed = generate_outputs(model, tok, rows, part, **settings)
    assert resumed == whole and speed.answers == 3
    assert json.loads(part.read_text()) == whole


def test_throughput_without_generation_has_no_rate():
    idle = Throughput("hf", by_length=True)
    assert idle.tokens_per_s is None and idle.record()["tokens_per_s"] is None
    assert Throughput("vllm", True, answers=4, tokens=30, seconds=1.5).record() == {
        "backend": "vllm", "batch_order": "longest prompt first", "answers_generated": 4, "generated_tokens": 30,
        "seconds": 1.5, "tokens_per_s": 20.0}


def test_alpaca_reports_generated_tokens_per_second(aot, tiny_model_dir, tmp_path, monkeypatch):
    from judge_server import JudgeServer

    monkeypatch.setattr("aot_cli.eval.alpaca._alpaca_eval_installed", lambda: False)  # the built-in judge's server

    out = tmp_path / "ae"
    args = ("eval", "alpaca", tiny_model_dir, "--instructions", DATA, "-o", out, "--max-new-tokens", 8,
            "--batch-size", 2, "--temperature", 0, "--judge-model", "judge-x", "--judge-base-url")
    with JudgeServer() as server:
        result = aot(*args, server.url)
    assert result.exit_code == 0, result
    line = re.search(r"^generated 4 answers, (\d+) tokens in ([\d.]+) s: ([\d.]+) tokens/s \(hf, longest prompt "
                     r"first\)$", result.stderr, re.M)
    assert line, result.stderr
    res = json.loads((out / "results.json").read_text())
    generation = res["settings"]["generation"]
    assert generation["backend"] == "hf" and generation["answers_generated"] == 4
    assert generation["generated_tokens"] == int(line[1]) and 4 <= int(line[1]) <= 4 * 8
    seconds = generation["seconds"]  # rounded to 1 ms in the record: bound the rate both ways
    assert int(line[1]) / (seconds + 0.0005) <= generation["tokens_per_s"] + 0.01
    assert generation["tokens_per_s"] - 0.01 <= int(line[1]) / max(seconds - 0.0005, 1e-9)
    assert "tokens_per_s" not in res["notes"]
    outputs = json.loads((out / "model_outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == [r["instruction"] for r in json.loads(Path(DATA).read_text())]


# --- the vLLM backend, where vLLM is not installed ---------------------------------------------------

def test_vllm_absent_is_one_clear_line_before_any_heavy_import(tiny_model_dir, tmp_path):
    """Preflight says which extra to install, exit 2, before torch, transformers or lm-eval is imported."""
    child = ("import sys\n"
             "sys.modules['vllm'] = None  # absent even where it is installed\n"
             "from aot_cli.cli import main\n"
             "try:\n    main()\n"
             "except SystemExit as exc:\n"
             "    heavy = [m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules]\n"
             "    print('exit', exc.code, 'heavy', heavy)\n")
    for args in (["eval", "alpaca", str(tiny_model_dir), "--instructions", DATA, "--judge-base-url",
                  "http://127.0.0.1:9/v1", "--backend", "vllm"],
                 ["eval", "tasks", str(tiny_model_dir), "--tasks", "x", "--backend", "vllm"],
                 ["eval", "openllm", str(tiny_model_dir), "--backend", "vllm"]):
        out = tmp_path / f"out-{args[1]}"
        done = subprocess.run([sys.executable, "-c", child, *args, "-o", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "exit 2 heavy []", done
        assert done.stderr.strip().splitlines() == [
            "error: --backend vllm needs vLLM, which is not installed: pip install 'aot-cli[vllm]' (CUDA only), or "
            "use --backend hf"]
        assert not out.exists()


def test_vllm_checks_device_and_qlora_runs(aot, tiny_model_dir, lora_run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("aot_cli.eval.vllm_args.vllm_installed", lambda: True)   # the checks after that one
    result = aot("eval", "tasks", tiny_model_dir, "--tasks", "x", "--backend", "vllm", "--device", "cuda:1",
                 "-o", tmp_path / "o")
    assert result.exit_code == 2 and "--device cuda:1 with --backend vllm" in result.stderr
    assert "CUDA_VISIBLE_DEVICES=1" in result.stderr
    result = aot("eval", "tasks", tiny_model_dir, "--tasks", "x", "--backend", "auto", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "'auto' is not one of hf, vllm" in result.stderr
    qlora = tmp_path / "qlora-run"
    qlora.mkdir()
    for f in lora_run_dir.iterdir():
        (qlora / f.name).symlink_to(f)
    (qlora / "manifest.json").unlink()
    manifest = json.loads((lora_run_dir / "manifest.json").read_text())
    manifest["config"]["load_in_4bit"] = True
    (qlora / "manifest.json").write_text(json.dumps(manifest))
    result = aot("eval", "tasks", qlora, "--tasks", "x", "--backend", "vllm", "-o", tmp_path / "o")
    assert result.exit_code == 2 and f"aot merge {qlora} -o DIR" in result.stderr
    assert not (tmp_path / "o").exists()


def _source(tmp_path: Path, rank: int | None) -> ModelSource:
    if rank is None:
        return ModelSource("models/m", "model", "models/m", None, "models/m", None)
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank,
                                                             "rank_pattern": {"q_proj": 2 * rank}}))
    return ModelSource(str(tmp_path / "run"), "run", "org/base", str(adapter), str(adapter), None)


def test_vllm_engine_and_sampling_arguments(tmp_path):
    assert engine_args(_source(tmp_path, None), "bf16", 3) == {"model": "models/m", "tokenizer": "models/m",
                                                               "dtype": "bfloat16", "seed": 3}
    lora = _source(tmp_path, 12)
    assert adapter_rank(lora.peft) == 24
    assert engine_args(lora, "auto", 0) == {"model": "org/base", "tokenizer": lora.peft, "dtype": "auto", "seed": 0,
                                            "enable_lora": True, "max_lora_rank": 32, "max_loras": 1}
    assert [vllm_lora_rank(r, "x") for r in (1, 8, 9, 256)] == [8, 8, 16, 256]
    with pytest.raises(UserError, match=r"LoRA rank 300 is above 256.*aot merge x -o DIR"):
        vllm_lora_rank(300, "x")
    assert sampling_args(max_new_tokens=64, temperature=0.0, seed=5, eos_id=2) == {
        "max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "seed": 5, "stop_token_ids": [2],
        "skip_special_tokens": True}


def test_vllm_generation_wiring_with_a_stand_in_engine(tiny_model_dir, lora_run_dir, tmp_path, monkeypatch):
    """vllm_generate against a stand-in for the vllm package: the same prompts as hf, one request seed
    per instruction (seed + its index), the adapter with every request, answers in instruction order."""
    calls = []

    class LLM:
        def __init__(self, **kwargs):
            calls.append(("engine", kwargs))

        def generate(self, prompts, sampling_params, use_tqdm, lora_request):
            calls.append(("generate", [p["prompt_token_ids"] for p in prompts], sampling_params, lora_request))
            answer = types.SimpleNamespace
            return [answer(outputs=[answer(text=f" answer to {len(p['prompt_token_ids'])} ", token_ids=[7] * 3)])
                    for p in prompts]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, lambda **kw: kw
    lora_module = types.ModuleType("vllm.lora.request")
    lora_module.LoRARequest = lambda name, lora_id, path: (name, lora_id, path)
    for name, module in (("vllm", vllm), ("vllm.lora", types.ModuleType("vllm.lora")),
                         ("vllm.lora.request", lora_module)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "aot_cli.eval.vllm_generate", None)   # removed again after the test
    del sys.modules["aot_cli.eval.vllm_generate"]
    from aot_cli.data.tokenize import load_tokenizer
    from aot_cli.eval import vllm_generate
    from aot_cli.eval.source import resolve_model

    source = resolve_model(str(lora_run_dir))
    rows = mixed_rows(5)
    outputs, speed = vllm_generate.generate_outputs(source, rows, tmp_path / "out.json", dtype="auto", generator="g",
                                                    batch_size=2, max_new_tokens=9, temperature=0.5, seed=10)
    tok = load_tokenizer(source.tokenizer)
    lengths = [len(prompt_ids(tok, r["instruction"])) for r in rows]
    assert [o["output"] for o in outputs] == [f"answer to {n}" for n in lengths]
    assert [o["instruction"] for o in outputs] == [r["instruction"] for r in rows]
    assert calls[0] == ("engine", engine_args(source, "auto", 10))
    generated = [c for c in calls if c[0] == "generate"]
    plan = batch_plan(lengths, 2)
    assert [[len(p) for p in c[1]] for c in generated] == [[lengths[k] for k in batch] for batch in plan]
    assert [[p["seed"] for p in c[2]] for c in generated] == [[10 + k for k in batch] for batch in plan]
    assert all(c[3] == ("aot-adapter", 1, str(lora_run_dir / "adapter")) for c in generated)
    assert speed.record()["backend"] == "vllm" and speed.tokens == 15 and speed.answers == 5
