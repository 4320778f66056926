"""Which model gives the reference log-probs: the policy at the start (LoRA with adapters off, or
untouched), a frozen copy of the starting point once the policy has moved."""

from __future__ import annotations

import pytest
import torch

from aot_cli.train.config import Config as TrainConfig
from aot_cli.train.model import build_policy
from aot_cli.train.reference import reference_model

IDS = torch.tensor([[1, 5, 9, 12, 40, 7]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("lora", [True, False])
def test_reference_is_the_starting_point_after_updates(tiny_model_dir, tmp_path, lora):
    config = TrainConfig(model=str(tiny_model_dir), data=tmp_path, output=tmp_path / "o", lora=lora)
    policy = build_policy(config).train()
    start = _logits(policy)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.05)  # training moved the policy
    moved = _logits(policy)
    assert not torch.allclose(moved, start)
    with reference_model(policy, config, at_start=False) as model:
        assert (model is policy) == lora  # LoRA: adapters off, no copy; full: a frozen copy
        assert not model.training
        assert torch.allclose(_logits(model), start, atol=1e-5)
    assert policy.training and torch.allclose(_logits(policy), moved)
