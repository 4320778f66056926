"""A damaged artifact is one `error:` line naming the file, whatever step reads it, and nothing is
written: a truncated or edited adapter (merge, eval dominance, eval tasks, train --init-adapter), a
truncated model shard (a model artifact, a base model), a damaged tokenized cache entry (recomputed)."""

from __future__ import annotations

import json
import shutil

import pytest

from aot_cli.artifacts.kinds import damaged_file
from aot_cli.artifacts.store import json_problem, safetensors_problem, write_manifest

DATA = "tests/fixtures/shapes/paired_strings.jsonl"


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


DAMAGES = {
    "truncated weights": ("adapter_model.safetensors", lambda p: _truncate(p),
                          "adapter_model.safetensors: truncated"),
    "cut weights": ("adapter_model.safetensors", lambda p: _truncate(p, 0.999),
                    "adapter_model.safetensors: "),
    "truncated config": ("adapter_config.json", lambda p: _truncate(p), "adapter_config.json: line "),
    "config not an object": ("adapter_config.json", lambda p: p.write_text("[1, 2]"),
                             "adapter_config.json: not a peft adapter config (no 'peft_type')"),
    "config without peft_type": ("adapter_config.json", lambda p: p.write_text('{"r": "x"}'),
                                 "adapter_config.json: not a peft adapter config (no 'peft_type')"),
    "truncated tokenizer": ("tokenizer.json", lambda p: _truncate(p), "tokenizer.json: line "),
}


def _one_error(result) -> str:
    assert result.exit_code == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return "".join(errors[0].split())  # rich may wrap; compare without spaces


