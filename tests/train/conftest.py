"""Fixtures for `aot train`: small learnable preference datasets written as dataset artifacts
(docs/architecture.md), so the training tests do not depend on `aot prepare`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from aot_cli.artifacts.store import fingerprint, write_manifest

WORDS = ["apple", "river", "stone", "cloud", "paper", "garden", "window", "music", "forest", "candle",
         "bridge", "silver", "planet", "coffee", "market", "winter", "engine", "letter", "island", "pencil"]


def preference_rows(n: int, seed: int) -> list[dict]:
    """Prompts asking about a word; the chosen answer always starts with "Yes", the rejected one
    with "No": a preference a tiny model learns in a few dozen steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word, other = rng.sample(WORDS, 2)
        rows.append({"prompt": f"Is the {word} near the {other}?",
                     "chosen": f"Yes, the {word} is near the {other}.",
                     "rejected": f"No. {other} {word} paper stone cloud."})
    return rows


def unpair(rows: list[dict], seed: int) -> list[dict]:
    """Each pair gives either its chosen (label True) or its rejected (label False) answer."""
    rng = random.Random(seed)
    return [{"prompt": r["prompt"], "completion": r["chosen"] if rng.random() < 0.5 else r["rejected"],
             "label": None} for r in rows]


def write_dataset(path: Path, train: list[dict], test: list[dict], *, paired: bool) -> Path:
    from datasets import Dataset, DatasetDict

    if not paired:
        for row in train + test:
            row["label"] = row["completion"].startswith("Yes")
    DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)}).save_to_disk(str(path))
    write_manifest(path, kind="dataset", config={}, summary={
        "paired": paired, "counts": {"train": len(train), "test": len(test)},
        "fingerprint": fingerprint([train, test, paired])})
    return path


@pytest.fixture(scope="session")
def paired_data(tmp_path_factory) -> Path:
    """64 training and 32 test pairs."""
    return write_dataset(tmp_path_factory.mktemp("paired") / "data", preference_rows(64, 0),
                         preference_rows(32, 1), paired=True)


@pytest.fixture(scope="session")
def unpaired_data(tmp_path_factory) -> Path:
    """The same kind of data with the pairs broken: about half positives, half negatives."""
    return write_dataset(tmp_path_factory.mktemp("unpaired") / "data", unpair(preference_rows(128, 2), 3),
                         unpair(preference_rows(32, 4), 5), paired=False)


@pytest.fixture(scope="session")
def imbalanced_data(tmp_path_factory) -> Path:
    """Unpaired data with 3 positives to 1 negative: 96 positives and 32 negatives (the first pairs give
    their chosen answer, the rest their rejected one)."""
    rows = preference_rows(128, 6)
    train = [{"prompt": r["prompt"], "completion": r["chosen"] if i < 96 else r["rejected"], "label": None}
             for i, r in enumerate(rows)]
    return write_dataset(tmp_path_factory.mktemp("imbalanced") / "data", train,
                         unpair(preference_rows(32, 7), 8), paired=False)


@pytest.fixture(scope="session")
def mixed_length_data(tmp_path_factory) -> Path:
    """64 training pairs where every other rejected answer is long: micro-batches mix lengths."""
    train = preference_rows(64, 0)
    for row in train[::2]:
        row["rejected"] += " stone cloud paper river" * 6
    return write_dataset(tmp_path_factory.mktemp("mixed") / "data", train, preference_rows(8, 1), paired=True)


@pytest.fixture
def noisy_paired_data(tmp_path) -> Path:
    """512 training pairs with 45% of them flipped (label noise), 64 clean test pairs."""
    rng = random.Random(0)
    train = preference_rows(512, 10)
    for row in train:
        if rng.random() < 0.45:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    return write_dataset(tmp_path / "noisy", train, preference_rows(64, 11), paired=True)


@pytest.fixture
def held_out_log_ratios():
    """``f(run_dir, data)``: the held-out log-ratios below (a fixture, so test modules share it)."""
    return _held_out_log_ratios


