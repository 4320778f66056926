"""Two CPU processes (gloo) x micro-batch 4 give the same update as one process x micro-batch 8: the
global-scope step gathers the rewards of both ranks and sorts them together. Both accumulate 2
micro-batches, so the DDP ``no_sync`` / single all-reduce path of the two-pass step is exercised. Half
the rejected answers are long, so micro-batches mix lengths as real data do (a single process then
forwards a micro-batch in two length-sorted halves; several processes must not). Also KTO on unpaired data
with 3 positives to 1 negative: the ranks' micro-batches hold different numbers of positives, and the
reference point is taken over both ranks' mismatched rows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from aot_cli.train import run
from aot_cli.train.config import Config as TrainConfig

ARGS = dict(lora=False, optim="sgd", lr=0.05, warmup_ratio=0.0, max_steps=2, grad_accum=2, max_length=64,
            max_prompt_length=32)


def _delta(run_dir, base):
    after, before = load_file(str(run_dir / "model" / "model.safetensors")), load_file(str(base / "model.safetensors"))
    return torch.cat([(after[k] - before[k]).flatten() for k in sorted(before)])


@pytest.mark.slow
@pytest.mark.parametrize("data_fixture, loss", [("mixed_length_data", "aot"), ("imbalanced_data", "kto")])
def test_two_processes_equal_one_process(tiny_model_dir, data_fixture, loss, tmp_path, request):
    paired_data = request.getfixturevalue(data_fixture)
    one = tmp_path / "one"
    run.run(TrainConfig(model=str(tiny_model_dir), data=paired_data, output=one, batch_size=8, loss=loss, **ARGS))

    two = tmp_path / "two"
    flags = []
    for key, value in {**ARGS, "batch_size": 4, "loss": loss}.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag if value is not False else "--full"] if isinstance(value, bool) else [flag, str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "aot_cli", "train",
         "--model", str(tiny_model_dir), "--data", str(paired_data), "-o", str(two), *flags],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sort set 16 (global scope)" in result.stderr
    one_delta, two_delta = _delta(one, tiny_model_dir), _delta(two, tiny_model_dir)
    assert one_delta.norm() > 0
    assert float((two_delta - one_delta).norm() / one_delta.norm()) < 1e-4
