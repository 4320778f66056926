"""The optimizer and the learning-rate schedule `aot train` builds from its flags."""

from __future__ import annotations

import pytest
import torch

from aot_cli.train.config import Config as TrainConfig
from aot_cli.train.run import make_optimizer, make_scheduler


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
