"""`aot train` under FSDP2 on two CPU processes (gloo), launched as a user would: ``accelerate launch
--config_file`` with the shipped fsdp config (docs/distributed.md).

- Full fine-tuning: the global-sort update over both processes' shards equals one process's update on
  the whole batch (precomputed reference, 2 micro-batches of mixed lengths per process); the run then
  exports (`aot merge`) to a plain model directory that transformers loads.
- LoRA with AdamW: a checkpoint written under FSDP (the gathered weights and optimizer state) resumed
  by new processes gives the adapter of the uninterrupted run.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from aot_cli.merge import run as merge_run
from aot_cli.merge.config import Config as MergeConfig
from aot_cli.train import run
from aot_cli.train.config import Config as TrainConfig

ARGS = dict(optim="sgd", lr=0.05, warmup_ratio=0.0, max_steps=2, grad_accum=2, max_length=64, max_prompt_length=32)


def _delta(weights: dict, base: dict) -> torch.Tensor:
    return torch.cat([(weights[k] - base[k]).flatten() for k in sorted(base)])


@pytest.mark.slow
def test_fsdp_full_update_equals_one_process_and_exports(tiny_model_dir, mixed_length_data, tmp_path,
                                                          accelerate_train):
    one = tmp_path / "one"
    run.run(TrainConfig(model=str(tiny_model_dir), data=mixed_length_data, output=one, batch_size=8, lora=False,
                        **ARGS))
    two = tmp_path / "two"
    result = accelerate_train("fsdp", tiny_model_dir, mixed_length_data, two, batch_size=4, lora=False, **ARGS)
    assert "sort set 16 (global scope)" in result.stderr

    base = load_file(str(tiny_model_dir / "model.safetensors"))
    one_delta = _delta(load_file(str(one / "model" / "model.safetensors")), base)
    two_weights = load_file(str(two / "model" / "model.safetensors"))
    two_delta = _delta(two_weights, base)
    assert one_delta.norm() > 0
    assert float((two_delta - one_delta).norm() / one_delta.norm()) < 1e-4

    merged = tmp_path / "merged"
    merge_run.run(MergeConfig(run=str(two), output=merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged))
    assert model.config.architectures == ["LlamaForCausalLM"]
    state = model.state_dict()
    assert all(torch.equal(state[k], two_weights[k]) for k in two_weights)


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_like_an_uninterrupted_run(tiny_model_dir, paired_data, tmp_path, accelerate_train):
    args = dict(ARGS, optim="adamw", lr=1e-3, max_steps=2, batch_size=4, save_steps=1)
    straight = tmp_path / "straight"
    accelerate_train("fsdp", tiny_model_dir, paired_data, straight, **args)
    checkpoint = straight / "checkpoints" / "step-1"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["optimizer.pt", "rng-0.pt", "rng-1.pt", "scheduler.pt",
                                                            "state.json", "trainable.safetensors"]
    resumed = tmp_path / "resumed"
    result = accelerate_train("fsdp", tiny_model_dir, paired_data, resumed, resume=str(checkpoint), **args)
    assert "resuming from" in result.stderr
    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and any(k.endswith("lora_B.weight") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
