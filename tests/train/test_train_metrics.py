"""metrics.jsonl on resume, the tracker glue (stand-in tensorboard / wandb modules), the curves PNG."""

from __future__ import annotations

import json
import sys
import types

from aot_cli.train.metrics import MetricsLog, plot_curves, read_metrics


def _record(step: int) -> dict:
    return {"step": step, "loss": 0.7 - 0.01 * step, "rewards/chosen": 0.01 * step, "rewards/rejected": -0.01 * step,
            "rewards/margins": 0.02 * step, "rewards/accuracies": 0.5, "rewards/violation_fraction": 0.25,
            "note": "text is not a scalar"}


def test_resume_keeps_lines_up_to_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(1, 6):
        log.write(_record(step))
    log.close()
    resumed = MetricsLog(tmp_path, resume_step=3)
    resumed.write(_record(4))
    resumed.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert MetricsLog(tmp_path).path.read_text() == ""  # a fresh run starts an empty log


def test_tensorboard_and_wandb_receive_scalars(tmp_path, monkeypatch):
    scalars, logged, finished = [], [], []

    class SummaryWriter:
        def __init__(self, log_dir):
            assert log_dir == str(tmp_path / "tensorboard")

        def add_scalar(self, key, value, step):
            scalars.append((key, value, step))

        def close(self):
            finished.append("tensorboard")

    class Run:
        def log(self, values, step):
            logged.append((values, step))

        def finish(self):
            finished.append("wandb")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kwargs: Run()))
    for tracker in ("tensorboard", "wandb"):
        log = MetricsLog(tmp_path, tracker=tracker, config={"lr": 1e-3})
        log.write(_record(2))
        log.close()
    assert ("rewards/margins", 0.04, 2) in scalars and all(key not in ("step", "note") for key, _, _ in scalars)
    assert logged[0][1] == 2 and logged[0][0]["rewards/margins"] == 0.04 and "step" not in logged[0][0]
    assert finished == ["tensorboard", "wandb"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"] == 2


def test_curves_png(tmp_path):
    plot_curves([_record(s) for s in range(1, 5)], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
