"""Unpaired data with unequal counts through `aot train`: an epoch covers every sample in the data's own
proportion, ``--positive-fraction`` overrides it and is part of what a resume must keep, the micro scope
refuses micro-batches without a side, and ``--dominance second`` trains."""

from __future__ import annotations

import json
import math

import pytest

from aot_cli.errors import UserError
from aot_cli.train import run
from aot_cli.train.config import Config as TrainConfig


def config(model, data, out, **overrides) -> TrainConfig:
    settings = dict(model=str(model), data=data, output=out, loss="aot_unpaired", batch_size=2, grad_accum=4,
                    lr=1e-3, warmup_ratio=0.0, max_steps=None, epochs=1.0, save_steps=0, max_length=64,
                    max_prompt_length=32)
    settings.update(overrides)
    return TrainConfig(**settings)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_an_epoch_covers_the_data_in_its_proportion(tiny_model_dir, imbalanced_data, tmp_path, capsys):
    """96 positives, 32 negatives, 16 samples per step: 12 positives and 4 negatives per step, 8 steps;
    the old equal draw (8 + 8) would have stopped after 4 steps, at the end of the negatives."""
    summary = run.run(config(tiny_model_dir, imbalanced_data, tmp_path / "own"))
    assert summary["steps"] == 8
    assert "each step draws 16 samples: 12 positives (fraction 0.75), the rest negatives; 8 steps per epoch" in \
        " ".join(capsys.readouterr().err.split())
    summary = run.run(config(tiny_model_dir, imbalanced_data, tmp_path / "half", positive_fraction=0.5))
    assert summary["steps"] == 4
    manifest = json.loads((tmp_path / "half" / "manifest.json").read_text())
    assert manifest["config"]["positive_fraction"] == 0.5


def test_resume_keeps_the_positive_fraction(tiny_model_dir, imbalanced_data, tmp_path):
    first = tmp_path / "first"
    run.run(config(tiny_model_dir, imbalanced_data, first, epochs=None, max_steps=2, save_steps=1))
    with pytest.raises(UserError, match=r"made with positive_fraction=None, this run has 0.5"):
        run.run(config(tiny_model_dir, imbalanced_data, tmp_path / "second", epochs=None, max_steps=2,
                       positive_fraction=0.5, resume=str(first / "checkpoints" / "step-1")))
    assert not (tmp_path / "second").exists()


def test_micro_scope_needs_both_sides_in_every_micro_batch(tiny_model_dir, imbalanced_data, tmp_path):
    out = tmp_path / "micro"
    with pytest.raises(UserError, match=r"--sort-scope micro sorts each of the 8 micro-batches of a step on its "
                                        r"own, and some steps hold only 4 negatives"):
        run.run(config(tiny_model_dir, imbalanced_data, out, sort_scope="micro", batch_size=1, grad_accum=8))
    with pytest.raises(UserError, match=r"leave some steps with 3 positives and 0 negatives"):
        run.run(config(tiny_model_dir, imbalanced_data, out, batch_size=1, grad_accum=2, positive_fraction=0.95))
    assert not out.exists()
    run.run(config(tiny_model_dir, imbalanced_data, out, sort_scope="micro", batch_size=4, grad_accum=2,
                   epochs=None, max_steps=1))  # 8 rows a micro-batch: 6 positives and 2 negatives each


def test_second_order_dominance_trains_and_differs_from_first(tiny_model_dir, imbalanced_data, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    run.run(config(tiny_model_dir, imbalanced_data, first, epochs=None, max_steps=3, beta=0.5))
    run.run(config(tiny_model_dir, imbalanced_data, second, epochs=None, max_steps=3, beta=0.5, dominance="second"))
    assert json.loads((second / "manifest.json").read_text())["config"]["dominance"] == "second"
    a, b = _losses(first), _losses(second)
    assert a[0] == pytest.approx(b[0]) == pytest.approx(0.6931, abs=1e-4)  # policy == reference: every gap is 0
    assert all(math.isfinite(x) for x in b) and abs(a[-1] - b[-1]) > 1e-4
