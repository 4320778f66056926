"""`aot train` under faults: a damaged checkpoint or metrics log on resume, divergence, the checkpoint
limit, and a second process writing the same run (docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from aot_cli.artifacts.store import sha256_file
from aot_cli.train import loop, run
from aot_cli.train.config import Config as TrainConfig

SETTINGS = dict(batch_size=2, grad_accum=4, lr=1e-3, warmup_ratio=0.0, max_steps=4, save_steps=1, max_length=64,
                max_prompt_length=32)


def config(model, data, out, **overrides) -> TrainConfig:
    return TrainConfig(model=str(model), data=data, output=out, **{**SETTINGS, **overrides})


def _weights(out):
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _one_error(result) -> str:
    assert result.exit_code == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def straight(tiny_model_dir, paired_data, tmp_path_factory):
    """An uninterrupted 4-step run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    run.run(config(tiny_model_dir, paired_data, out))
    return out


@pytest.fixture(scope="module")
def interrupted_run(tiny_model_dir, paired_data, tmp_path_factory):
    """The same run stopped by Ctrl-C during step 3: checkpoints step-1..3, three metrics lines."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    real, calls = loop.step_gradient, []

    def step_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "step_gradient", step_then_ctrl_c)
        with pytest.raises(SystemExit):
            run.run(config(tiny_model_dir, paired_data, out))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2", "step-3"]
    return out


@pytest.fixture
def unfinished(interrupted_run, tmp_path):
    """A private copy of the interrupted run."""
    out = tmp_path / "run"
    shutil.copytree(interrupted_run, out)
    return out


def _nan_filled(checkpoint):
    """Replace a checkpoint's weights by NaN and record the new file consistently in state.json."""
    weights = checkpoint / "trainable.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(weights)).items()}, str(weights))
    state = json.loads((checkpoint / "state.json").read_text())
    state["files"]["trainable.safetensors"] = {"bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    (checkpoint / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("damage", ["truncated", "nan"])
def test_resume_auto_passes_over_a_damaged_latest_checkpoint(aot, straight, unfinished, tiny_model_dir,
                                                             paired_data, damage):
    latest = unfinished / "checkpoints" / "step-3"
    weights = latest / "trainable.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        _nan_filled(latest)
    metrics = unfinished / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-40])  # the last line cut short, as a kill mid-write leaves it
    result = aot("train", "--model", tiny_model_dir, "--data", paired_data, "-o", unfinished, "--resume", "auto",
                 *[f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()])
    assert result.exit_code == 0, result
    problem = ("trainable.safetensors has 1000 bytes, " if damage == "truncated"
               else "trainable.safetensors: base_model.model.model.layers.0.mlp.down_proj.lora_A.default.weight "
                    "holds non-finite values)")
    stderr = _squeezed(result.stderr)  # rich wraps long lines, even inside a path
    assert _squeezed(f"warning: checkpoint {latest} is damaged ({problem}") in stderr
    assert _squeezed("skipped for an older one") in stderr
    assert _squeezed(f"warning: {metrics}:3: not a metrics record (damaged); dropped") in stderr
    assert _squeezed(f"resuming from {unfinished / 'checkpoints' / 'step-2'} (step 2 of 4)") in stderr
    a, b = _weights(straight), _weights(unfinished)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _steps(unfinished) == [1, 2, 3, 4]


@pytest.mark.parametrize("damage, problem", [
    ("truncated", r"trainable.safetensors has 1000 bytes, \d+ were written"),
    ("nan", r"trainable.safetensors: .* holds non-finite values"),
    ("edited", r"optimizer.pt differs from what was written \(SHA-256 mismatch\)"),
])
def test_an_explicitly_named_damaged_checkpoint_is_refused(aot, unfinished, tiny_model_dir, paired_data,
                                                           damage, problem):
    latest = unfinished / "checkpoints" / "step-3"
    if damage == "truncated":
        (latest / "trainable.safetensors").write_bytes((latest / "trainable.safetensors").read_bytes()[:1000])
    elif damage == "nan":
        _nan_filled(latest)
    else:
        data = bytearray((latest / "optimizer.pt").read_bytes())
        data[len(data) // 2] ^= 0x01
        (latest / "optimizer.pt").write_bytes(bytes(data))
    before = sorted(p.name for p in unfinished.rglob("*"))
    result = aot("train", "--model", tiny_model_dir, "--data", paired_data, "-o", unfinished, "--resume", latest,
                 "--max-steps", 4, "--batch-size", 2, "--grad-accum", 4, "--max-length", 64)
    error = " ".join(_one_error(result).split())
    assert error.startswith(f"error: --resume {latest}: checkpoint step 3 is damaged (")
    assert re.search(problem, error), error
    assert error.endswith("resume from an older one (--resume auto picks the newest good one) or train again")
    assert sorted(p.name for p in unfinished.rglob("*")) == before


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(aot, tiny_model_dir, paired_data,
                                                                           tmp_path):
    """--lr 1e6: the loss stays near log 2 (the network saturates) while the weights blow up. One warmup
    step at lr 0 leaves step 1 sound (checkpointed); step 2 diverges and is not checkpointed."""
    out = tmp_path / "run"
    result = aot("train", "--model", tiny_model_dir, "--data", paired_data, "-o", out, "--lr", "1e6",
                 "--max-steps", 4, "--warmup-ratio", 0.25, "--save-steps", 1, "--batch-size", 2, "--grad-accum", 4,
                 "--max-length", 64)
    error = " ".join(_one_error(result).split())
    assert error.startswith("error: training diverged at step 2: the trainable weights' norm grew to ")
    assert "(the limit is 100x); stopped without checkpointing it; the last good checkpoint is " \
           f"{out / 'checkpoints' / 'step-1'}; lower --lr (it is 1e+06) and train again" in error
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]
    assert not (out / "manifest.json").exists() and not (out / "adapter").exists()
    assert _steps(out) == [1, 2]
    state = json.loads((out / "checkpoints" / "step-1" / "state.json").read_text())
    assert state["weight_norm_start"] > 0


