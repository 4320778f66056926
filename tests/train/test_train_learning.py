"""On a small learnable preference set the tiny model learns: the loss falls and the held-out
implicit-reward accuracy (policy/reference log-ratio of chosen above rejected) rises far above 0.5,
for paired AOT on pairs and unpaired AOT on unpaired data. Also checks ``load_run_policy`` and
``load_run_reference``, which eval uses."""

from __future__ import annotations

import json

import pytest
import torch

from aot_cli.train import run
from aot_cli.train.config import TrainConfig


def held_out_accuracy(run_dir, paired_data) -> float:
    from aot_cli.data.dataset import load_prepared
    from aot_cli.data.tokenize import TokenizeSettings, tokenize_split
    from aot_cli.train.batching import collate, make_sides
    from aot_cli.train.logprobs import model_sequence_logps
    from aot_cli.train.model import load_run_policy, load_run_reference

    policy, tokenizer = load_run_policy(run_dir)
    reference, _ = load_run_reference(run_dir)
    test = tokenize_split(load_prepared(paired_data)[0]["test"], tokenizer, TokenizeSettings(64, 32), paired=True)
    chosen, rejected = make_sides(test, paired=True)

    @torch.no_grad()
    def log_ratio(side):
        ids, mask, labels = collate([side.get(i) for i in range(len(side))], tokenizer.pad_token_id)
        return model_sequence_logps(policy, ids, mask, labels) - model_sequence_logps(reference, ids, mask, labels)

    return (log_ratio(chosen) > log_ratio(rejected)).float().mean().item()


@pytest.mark.parametrize("loss", ["aot", "aot_unpaired"])
def test_learns_preference_held_out(loss, tiny_model_dir, paired_data, unpaired_data, tmp_path):
    out = tmp_path / loss
    data = paired_data if loss == "aot" else unpaired_data
    run.train(TrainConfig(model=str(tiny_model_dir), data=data, output=out, loss=loss, batch_size=4, grad_accum=2,
                          lr=5e-3, warmup_ratio=0.0, max_steps=12, max_length=64, max_prompt_length=32))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at step 1
    assert sum(losses[-3:]) / 3 < losses[0] - 0.02
    assert held_out_accuracy(out, paired_data) >= 0.9