def _held_out_log_ratios(run_dir: Path, data: Path):
    """Policy/reference log-ratios of the chosen and of the rejected answers of ``data``'s test pairs,
    for a finished run (through ``load_run``, as eval loads it)."""
    import torch

    from aot_cli.artifacts.kinds import RunArtifact
    from aot_cli.artifacts.models import load_run
    from aot_cli.data.dataset import load_prepared
    from aot_cli.data.tokenize import TokenizeSettings, tokenize_split
    from aot_cli.train.batching import collate, make_sides
    from aot_cli.train.logprobs import model_sequence_logps

    loaded = load_run(RunArtifact.load(run_dir))
    tokenizer = loaded.tokenizer
    test = tokenize_split(load_prepared(data)[1]["test"], tokenizer, TokenizeSettings(64, 32), paired=True)

    sides = make_sides(test, paired=True)
    batches = [collate([side.get(i) for i in range(len(side))], tokenizer.pad_token_id) for side in sides]
    with torch.no_grad():
        policy = [model_sequence_logps(loaded.policy, *batch) for batch in batches]
        with loaded.reference() as reference:   # LoRA: the same model with its adapter disabled
            ref = [model_sequence_logps(reference, *batch) for batch in batches]
    chosen, rejected = (p - r for p, r in zip(policy, ref))
    return chosen, rejected


def cli_flags(args: dict) -> list[str]:
    """`aot train` flags for Config fields (``lora=True`` / ``False`` -> ``--lora`` / ``--full``; another
    boolean field set True -> its flag)."""
    flags = []
    for key, value in args.items():
        if key == "lora":
            flags.append("--lora" if value else "--full")
        elif isinstance(value, bool):
            flags += ["--" + key.replace("_", "-")] if value else []
        else:
            flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


@pytest.fixture(scope="session")
def accelerate_train():
    """Run `aot train` as a user launches it on several processes: ``accelerate launch --config_file`` with
    one of the shipped configs (2 CPU processes over gloo); returns the finished process (exit 0 asserted)."""
    import os
    import subprocess
    import sys

    from aot_cli.configs.show import accelerate_config

    def launch(config: str, model: Path, data: Path, out: Path, cache: Path | None = None,
               **args) -> subprocess.CompletedProcess:
        """`cache`: an aot cache of its own (the reference log-probs computed by these processes, not read
        from what an earlier run of the session wrote)."""
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(config)),
                   "-m", "aot_cli", "train", "--model", str(model), "--data", str(data), "-o", str(out),
                   *cli_flags(args)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", **({"AOT_CACHE_DIR": str(cache)} if cache else {})}
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        return result

    return launch


@pytest.fixture(scope="session")
def same_update_and_export():
    """Check a full fine-tuning run on several processes (`many`) against one process (`one`): the update of
    the whole model agrees to 1e-4 relative, and `aot merge` exports the run to a plain Llama directory that
    holds exactly its trained weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from aot_cli.merge import run as merge_run
    from aot_cli.merge.config import Config as MergeConfig

    def check(base_dir: Path, one: Path, many: Path, merged: Path) -> None:
        base = load_file(str(base_dir / "model.safetensors"))
        weights = {name: load_file(str(run / "model" / "model.safetensors")) for name, run in (("one", one),
                                                                                               ("many", many))}
        one_delta, many_delta = (torch.cat([(weights[name][k] - base[k]).flatten() for k in sorted(base)])
                                 for name in ("one", "many"))
        assert one_delta.norm() > 0
        assert float((many_delta - one_delta).norm() / one_delta.norm()) < 1e-4
        merge_run.run(MergeConfig(run=str(many), output=merged))
        model = AutoModelForCausalLM.from_pretrained(str(merged))
        assert model.config.architectures == ["LlamaForCausalLM"]
        state = model.state_dict()
        assert all(torch.equal(state[k], weights["many"][k]) for k in weights["many"])

    return check
