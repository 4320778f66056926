"""`aot train --loss kto` end to end on the tiny model: it trains on unpaired data and on paired data
(unpaired: chosen desirable, rejected undesirable), logs its reference point, resumes exactly across an
epoch boundary (where the mismatched rows change), and the online reference equals the precomputed one."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from accelerate.utils import set_seed
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from aot_cli.train import loop, run
from aot_cli.train.config import Config as TrainConfig
from aot_cli.train.model import build_policy


def config(model, data, out, **overrides) -> TrainConfig:
    settings = dict(model=str(model), data=data, output=out, loss="kto", batch_size=2, grad_accum=4, lr=5e-3,
                    warmup_ratio=0.0, max_steps=2, save_steps=0, max_length=64, max_prompt_length=32)
    settings.update(overrides)
    return TrainConfig(**settings)


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out):
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("kind", ["unpaired", "paired"])
def test_kto_trains(kind, tiny_model_dir, paired_data, unpaired_data, tmp_path, held_out_log_ratios):
    data = unpaired_data if kind == "unpaired" else paired_data
    out = tmp_path / kind
    summary = run.run(config(tiny_model_dir, data, out, max_steps=12, batch_size=4, grad_accum=2))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["loss"] == "kto" and manifest["config"]["beta"] == 0.1  # KTO's default beta
    records = _records(out)
    # step 1: policy == reference, every log-ratio and z0 are 0, every sample's loss is 1 - sigmoid(0)
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-6) and records[0]["kl"] == 0.0
    losses = [r["loss"] for r in records]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.05
    assert all(r["kl"] >= 0 for r in records)  # clamped (here at 0 on balanced data: negatives fall faster)
    assert summary["final"]["kl"] == records[-1]["kl"]
    set_seed(42)
    initial = get_peft_model_state_dict(build_policy(config(tiny_model_dir, data, out)))
    trained = _weights(out)
    assert set(trained) == set(initial) and all(not torch.equal(trained[k], initial[k]) for k in trained)
    chosen, rejected = held_out_log_ratios(out, paired_data)
    assert (chosen > rejected).float().mean().item() >= 0.9


def test_kto_resume_across_an_epoch_matches_uninterrupted(tiny_model_dir, imbalanced_data, tmp_path, monkeypatch):
    """128 unpaired samples (3 positives to 1 negative), 16 per step: 8 steps per epoch, so 10 steps use two
    epochs' mismatched rows; interrupted at step 9 and resumed, the run ends with the same weights, losses
    and reference points (positive here: the policy mostly raises the many positives)."""
    unpaired_data = imbalanced_data
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "cache"))
    straight = tmp_path / "straight"
    run.run(config(tiny_model_dir, unpaired_data, straight, max_steps=10, lr=1e-3))
    # one entry for the samples, one per epoch for the mismatched rows
    assert len(list((tmp_path / "cache" / "reference").glob("*.pt"))) == 3

    interrupted = tmp_path / "interrupted"
    real_step, calls = loop.step_gradient, []

    def step_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        out = real_step(*args, **kwargs)
        if len(calls) == 9:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(loop, "step_gradient", step_then_ctrl_c)
    with pytest.raises(SystemExit):
        run.run(config(tiny_model_dir, unpaired_data, interrupted, max_steps=10, lr=1e-3))
    monkeypatch.setattr(loop, "step_gradient", real_step)
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "fresh-cache"))  # the resumed run recomputes epoch 2's rows
    run.run(config(tiny_model_dir, unpaired_data, interrupted, max_steps=10, lr=1e-3, resume="auto"))
    a, b = _weights(straight), _weights(interrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _records(interrupted)] == [r["loss"] for r in _records(straight)]
    assert [r["kl"] for r in _records(interrupted)] == [r["kl"] for r in _records(straight)]
    assert min(r["kl"] for r in _records(straight)[1:]) > 0


def test_kto_online_reference_equals_precomputed(tiny_model_dir, imbalanced_data, tmp_path):
    data = imbalanced_data
    run.run(config(tiny_model_dir, data, tmp_path / "pre", max_steps=3, sort_scope="micro"))
    run.run(config(tiny_model_dir, data, tmp_path / "online", max_steps=3, sort_scope="micro", ref="online"))
    a, b = _weights(tmp_path / "pre"), _weights(tmp_path / "online")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    pre, online = _records(tmp_path / "pre"), _records(tmp_path / "online")
    assert [r["kl"] for r in online] == pytest.approx([r["kl"] for r in pre], abs=1e-5)
    assert pre[-1]["kl"] > 0