def test_divergence_criterion():
    assert not loop.diverged(99.0, 1.0) and loop.diverged(101.0, 1.0)
    assert loop.diverged(float("inf"), 1.0) and loop.diverged(float("nan"), 1.0)
    assert not loop.diverged(5.0, 0.0)  # no scale to compare with: only non-finite counts
    params = [torch.full((3,), 3e4, dtype=torch.float16), torch.tensor([4e4], dtype=torch.float16)]
    assert loop.weight_norm(params) == pytest.approx((3 * 9e8 + 16e8) ** 0.5, rel=1e-3)  # fp16 would overflow


def test_save_total_limit_keeps_the_newest_checkpoints(tiny_model_dir, paired_data, tmp_path):
    out = tmp_path / "run"
    run.run(config(tiny_model_dir, paired_data, out, max_steps=5, save_total_limit=2))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3", "step-4"]  # step 5 is the result


def test_a_second_writer_gets_one_line_and_the_metrics_stay_whole(aot_process, tiny_model_dir, paired_data,
                                                                  tmp_path):
    """Two real processes on one run directory: while the first trains, a second one asked to resume it
    or to overwrite it stops with one line (exit 2) and writes nothing; the first goes on untouched."""
    out = tmp_path / "run"
    args = ["train", "--model", tiny_model_dir, "--data", paired_data, "-o", out, "--max-steps", 500,
            "--batch-size", 2, "--grad-accum", 2, "--max-length", 64, "--save-steps", 50]
    first = aot_process(*args)
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
        assert first.poll() is None, first.stderr
        time.sleep(0.05)
    for extra in (["--resume", "auto"], ["--overwrite"]):
        second = aot_process(*args, *extra)
        assert second.wait() == 2, second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {out}: another aot process (pid {first.pid}) is writing it; wait for it to "
                          "finish or choose another output"], second.stderr
    assert first.poll() is None, first.stderr  # still training: the refusals did not depend on timing luck
    os.kill(first.pid, signal.SIGINT)  # Ctrl-C: finish the step, checkpoint, exit
    assert first.wait() == 130, first.stderr
    steps = _steps(out)
    assert steps == list(range(1, len(steps) + 1))
    assert (out / "checkpoints" / f"step-{steps[-1]}" / "state.json").is_file()


def test_the_last_good_checkpoint_named_by_the_guards_is_intact_and_finite(unfinished):
    """What the NaN and divergence errors name: not the newest checkpoint, the newest good one."""
    _nan_filled(unfinished / "checkpoints" / "step-3")
    kept = loop._kept(SimpleNamespace(out=unfinished))
    assert kept == f"the last good checkpoint is {unfinished / 'checkpoints' / 'step-2'}"
    for step in (1, 2):
        (unfinished / "checkpoints" / f"step-{step}" / "optimizer.pt").write_bytes(b"")
    assert loop._kept(SimpleNamespace(out=unfinished)) == "no good checkpoint was saved before it"


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_earlier_checkpoints(tiny_model_dir, paired_data,
                                                                                       tmp_path, monkeypatch):
    from aot_cli.train import checkpoint

    real, calls = checkpoint.save_file, []

    def full_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_on_the_second)
    out = tmp_path / "run"
    with pytest.raises(run.UserError, match=rf"^cannot write {re.escape(str(out))}: No space left on device; "
                                            rf"{re.escape(str(out))} keeps the good checkpoints written so far: "
                                            "make room, then continue with --resume auto$"):
        run.run(config(tiny_model_dir, paired_data, out))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"]
