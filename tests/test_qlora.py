"""QLoRA on the CPU, every step on a 4-bit base: `aot train --load-in-4bit` (precomputed and online
reference, checkpoints and `--resume auto`, `--optim paged_adamw_8bit`), `aot merge` (the 4-bit base
dequantized, verified against what was trained), `aot eval dominance` and `aot eval tasks` on the run.

One 4-step run of the tiny model (LoRA r 4 on all 14 projections) is shared by the module. The
numbers it is checked against are computed independently: the 4-bit base loaded fresh, the merged
model loaded as a plain transformers model, the unquantized base with the adapter."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                reason="bitsandbytes (the qlora extra, installed by `make test`) is absent")

TRAIN = ("--load-in-4bit", "--max-steps", 4, "--batch-size", 4, "--grad-accum", 2, "--lr", 5e-3, "--beta", 0.1,
         "--lora-r", 4, "--lora-alpha", 8, "--save-steps", 2, "--max-length", 128, "--max-prompt-length", 64)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 generated training pairs, 16 held out (a dataset artifact)."""
    from typer.testing import CliRunner

    from aot_cli.cli import app
    from aot_cli.tiny_data import preference_pairs, write_jsonl

    root = tmp_path_factory.mktemp("qlora-data")
    source = write_jsonl(root / "prefs.jsonl", preference_pairs(48, seed=1))
    result = CliRunner().invoke(app, ["prepare", str(source), "--test-size", "16", "-o", str(root / "data")])
    assert result.exit_code == 0, result.stderr
    return root / "data"


def _train(aot, model, data, out, *extra):
    return aot("train", "--model", model, "--data", data, "-o", out, *TRAIN, *extra)


