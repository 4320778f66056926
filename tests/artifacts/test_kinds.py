"""The typed readers: each kind checks its manifest and its files, and exposes what callers need."""

from __future__ import annotations

import json

import pytest

from aot_cli.artifacts.kinds import (DatasetArtifact, EvalArtifact, ModelArtifact, RunArtifact, artifact_kind,
                                     check_model_location, load_artifact)
from aot_cli.artifacts.store import write_manifest
from aot_cli.errors import UserError


def _dataset(path, paired=True):
    for name in ("train", "test"):
        (path / name).mkdir(parents=True)
    (path / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    write_manifest(path, kind="dataset", config={}, summary={"paired": paired, "fingerprint": "f00d"})
    return path


def test_dataset_exposes_paired_and_fingerprint_and_checks_its_files(tmp_path):
    data = DatasetArtifact.load(_dataset(tmp_path / "d", paired=False))
    assert data.paired is False and data.fingerprint == "f00d" and data.kind == "dataset"
    (tmp_path / "d" / "dataset_dict.json").unlink()
    with pytest.raises(UserError, match="dataset_dict.json is missing, so the dataset artifact is damaged"):
        DatasetArtifact.load(tmp_path / "d")
    legacy = tmp_path / "legacy"
    _dataset(legacy)
    write_manifest(legacy, kind="dataset", config={}, summary={})
    with pytest.raises(UserError, match="summary.paired is missing"):
        DatasetArtifact.load(legacy)


def test_run_lora_and_full(lora_run_dir, full_run_dir, tiny_model_dir):
    lora = RunArtifact.load(lora_run_dir)
    assert lora.lora and lora.adapter_dir == lora_run_dir / "adapter" and lora.weights_dir is None
    assert lora.trained_dir == lora_run_dir / "adapter" and lora.base_model == str(tiny_model_dir)
    assert lora.init_adapter is None and lora.beta == 0.1 and lora.paired is True
    full = RunArtifact.load(full_run_dir)
    assert not full.lora and full.weights_dir == full_run_dir / "model" and full.adapter_dir is None
    assert load_artifact(lora_run_dir) == lora and artifact_kind(full_run_dir) == "run"


def test_a_damaged_or_unfinished_run_is_one_error(tmp_path, lora_run_dir):
    in_progress = tmp_path / "in-progress"
    (in_progress / "checkpoints" / "step-2").mkdir(parents=True)
    with pytest.raises(UserError, match="no manifest.json .*is the step that makes it finished"):
        RunArtifact.load(in_progress)
    no_weights = tmp_path / "no-weights"
    (no_weights / "adapter").mkdir(parents=True)
    (no_weights / "adapter" / "adapter_config.json").write_text("{}")
    write_manifest(no_weights, kind="run", config={"model": "m"})
    with pytest.raises(UserError, match="adapter/adapter_model.safetensors is missing"):
        RunArtifact.load(no_weights)
    neither = tmp_path / "neither"
    neither.mkdir()
    write_manifest(neither, kind="run", config={"model": "m"})
    with pytest.raises(UserError, match="neither adapter/ nor model/ found"):
        RunArtifact.load(neither)
    with pytest.raises(UserError, match="is a 'run' artifact, expected a 'model' one"):
        ModelArtifact.load(lora_run_dir)


def test_model_checks_its_shards_and_eval_its_results(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    write_manifest(model, kind="model", config={}, summary={"shards": ["model.safetensors"], "source_run": "/r"})
    with pytest.raises(UserError, match="model.safetensors is missing"):
        ModelArtifact.load(model)
    assert str(ModelArtifact.read(model).source_run) == "/r"   # the record alone needs no weights
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "results.json").write_text(json.dumps({"suite": "lm-eval", "scores": {"t": {"acc": 1.0}}}))
    write_manifest(ev, kind="eval", config={}, summary={"suite": "lm-eval"})
    assert EvalArtifact.load(ev).results["scores"] == {"t": {"acc": 1.0}} and EvalArtifact.load(ev).suite == "lm-eval"
    (ev / "results.json").write_text('{"suite": "lm-ev')
    with pytest.raises(UserError, match="results.json: not valid JSON; the eval artifact is damaged"):
        _ = EvalArtifact.load(ev).results


def test_model_location_checks_local_directories_only(tmp_path):
    check_model_location("org/name", "--model")   # a hub id: loading it reports what is wrong
    with pytest.raises(UserError, match="--model ./nope: no such model directory"):
        check_model_location("./nope", "--model")
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        check_model_location(str(tmp_path / "m"), "--model")
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no weights found"):
        check_model_location(str(tmp_path / "m"), "--model")
