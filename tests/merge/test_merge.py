"""`aot merge`: adapter folded into the base, shards, tokenizer, generation config, verify."""

from __future__ import annotations

import json

import pytest
import torch

from aot_cli.merge import run as merge
from aot_cli.merge.run import logits_difference


def _logits(model_dir, text="The quick brown fox"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def _adapter_logits(run_dir, base_dir, text="The quick brown fox"):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_logits_difference_hand_numbers():
    ref = [torch.tensor([[1.0, -4.0]]), torch.tensor([[2.0, 0.5]])]
    cand = [torch.tensor([[1.5, -4.0]]), torch.tensor([[2.0, 0.25]])]
    d = logits_difference(ref, cand)
    assert d["max_abs_diff"] == pytest.approx(0.5)
    assert d["max_abs_logit"] == pytest.approx(4.0)
    assert d["relative_diff"] == pytest.approx(0.125)


def test_generation_config_stops_at_the_tokenizers_eos():
    from types import SimpleNamespace

    from transformers import GenerationConfig

    model = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=7, pad_token_id=None))
    merge._finish_generation_config(model, SimpleNamespace(eos_token_id=9, pad_token_id=None, bos_token_id=None))
    assert model.generation_config.eos_token_id == [7, 9] and model.generation_config.pad_token_id == 9
    merge._finish_generation_config(model, SimpleNamespace(eos_token_id=7, pad_token_id=3, bos_token_id=None))
    assert model.generation_config.eos_token_id == [7, 9]


def test_merge_lora_run(aot, lora_run_dir, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "merged"
    monkeypatch.chdir(tiny_model_dir.parent)
    result = aot("merge", lora_run_dir, "-o", out, "--max-shard-size", "200KB")   # --dtype auto: the base's fp32
    assert result.exit_code == 0, result
    # the manifest's absolute base path, printed as typed from here
    assert f"merged the run's adapter into its base {tiny_model_dir.name} -> {out} (fp32" in result.stdout
    assert f"--dtype auto: fp32 ({tiny_model_dir.name} is saved in" in result.stderr
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] is not None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "model" and manifest["summary"]["adapter"] is True
    assert manifest["summary"]["dtype"] == "fp32" and manifest["config"]["dtype"] == "auto"
    verify = manifest["summary"]["verify"]
    assert verify["relative_diff"] < 1e-4 and verify["prompts"] == 3
    assert "verify: max |logit diff|" in result.stdout
    assert result.stderr.splitlines()[-2:] == [
        f"wrote {out}: config.json, {len(shards)} safetensors shards with their index, the tokenizer (loads "
        "without peft in transformers, lm-eval and vLLM)",
        f"next: aot eval openllm {out} --version v1 -o EVAL_DIR (or aot eval tasks {out} --tasks NAMES -o EVAL_DIR, "
        f"aot eval alpaca {out} -o EVAL_DIR)"]
    # the merged model computes what base + adapter computes, and differs from the base
    merged, adapted, base = _logits(out), _adapter_logits(lora_run_dir, tiny_model_dir), _logits(tiny_model_dir)
    assert torch.allclose(merged, adapted, atol=1e-5)
    assert (merged - base).abs().max() > 1e-3


def test_merge_bf16_and_full_run(aot, full_run_dir, tmp_path):
    """A full run of a bf16 base saved in fp32 (master weights): --dtype auto exports the base's bf16."""
    import shutil

    from transformers import AutoModelForCausalLM

    from aot_cli.artifacts.store import write_manifest

    base = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(full_run_dir / "model", dtype=torch.bfloat16).save_pretrained(base)
    run = shutil.copytree(full_run_dir, tmp_path / "run")
    write_manifest(run, kind="run", config={"model": str(base)}, summary={"base_model": str(base), "adapter": False})
    out = tmp_path / "full"
    result = aot("merge", run, "-o", out)
    assert result.exit_code == 0, result
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert json.loads((run / "model" / "config.json").read_text())["dtype"] == "float32"
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["adapter"] is False and summary["dtype"] == "bf16"
    assert summary["verify"]["relative_diff"] < merge.VERIFY_TOLERANCE["bf16"]
    assert torch.allclose(_logits(out), _logits(full_run_dir / "model"), atol=0.05, rtol=0.05)


def test_verify_catches_a_corrupted_merge(aot, lora_run_dir, tmp_path, monkeypatch):
    real = merge.merge_adapter

    def corrupted(model):
        merged = real(model)
        with torch.no_grad():
            merged.model.layers[0].self_attn.o_proj.weight.mul_(3.0)
        return merged

    monkeypatch.setattr(merge, "merge_adapter", corrupted)
    out = tmp_path / "bad"
    result = aot("merge", lora_run_dir, "-o", out, "--dtype", "fp32")
    assert result.exit_code == 2
    assert "merge verify failed" in result.stderr and "nothing was written" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".bad.tmp-*"))


def test_merge_bad_inputs(aot, tiny_model_dir, lora_run_dir, tmp_path):
    result = aot("merge", tiny_model_dir, "-o", tmp_path / "x")
    assert result.exit_code == 2 and "manifest.json" in result.stderr
    result = aot("merge", lora_run_dir, "-o", tmp_path / "x", "--dtype", "fp8")
    assert result.exit_code == 2 and "--dtype" in result.stderr
    result = aot("merge", lora_run_dir, "-o", tmp_path / "x", "--max-shard-size", "5gigs")
    assert result.exit_code == 2 and "--max-shard-size '5gigs': expected a number and a unit" in result.stderr


def test_merge_refuses_a_quantized_base(aot, lora_run_dir, tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    from aot_cli.artifacts.store import write_manifest

    base = shutil.copytree(tiny_model_dir, tmp_path / "base-4bit")
    cfg = json.loads((base / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(cfg))
    run = shutil.copytree(lora_run_dir, tmp_path / "run")
    write_manifest(run, kind="run", config={"model": str(base), "load_in_4bit": True},
                   summary={"base_model": str(base), "adapter": True})
    result = aot("merge", run, "-o", tmp_path / "m")
    assert result.exit_code == 2 and "stored quantized" in result.stderr
    # the same for a hub id (its config read from the HF cache)
    from transformers import AutoConfig

    real = AutoConfig.from_pretrained
    hub_config = real(base)
    monkeypatch.setattr(AutoConfig, "from_pretrained",
                        lambda name, **kw: hub_config if name == "org/base-bnb-4bit" else real(name, **kw))
    write_manifest(run, kind="run", config={"model": "org/base-bnb-4bit", "load_in_4bit": True},
                   summary={"base_model": "org/base-bnb-4bit", "adapter": True})
    result = aot("merge", run, "-o", tmp_path / "m", "--dtype", "bf16")
    assert result.exit_code == 2 and "org/base-bnb-4bit: the base model is stored quantized" in result.stderr