@pytest.fixture(scope="module")
def qlora_run(tiny_model_dir, data, tmp_path_factory):
    from typer.testing import CliRunner

    from aot_cli.cli import app

    out = tmp_path_factory.mktemp("qlora") / "run"
    result = CliRunner().invoke(app, [str(a) for a in ("train", "--model", tiny_model_dir, "--data", data,
                                                       "-o", out, *TRAIN)])
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def merged(qlora_run, tmp_path_factory):
    from typer.testing import CliRunner

    from aot_cli.cli import app

    out = tmp_path_factory.mktemp("qlora-merged") / "model"
    result = CliRunner().invoke(app, ["merge", str(qlora_run), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    return out, result


def _token_batch():
    ids = torch.tensor([[1, 50, 60, 70, 80, 90, 100, 110], [1, 55, 65, 75, 85, 95, 105, 115]])
    labels = ids.clone()
    labels[:, :3] = -100
    return ids, torch.ones_like(ids), labels


def test_4bit_layers_keep_their_gradient_after_the_reference_pass(tiny_model_dir):
    """The precomputed reference runs the policy in eval mode without grad before training. On an
    AVX512-BF16 CPU, bitsandbytes would then repack the 4-bit weights for a kernel without backward,
    and the LoRA matrices of every layer but the last ones would get no gradient (measured: 10 of the
    14 lora_B exactly 0). load_base switches that off: the gradients after the pass are exactly those
    of a policy that never ran it, and every LoRA matrix of every adapted layer gets one."""
    import bitsandbytes as bnb
    from accelerate.utils import set_seed

    from aot_cli.train import reference
    from aot_cli.train.config import Config
    from aot_cli.train.logprobs import model_sequence_logps
    from aot_cli.train.model import build_policy

    config = Config(model=str(tiny_model_dir), data="d", output="o", load_in_4bit=True, lora_r=4, lora_alpha=8)
    ids, mask, labels = _token_batch()

    def gradients(reference_pass_first: bool) -> dict:
        set_seed(0)
        policy = build_policy(config)
        with torch.no_grad():  # non-zero B, so that the A matrices get a gradient too
            for name, param in policy.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.1 * torch.randn_like(param))
        if reference_pass_first:
            with torch.no_grad(), reference.reference_model(policy, config, at_start=True) as ref:
                model_sequence_logps(ref, ids, mask, labels)
        policy.train()
        model_sequence_logps(policy, ids, mask, labels).sum().backward()
        repacking = [m.support_avx512bf16_for_cpu for m in policy.modules() if isinstance(m, bnb.nn.Linear4bit)]
        return {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}, repacking

    (plain, _), (after_reference, repacking) = gradients(False), gradients(True)
    assert len(after_reference) == 2 * 2 * len(PROJECTIONS)  # lora_A and lora_B of 7 projections x 2 layers
    assert all(float(g.abs().max()) > 0 for g in after_reference.values())
    assert all(torch.equal(plain[n], after_reference[n]) for n in plain)
    # what makes it hold on any CPU: the 4-bit layers never repack (with or without AVX512-BF16)
    assert repacking == [False] * 2 * len(PROJECTIONS)


def test_train_on_the_4bit_base(qlora_run):
    manifest = json.loads((qlora_run / "manifest.json").read_text())
    assert manifest["config"]["load_in_4bit"] is True and manifest["summary"]["steps"] == 4
    # r 4 x (in + out) per projection: q, o 64 -> 64; k, v 64 -> 32 (2 kv heads); gate, up, down 64 <-> 128
    assert manifest["summary"]["trainable_parameters"] == 2 * 4 * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))
    records = [json.loads(line) for line in (qlora_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is the reference
    assert all(r["grad_norm"] > 0 for r in records)
    adapter = load_file(str(qlora_run / "adapter" / "adapter_model.safetensors"))
    assert len(adapter) == 2 * 2 * len(PROJECTIONS)
    assert all(float(t.abs().max()) > 0 for name, t in adapter.items() if "lora_B" in name)  # B moved from 0


def _resume_matches(aot, model, data, straight, out, *extra):
    """`straight` stopped after its step-2 checkpoint (what a killed run leaves: the checkpoint and the
    metrics so far, no manifest), continued with --resume auto, ends with the same adapter, bit for bit."""
    shutil.copytree(straight / "checkpoints" / "step-2", out / "checkpoints" / "step-2")
    lines = (straight / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    result = _train(aot, model, data, out, "--resume", "auto", *extra)
    assert result.exit_code == 0, result
    assert "resuming from" in result.stderr
    expected = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert set(expected) == set(resumed) and all(torch.equal(expected[k], resumed[k]) for k in expected)
    losses = lambda text: [json.loads(line)["loss"] for line in text.splitlines()]
    assert losses((out / "metrics.jsonl").read_text()) == losses("\n".join(lines))


def test_resume_auto_gives_the_uninterrupted_adapter(aot, tiny_model_dir, data, qlora_run, tmp_path):
    _resume_matches(aot, tiny_model_dir, data, qlora_run, tmp_path / "resumed")


def test_online_reference_equals_the_precomputed_one(aot, tiny_model_dir, data, qlora_run, tmp_path):
    out = tmp_path / "online"
    result = _train(aot, tiny_model_dir, data, out, "--ref", "online")
    assert result.exit_code == 0, result
    online = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    precomputed = load_file(str(qlora_run / "adapter" / "adapter_model.safetensors"))
    assert set(online) == set(precomputed)
    assert all(torch.allclose(online[k], precomputed[k], atol=1e-6) for k in online)


def test_paged_adamw_8bit_runs_on_the_cpu_and_says_so_once(aot, tiny_model_dir, data, tmp_path):
    out = tmp_path / "paged"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(aot, tiny_model_dir, data, out, "--optim", "paged_adamw_8bit")
    assert result.exit_code == 0, result
    assert "warning: --optim paged_adamw_8bit on the CPU" in " ".join(result.stderr.split())
    assert not [w for w in caught if "Paged optimizers" in str(w.message)]  # bitsandbytes' own, filtered
    state = torch.load(out / "checkpoints" / "step-2" / "optimizer.pt", weights_only=False)["state"]
    assert state and all(set(s["__bnb_optimizer_quant_state__"]) == {"state1", "state2"} for s in state.values())
    _resume_matches(aot, tiny_model_dir, data, out, tmp_path / "resumed", "--optim", "paged_adamw_8bit")


def test_merge_exports_the_dequantized_4bit_base_plus_adapter(qlora_run, merged, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from aot_cli.artifacts.kinds import RunArtifact
    from aot_cli.artifacts.models import load_run

    out, result = merged
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["base_weights"] == {"source": "dequantized-4bit", "path": str(tiny_model_dir.resolve()),
                                       "quant_type": "nf4", "double_quant": True, "quantized_in": "fp32",
                                       "device": "cpu"}
    assert summary["dtype"] == "fp32" and summary["verify"]["tolerance"] == 1e-4
    assert summary["verify"]["relative_diff"] < 1e-5
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert "(4-bit, dequantized)" in result.stdout

    ids, mask, _ = _token_batch()
    with torch.no_grad():
        trained = load_run(RunArtifact.load(qlora_run)).policy(input_ids=ids, attention_mask=mask).logits
        export = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        on_original = PeftModel.from_pretrained(base, qlora_run / "adapter").eval()(input_ids=ids).logits
    assert float((export - trained).abs().max()) < 1e-5
    # the adapter merged into the original weights instead would carry the quantization error
    assert float((on_original - trained).abs().max()) > 1e-2


def test_dominance_on_the_run_measures_the_4bit_policy_and_base(aot, qlora_run, merged, data, tiny_model_dir,
                                                                 tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aot_cli.artifacts.models import load_base
    from aot_cli.data.dataset import load_prepared
    from aot_cli.data.tokenize import TokenizeSettings, encode_example
    from aot_cli.train.logprobs import build_labels, model_sequence_logps

    out = tmp_path / "dominance"
    result = aot("eval", "dominance", qlora_run, "-o", out, "--limit", 4)
    assert result.exit_code == 0, result
    first = json.loads((out / "logps.jsonl").read_text().splitlines()[0])

    test = load_prepared(data)[1]["test"]
    tok = AutoTokenizer.from_pretrained(qlora_run / "adapter")
    enc = encode_example(tok, test[0]["prompt"], test[0]["chosen"], TokenizeSettings(128, 64))
    ids = torch.tensor([enc.input_ids])
    mask = torch.ones_like(ids)
    labels = build_labels(ids, mask, [enc.prompt_len])

    def logp(model) -> float:
        with torch.no_grad():
            return float(model_sequence_logps(model.eval(), ids, mask, labels)[0])

    base_4bit = logp(load_base(str(tiny_model_dir), load_in_4bit=True))
    base = logp(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    policy = logp(AutoModelForCausalLM.from_pretrained(merged[0], dtype=torch.float32))
    assert first["ref_chosen"] == pytest.approx(base_4bit, abs=1e-4)   # the reference: adapters disabled
    assert abs(first["ref_chosen"] - base) > 1e-2
    assert first["policy_chosen"] == pytest.approx(policy, abs=1e-4)


@pytest.mark.slow
def test_eval_tasks_on_the_run_scores_the_4bit_model_as_trained(aot, qlora_run, merged, tmp_path):
    """lm-eval gets the run's model (adapter on the 4-bit base) and scores it as the merged export:
    the per-choice log-likelihoods agree to float32 noise."""
    from pathlib import Path

    tasks = Path(__file__).parent / "fixtures" / "lm_eval_tasks"

    def evaluate(model, out):
        result = aot("eval", "tasks", model, "-o", out, "--tasks", "aot_tiny_mc", "--include-path", tasks,
                     "--limit", 3, "--batch-size", 4)
        assert result.exit_code == 0, result
        samples = [json.loads(line) for line in (out / "samples" / "aot_tiny_mc.jsonl").read_text().splitlines()]
        return json.loads((out / "results.json").read_text()), [r[0][0] for s in samples for r in s["resps"]]

    run_results, run_ll = evaluate(qlora_run, tmp_path / "run")
    _, merged_ll = evaluate(merged[0], tmp_path / "merged")
    assert len(run_ll) == 9 and run_ll == pytest.approx(merged_ll, abs=1e-4)
    described = {"pretrained": str(json.loads((qlora_run / "manifest.json").read_text())["config"]["model"]),
                 "tokenizer": str(qlora_run / "adapter"), "dtype": "auto", "peft": str(qlora_run / "adapter"),
                 "load_in_4bit": True}
    assert run_results["settings"]["model_args"] == described
    raw = json.loads((tmp_path / "run" / "lm_eval_results.json").read_text())
    assert raw["config"]["model_args"] == described  # a description, not the model object