def _squeezed(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from typer.testing import CliRunner

    from aot_cli.cli import app

    out = tmp_path_factory.mktemp("damaged") / "data"
    result = CliRunner().invoke(app, ["prepare", DATA, "-o", str(out), "--test-size", "2"])
    assert result.exit_code == 0, result.stderr
    return out


def _nothing_written(out):
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", ["merge", "eval dominance", "eval tasks", "eval alpaca"])
def test_damaged_adapter_of_a_run(aot, lora_run_dir, dataset, tmp_path, damage, command):
    run = tmp_path / "run"
    shutil.copytree(lora_run_dir, run)
    name, spoil, expected = DAMAGES[damage]
    spoil(run / "adapter" / name)
    out = tmp_path / "out"
    args = {"merge": ["merge", run, "-o", out],
            "eval dominance": ["eval", "dominance", run, "--data", dataset, "-o", out],
            "eval tasks": ["eval", "tasks", run, "--tasks", "arc_easy", "-o", out],
            "eval alpaca": ["eval", "alpaca", run, "-o", out]}[command]
    error = _one_error(aot(*args))
    assert _squeezed(f"error: {run / 'adapter' / name}") in error and _squeezed(expected) in error
    assert _squeezed(f"the run artifact {run} is damaged; train it again") in error
    _nothing_written(out)


def test_truncated_shard_of_a_model_artifact(aot, tiny_model_dir, tmp_path):
    model = tmp_path / "merged"
    shutil.copytree(tiny_model_dir, model)
    write_manifest(model, kind="model", config={}, summary={"shards": ["model.safetensors"]})
    _truncate(model / "model.safetensors")
    for args in (["eval", "tasks", model, "--tasks", "arc_easy"], ["eval", "alpaca", model]):
        out = tmp_path / "eval"
        error = _one_error(aot(*args, "-o", out))
        assert _squeezed(f"error: {model / 'model.safetensors'}: truncated") in error
        assert _squeezed(f"the model artifact {model} is damaged; merge it again") in error
        _nothing_written(out)


def test_truncated_shard_of_a_plain_model_directory(aot, tiny_model_dir, tmp_path):
    """A model directory that aot did not write (a download or copy cut short) is checked too."""
    model = tmp_path / "downloaded"
    shutil.copytree(tiny_model_dir, model)
    _truncate(model / "model.safetensors")
    for args in (["eval", "tasks", model, "--tasks", "arc_easy"], ["eval", "alpaca", model]):
        out = tmp_path / "eval"
        error = _one_error(aot(*args, "-o", out))
        assert _squeezed(f"error: {model / 'model.safetensors'}: truncated") in error
        assert _squeezed("copy or download the model again") in error
        _nothing_written(out)


def test_truncated_shard_of_a_full_run(aot, full_run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run_dir, run)
    _truncate(run / "model" / "model.safetensors", 0.9)
    out = tmp_path / "merged"
    error = _one_error(aot("merge", run, "-o", out))
    assert _squeezed(f"error: {run / 'model' / 'model.safetensors'}: truncated: ") in error
    _nothing_written(out)


def test_truncated_base_model_and_init_adapter_for_train(aot, tiny_model_dir, lora_run_dir, dataset, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    _truncate(base / "model.safetensors")
    out = tmp_path / "run"
    args = ["--data", dataset, "-o", out, "--max-steps", 1, "--batch-size", 1, "--grad-accum", 1]
    error = _one_error(aot("train", "--model", base, *args))
    assert _squeezed(f"error: --model {base}: {base / 'model.safetensors'}: truncated") in error
    _nothing_written(out)

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run_dir / "adapter", adapter)
    _truncate(adapter / "adapter_model.safetensors")
    error = _one_error(aot("train", "--model", tiny_model_dir, "--init-adapter", adapter, *args))
    assert _squeezed(f"error: cannot load the LoRA adapter {adapter}: {adapter / 'adapter_model.safetensors'}: "
                     "truncated") in error
    _nothing_written(out)


def test_file_checks_on_hand_made_files(tmp_path):
    from safetensors.torch import save_file
    import torch

    whole = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(4), "b": torch.zeros(2, 3)}, str(whole))
    assert safetensors_problem(whole) is None
    size = whole.stat().st_size
    data = whole.read_bytes()
    whole.write_bytes(data[:-1])
    assert safetensors_problem(whole) == f"truncated: {size - 1} bytes, its header describes {size}"
    whole.write_bytes(data + b"\0")
    assert safetensors_problem(whole) == f"{size + 1} bytes, its header describes {size}"
    whole.write_bytes(data[:5])
    assert safetensors_problem(whole) == "truncated: 5 bytes, shorter than its header"
    whole.write_bytes((10).to_bytes(8, "little") + b"not json!!")
    assert safetensors_problem(whole) == "its header is not valid safetensors metadata"
    config = tmp_path / "config.json"
    config.write_text('{"a": 1,\n "b": ')
    assert json_problem(config) == "line 2: not valid JSON (Expecting value)"
    assert damaged_file(tmp_path) == f"{config}: line 2: not valid JSON (Expecting value)"
    config.write_text(json.dumps({"a": 1}))
    assert json_problem(config) is None
    whole.write_bytes(data)
    assert damaged_file(tmp_path) is None
    whole.write_bytes(data[:-1])
    assert damaged_file(tmp_path) == f"{whole}: truncated: {size - 1} bytes, its header describes {size}"


@pytest.mark.parametrize("damage", ["truncated shard", "deleted"])
def test_the_base_model_of_a_run_is_checked_with_the_run(aot, tiny_model_dir, lora_run_dir, dataset, tmp_path,
                                                          damage):
    """Every reader of a run loads its base; a damaged or missing base is one line naming both."""
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    run = tmp_path / "run"
    shutil.copytree(lora_run_dir, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["model"] = str(base)
    (run / "manifest.json").write_text(json.dumps(manifest))
    if damage == "deleted":
        shutil.rmtree(base)
    else:
        _truncate(base / "model.safetensors")
    expected = ("no such model directory" if damage == "deleted"
                else f"{base / 'model.safetensors'}: truncated")
    for args in (["merge", run], ["eval", "tasks", run, "--tasks", "arc_easy"],
                 ["eval", "dominance", run, "--data", dataset], ["eval", "alpaca", run]):
        out = tmp_path / "out"
        error = _one_error(aot(*args, "-o", out))
        assert _squeezed(f"error: {run}: the base model {base}") in error and _squeezed(expected) in error
        assert _squeezed("the run was trained on it (config.model in its manifest.json): put it back there") in error
        _nothing_written(out)
