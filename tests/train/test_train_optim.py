"""The optimizer and the learning-rate schedule `aot train` builds from its flags."""

from __future__ import annotations

import os
import platform

import pytest
import torch

from aot_cli.train.config import Config as TrainConfig
from aot_cli.train.run import make_optimizer, make_scheduler, return_large_blocks


@pytest.mark.parametrize("schedule, expected", [
    ("linear", [0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]),
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ("cosine", [0.0, 0.5, 1.0, 0.9330, 0.75, 0.5, 0.25, 0.0670]),
])
def test_schedule_warms_up_then_decays(schedule, expected):
    """8 steps, warmup ratio 0.25: 2 warmup steps from 0, then the schedule (values are LR / peak)."""
    config = TrainConfig(model="m", data="d", output="o", lr=2e-3, warmup_ratio=0.25, lr_scheduler=schedule)
    optimizer = make_optimizer(config, [torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer) is torch.optim.AdamW
    scheduler = make_scheduler(config, optimizer, total_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(scheduler.get_last_lr()[0] / 2e-3)
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(expected, abs=1e-4)


def test_sgd_on_request():
    config = TrainConfig(model="m", data="d", output="o", optim="sgd", lr=0.1, weight_decay=0.01)
    optimizer = make_optimizer(config, [torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["weight_decay"] == 0.01


def test_adamw_is_fused_and_updates_as_the_for_loop_one():
    """Three AdamW steps with weight decay on two tensors: the fused optimizer make_optimizer builds
    moves the weights as torch's for-loop AdamW does, to float rounding."""
    config = TrainConfig(model="m", data="d", output="o", lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in start] for _ in range(3)]
    results = []
    for build in (lambda p: make_optimizer(config, p),
                  lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=False)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = build(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        results.append((optimizer, [p.detach() for p in params]))
    (fused, got), (_, want) = results
    assert fused.defaults["fused"] is True
    for a, b, s in zip(got, want, start):
        assert not torch.equal(a, s)
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(platform.system() != "Linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ,
                    reason="glibc's mallopt on Linux, not set by the user")
def test_large_blocks_go_back_to_the_system():
    """The allocator setting holds on glibc (it changes where memory comes from, never a value)."""
    assert return_large_blocks() is True
