"""On a small learnable preference set the tiny model learns: the loss falls and the held-out
implicit-reward accuracy (policy/reference log-ratio of chosen above rejected) rises far above 0.5,
for paired AOT on pairs and unpaired AOT on unpaired data. Also checks ``load_run_policy`` and
``load_run_reference``, which eval uses."""

from __future__ import annotations

import json

import pytest

from aot_cli.train import run
from aot_cli.train.config import Config as TrainConfig


@pytest.mark.parametrize("loss", ["aot", "aot_unpaired"])
def test_learns_preference_held_out(loss, tiny_model_dir, paired_data, unpaired_data, tmp_path, held_out_log_ratios):
    out = tmp_path / loss
    data = paired_data if loss == "aot" else unpaired_data
    run.run(TrainConfig(model=str(tiny_model_dir), data=data, output=out, loss=loss, batch_size=4, grad_accum=2,
                          lr=5e-3, warmup_ratio=0.0, max_steps=12, max_length=64, max_prompt_length=32))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at step 1
    assert sum(losses[-3:]) / 3 < losses[0] - 0.02
    chosen, rejected = held_out_log_ratios(out, paired_data)
    assert (chosen > rejected).float().mean().item() >= 0.9
