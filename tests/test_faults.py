"""SIGKILL at random points of every step (docs/reliability.md, "Killed"): afterwards the output is
complete or absent, anything else beside it is a temporary of the dead process (removed by the next
run), and running the step again finishes it; a killed `aot train` continued with `--resume auto`
ends with exactly the weights of an uninterrupted run.

Each command runs as a real process forked from the test process (fixture ``aot_process``: it
starts in milliseconds, torch being imported already) and is killed after a delay drawn from a
seeded list of fractions of its measured uninterrupted run time; one train kill fires the moment a
checkpoint's temporary directory appears, i.e. inside a checkpoint write. The assertions hold
wherever the kill lands, so the test is deterministic in what it checks, not in where it strikes.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from aot_cli.artifacts.kinds import DatasetArtifact, EvalArtifact, ModelArtifact, RunArtifact
from aot_cli.eval import dominance
from aot_cli.merge import run as merge_run
from aot_cli.prepare import run as prepare_run
from aot_cli.train import run as train_run
from aot_cli.train.checkpoint import checkpoint_problem

# The steps' modules, imported once here so that every forked child starts warm (importing the
# eval stack alone takes seconds, and would make the kill points fall in the imports).
STEPS = (prepare_run, train_run, merge_run, dominance)

KILLS = 3  # seeded kill points per step


def _fractions(step: str) -> list[float]:
    rng = random.Random(f"faults:{step}")
    return sorted(rng.uniform(0.05, 0.95) for _ in range(KILLS))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _removable(name: str, target: str) -> bool:
    """A leftover of a killed writer of `target`: its lock file, or a temporary of a dead process."""
    if name == f".{target}.lock":
        return True
    match = re.fullmatch(rf"\.{re.escape(target)}\.(?:tmp|old)-(\d+)-[0-9a-f]{{8}}", name)
    return bool(match) and not _pid_alive(int(match[1]))


def _timed(aot_process, args) -> float:
    process = aot_process(*args)
    assert process.wait() == 0, process.stderr
    return time.monotonic() - process.started


def _kill_after(aot_process, args, delay: float):
    process = aot_process(*args)
    time.sleep(delay)
    return process.kill()


def _write_pairs(path: Path, n: int) -> Path:
    """`n` short preference pairs as JSONL (short texts keep every run well under a second)."""
    words = ["apple", "river", "stone", "cloud", "paper", "garden", "window", "music"]
    rows = [{"prompt": f"Is the {words[i % 8]} near the {words[(i * 3 + 1) % 8]}? ({i})",
             "chosen": f"Yes, the {words[i % 8]} is near.", "rejected": f"No. {words[(i + 5) % 8]} paper."}
            for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _write_pairs(tmp_path_factory.mktemp("faults") / "pairs.jsonl", 72)


@pytest.fixture(scope="module")
def dataset(source):
    from aot_cli.cli import app

    out = source.parent / "data"
    result = CliRunner().invoke(app, ["prepare", str(source), "-o", str(out), "--test-size", "8"])
    assert result.exit_code == 0, result.stderr
    return out


def _atomic_step(aot_process, tmp_path, name: str, args, reader, same) -> None:
    """Kill `aot ARGS -o OUT` at the seeded points: OUT is complete (`reader` loads it, `same` says it
    matches the uninterrupted run's) or absent, and everything else is removable; then run it again."""
    reference = tmp_path / "reference" / "out"
    seconds = _timed(aot_process, [*args, "-o", reference])
    expected = reader(reference)
    for fraction in _fractions(name):
        parent = tmp_path / f"{name}-{fraction:.3f}"
        out = parent / "out"
        _kill_after(aot_process, [*args, "-o", out], seconds * fraction)
        leftovers = [p.name for p in parent.iterdir() if p.name != "out"] if parent.exists() else []
        assert all(_removable(n, "out") for n in leftovers), leftovers
        if out.exists():
            same(reader(out), expected)
        again = aot_process(*args, "-o", out, "--overwrite")
        assert again.wait() == 0, again.stderr
        same(reader(out), expected)
        assert sorted(p.name for p in parent.iterdir()) == ["out"]  # the temporaries and the lock are gone


def test_prepare_killed(aot_process, source, tmp_path):
    _atomic_step(aot_process, tmp_path, "prepare", ["prepare", source], DatasetArtifact.load,
                 lambda got, want: got.fingerprint == want.fingerprint or pytest.fail("other data"))


def _same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_merge_killed(aot_process, lora_run_dir, tmp_path):
    _atomic_step(aot_process, tmp_path, "merge", ["merge", lora_run_dir], ModelArtifact.load,
                 lambda got, want: _same_tensors(got.path / "model.safetensors", want.path / "model.safetensors"))


def test_eval_killed(aot_process, lora_run_dir, dataset, tmp_path):
    _atomic_step(aot_process, tmp_path, "eval", ["eval", "dominance", lora_run_dir, "--data", dataset],
                 EvalArtifact.load, lambda got, want: got.results["scores"] == want.results["scores"]
                 or pytest.fail("other scores"))


TRAIN = ["--full", "--max-steps", 8, "--save-steps", 2, "--save-total-limit", 2, "--batch-size", 2,
         "--grad-accum", 2, "--lr", 1e-4, "--warmup-ratio", 0, "--max-length", 64, "--max-prompt-length", 32]


def _check_run_dir(out: Path) -> str:
    """absent, complete, or unfinished: every step-N checkpoint good, anything else in checkpoints/ a
    temporary of a dead process."""
    if not out.exists():
        return "absent"
    if (out / "manifest.json").exists():
        RunArtifact.load(out)
        return "complete"
    root = out / "checkpoints"
    for path in root.iterdir() if root.is_dir() else ():
        if path.name.startswith("step-"):
            assert checkpoint_problem(path) is None, path
        else:
            assert _removable(path.name, path.name.split(".")[1]), path.name
    return "unfinished"


def _kill_in_checkpoint_write(aot_process, args, out: Path, limit: float):
    """Start `args` and kill it as soon as a checkpoint temporary appears (or when `limit` s pass)."""
    process = aot_process(*args)
    root, deadline = out / "checkpoints", time.monotonic() + limit
    while process.poll() is None and time.monotonic() < deadline:
        if root.is_dir() and any(".tmp-" in entry.name for entry in os.scandir(root)):
            break
    return process.kill()


def test_train_killed_then_resumed_equals_uninterrupted(aot_process, tiny_model_dir, dataset, tmp_path):
    """Kill a fresh run inside its first checkpoint write, then at the seeded points, each time
    continuing with --resume auto (or starting again when nothing was left), then let it finish."""
    args = ["train", "--model", tiny_model_dir, "--data", dataset, *TRAIN]
    straight = tmp_path / "straight"
    seconds = _timed(aot_process, [*args, "-o", straight])
    out = tmp_path / "killed"

    def again() -> list:
        return [*args, "-o", out, *(["--resume", "auto"] if out.exists() else [])]

    states = []
    _kill_in_checkpoint_write(aot_process, again(), out, seconds)
    states.append(_check_run_dir(out))
    for fraction in _fractions("train"):
        if states[-1] == "complete":
            break
        _kill_after(aot_process, again(), seconds * fraction)
        states.append(_check_run_dir(out))
    if states[-1] != "complete":
        last = aot_process(*again())
        assert last.wait() == 0, last.stderr
    assert _check_run_dir(out) == "complete", states
    _same_tensors(straight / "model" / "model.safetensors", out / "model" / "model.safetensors")
    # --save-total-limit 2, and the temporaries of the killed writes are gone
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]
