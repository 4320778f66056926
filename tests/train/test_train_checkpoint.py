"""Checkpoints: what `--resume auto` picks, what a resume may not change, how a damaged checkpoint is
recognized (sizes and SHA-256 in state.json, finite weights), temporaries, and --save-total-limit."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from aot_cli.artifacts.store import sha256_file
from aot_cli.errors import UserError
from aot_cli.train import checkpoint
from aot_cli.train.checkpoint import (check_compatible, check_good, checkpoint_problem, checkpoints,
                                      newest_good_checkpoint, read_state, save_checkpoint)


class Trainable:
    """A small model with its optimizer and scheduler, as the loop holds them."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(8, 4)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.accelerator = Accelerator()

    def save(self, out, step, keep=None):
        self.model(torch.ones(1, 8)).sum().backward()
        self.optimizer.step()
        return save_checkpoint(out, step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               state={"seed": 1, "weight_norm_start": 1.5}, accelerator=self.accelerator,
                               keep=keep)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_state_lists_every_file_with_size_and_sha256(tmp_path):
    path = Trainable().save(tmp_path, 1)
    state = read_state(path)
    assert state["step"] == 1 and state["seed"] == 1 and state["weight_norm_start"] == 1.5
    names = {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng-0.pt"}
    assert set(state["files"]) == names and set(os.listdir(path)) == names | {"state.json"}
    for name, record in state["files"].items():
        assert record == {"bytes": (path / name).stat().st_size, "sha256": sha256_file(path / name)}
    assert checkpoint_problem(path) is None
    assert sorted(load_file(str(path / "trainable.safetensors"))) == ["bias", "weight"]


@pytest.mark.parametrize("damage, problem", [
    ("truncate", r"trainable.safetensors has \d+ bytes, \d+ were written"),
    ("flip", r"trainable.safetensors differs from what was written \(SHA-256 mismatch\)"),
    ("delete", r"optimizer.pt is missing"),
    ("state", r"state.json is not valid JSON"),
    ("old", r"state.json lists no files \(not written by this version of aot, or edited\)"),
    ("nan", r"trainable.safetensors: bias holds non-finite values"),
])
def test_damaged_checkpoint_is_named(tmp_path, damage, problem):
    path = Trainable().save(tmp_path, 1)
    weights = path / "trainable.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        (path / "optimizer.pt").unlink()
    elif damage == "state":
        (path / "state.json").write_text((path / "state.json").read_text()[:40])
    elif damage == "old":  # a checkpoint without the file list: nothing to verify it by
        (path / "state.json").write_text(json.dumps({"step": 1}))
    else:  # NaN weights recorded consistently (sizes and hashes rewritten): only finiteness tells
        tensors = load_file(str(weights))
        save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, str(weights))
        state = read_state(path)
        state["files"]["trainable.safetensors"] = {"bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
        (path / "state.json").write_text(json.dumps(state))
    assert re.fullmatch(problem, checkpoint_problem(path))
    with pytest.raises(UserError, match=r"^--resume .*step-1: checkpoint step 1 is damaged \(.+\); resume from an "
                                        r"older one \(--resume auto picks the newest good one\) or train again$"):
        check_good(path)


def test_newest_good_checkpoint_passes_over_damaged_ones(tmp_path):
    trainable = Trainable()
    assert newest_good_checkpoint(tmp_path) is None
    for step in (2, 10, 12):
        trainable.save(tmp_path, step)
    (tmp_path / "checkpoints" / "step-14").mkdir()  # no state.json: not a checkpoint
    (tmp_path / "checkpoints" / ".step-16.tmp-1-abcdef12").mkdir()  # a write in progress
    assert checkpoints(tmp_path) == [tmp_path / "checkpoints" / f"step-{s}" for s in (12, 10, 2)]
    assert newest_good_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-12"

    weights = tmp_path / "checkpoints" / "step-12" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    skipped = []
    found = newest_good_checkpoint(tmp_path, lambda path, problem: skipped.append((path.name, problem)))
    assert found == tmp_path / "checkpoints" / "step-10"
    written = read_state(found)["files"]["trainable.safetensors"]["bytes"]  # every step saves the same shapes
    assert skipped == [("step-12", f"trainable.safetensors has 100 bytes, {written} were written")]


def test_temporaries_carry_the_pid_and_stale_ones_are_removed(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    root.mkdir()
    stale = root / f".step-3.tmp-{_dead_pid()}-0123abcd"
    alive = root / ".step-3.tmp-1-0123abcd"  # pid 1 runs: another writer's
    for path in (stale, alive):
        path.mkdir()
        (path / "trainable.safetensors").write_bytes(b"half")
    written_into = []
    real = checkpoint.save_file
    monkeypatch.setattr(checkpoint, "save_file", lambda tensors, where: written_into.append(where) or
                        real(tensors, where))
    Trainable().save(tmp_path, 3)
    assert os.path.basename(os.path.dirname(written_into[0])).startswith(f".step-3.tmp-{os.getpid()}-")
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in root.iterdir()) == [alive.name, "step-3"]


def test_a_failed_write_leaves_the_older_checkpoints_and_no_temporary(tmp_path, monkeypatch):
    trainable = Trainable()
    trainable.save(tmp_path, 1, keep=1)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError):
        trainable.save(tmp_path, 2, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-1"]
    assert checkpoint_problem(tmp_path / "checkpoints" / "step-1") is None


def test_save_total_limit_keeps_the_newest_and_never_counts_later_ones(tmp_path):
    trainable = Trainable()
    for step in (1, 2, 3):
        trainable.save(tmp_path, step, keep=2)
    names = lambda: sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names() == ["step-2", "step-3"]
    trainable.save(tmp_path, 4, keep=0)  # 0: keep all
    assert names() == ["step-2", "step-3", "step-4"]
    # a run resumed from step 4 because step 9 (of an earlier attempt) was damaged: writing step 5
    # with a limit of 1 keeps step 5 and deletes the older ones, and leaves step 9 alone
    trainable.save(tmp_path, 9)
    trainable.save(tmp_path, 5, keep=1)
    assert names() == ["step-5", "step-9"]


def test_resume_must_keep_data_order_and_objective(tmp_path):
    path = Trainable().save(tmp_path, 3)
    saved = read_state(path)
    check_compatible(saved, {"seed": 1, "global_batch": 16}, path)  # keys the checkpoint lacks are not checked
    with pytest.raises(UserError, match=r"made with seed=1, this run has 2"):
        check_compatible(saved, {"seed": 2}, path)
    with pytest.raises(UserError, match="not a checkpoint"):
        read_state(tmp_path)


def test_resume_must_keep_the_tokenization_and_the_base_weights():
    """Other --max-length / --max-prompt-length would cut different tokens, another --dtype or
    --load-in-4bit trains on other base weights: not the same run."""
    from aot_cli.train.config import Config as TrainConfig
    from aot_cli.train.run import Setup

    def fixed(**overrides):
        config = TrainConfig(model="m", data="d", output="o", **overrides)
        return Setup(config, Accelerator(), 0.0, None, None, None, (), None, 1, 16, "fp", True, None).fixed

    check_compatible(fixed(), fixed(lr=1e-3), "ckpt")  # optimizer settings may change
    with pytest.raises(UserError, match="max_length=1024, this run has 512"):
        check_compatible(fixed(), fixed(max_length=512), "ckpt")
    with pytest.raises(UserError, match="max_prompt_length"):
        check_compatible(fixed(), fixed(max_prompt_length=64), "ckpt")
    with pytest.raises(UserError, match="load_in_4bit=False, this run has True"):
        check_compatible(fixed(), fixed(load_in_4bit=True), "ckpt")
    with pytest.raises(UserError, match="dtype='auto', this run has 'bf16'"):
        check_compatible(fixed(), fixed(dtype="bf16"), "ckpt")
    # an FSDP checkpoint (optimizer state keyed by parameter name) is not resumed without FSDP
    with pytest.raises(UserError, match="made with fsdp=True, this run has False"):
        check_compatible({**fixed(), "fsdp": True}, fixed(), "ckpt")


def test_a_checkpoint_that_verifies_but_cannot_be_loaded_is_one_line(tmp_path):
    """Files edited together with their record in state.json pass the hash check; loading them
    still fails in one line naming the step, never with a traceback."""
    trainable = Trainable()
    path = trainable.save(tmp_path, 2)
    (path / "optimizer.pt").write_bytes(b"not a pickle")
    state = read_state(path)
    state["files"]["optimizer.pt"] = {"bytes": 12, "sha256": sha256_file(path / "optimizer.pt")}
    (path / "state.json").write_text(json.dumps(state))
    assert checkpoint_problem(path) is None
    with pytest.raises(UserError, match=r"^--resume .*step-2: checkpoint step 2 cannot be loaded \(.+\); resume "
                                        r"from an older one or train again$"):
        checkpoint.load_checkpoint(path, model=trainable.model, optimizer=trainable.optimizer,
                                   scheduler=trainable.scheduler, accelerator=trainable.accelerator)
