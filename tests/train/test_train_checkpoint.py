"""Checkpoint bookkeeping: which checkpoint `--resume auto` picks, and what a resume may not change."""

from __future__ import annotations

import json

import pytest

from aot_cli.errors import UserError
from aot_cli.train.checkpoint import check_compatible, latest_checkpoint, read_state


def _checkpoint(root, name, step=None):
    path = root / "checkpoints" / name
    path.mkdir(parents=True)
    if step is not None:
        (path / "state.json").write_text(json.dumps({"step": step, "global_batch": 16}))
    return path


def test_latest_complete_checkpoint_by_step_number(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, "step-2", 2)
    ten = _checkpoint(tmp_path, "step-10", 10)
    _checkpoint(tmp_path, "step-12")  # no state.json: incomplete
    _checkpoint(tmp_path, ".step-14.tmp", 14)  # a write in progress
    assert latest_checkpoint(tmp_path) == ten


def test_resume_must_keep_data_order_and_objective(tmp_path):
    path = _checkpoint(tmp_path, "step-3", 3)
    saved = read_state(path)
    check_compatible(saved, {"global_batch": 16, "seed": 1}, path)  # keys the checkpoint lacks are not checked
    with pytest.raises(UserError, match=r"made with global_batch=16, this run has 32"):
        check_compatible(saved, {"global_batch": 32}, path)
    with pytest.raises(UserError, match="not a checkpoint"):
        read_state(tmp_path)


def test_resume_must_keep_the_tokenization():
    """Other --max-length / --max-prompt-length would cut different tokens: not the same run."""
    from aot_cli.train.config import Config as TrainConfig
    from aot_cli.train.run import Setup

    def fixed(**overrides):
        config = TrainConfig(model="m", data="d", output="o", **overrides)
        return Setup(config, None, 0.0, None, None, None, (), None, 1, 16, "fp", True, None).fixed

    check_compatible(fixed(), fixed(lr=1e-3), "ckpt")  # optimizer settings may change
    with pytest.raises(UserError, match="max_length=1024, this run has 512"):
        check_compatible(fixed(), fixed(max_length=512), "ckpt")
    with pytest.raises(UserError, match="max_prompt_length"):
        check_compatible(fixed(), fixed(max_prompt_length=64), "ckpt")
