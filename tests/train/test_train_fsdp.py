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

from aot_cli.train import run
from aot_cli.train.config import Config as TrainConfig

ARGS = dict(optim="sgd", lr=0.05, warmup_ratio=0.0, max_steps=2, grad_accum=2, max_length=64, max_prompt_length=32)


@pytest.mark.slow
def test_fsdp_full_update_equals_one_process_and_exports(tiny_model_dir, mixed_length_data, tmp_path,
                                                          accelerate_train, same_update_and_export):
    one = tmp_path / "one"
    run.run(TrainConfig(model=str(tiny_model_dir), data=mixed_length_data, output=one, batch_size=8, lora=False,
                        **ARGS))
    two = tmp_path / "two"
    result = accelerate_train("fsdp", tiny_model_dir, mixed_length_data, two, batch_size=4, lora=False, **ARGS)
    assert "sort set 16 (global scope)" in result.stderr

    same_update_and_export(tiny_model_dir, one, two, tmp_path / "merged")


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
