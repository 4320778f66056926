"""Reading a prepared dataset back: the happy path and each way it can be wrong."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict

from aot_cli.artifacts.store import write_manifest
from aot_cli.data.dataset import load_prepared
from aot_cli.errors import UserError


def _save(path, rows, summary):
    split = Dataset.from_list(rows)
    DatasetDict(train=split, test=split).save_to_disk(str(path))
    write_manifest(path, kind="dataset", config={}, summary=summary)


def test_load_prepared_returns_splits_and_manifest(tmp_path):
    _save(tmp_path / "d", [{"prompt": "p", "chosen": "c", "rejected": "r"}], {"paired": True})
    artifact, data = load_prepared(tmp_path / "d")
    assert set(data) == {"train", "test"} and data["train"][0] == {"prompt": "p", "chosen": "c", "rejected": "r"}
    assert artifact.manifest["kind"] == "dataset" and artifact.paired is True


def test_load_prepared_rejects_missing_manifest_wrong_kind_and_columns(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_prepared(tmp_path / "nope")
    (tmp_path / "bare").mkdir()
    with pytest.raises(UserError, match="no manifest.json"):
        load_prepared(tmp_path / "bare")
    (tmp_path / "raw.jsonl").write_text("{}\n")  # the raw data instead of its prepared dataset
    with pytest.raises(UserError, match="raw.jsonl: a file, not an aot dataset directory; make one with "
                                        "`aot prepare SOURCE -o DIR`"):
        load_prepared(tmp_path / "raw.jsonl")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"kind": "run"}))
    (tmp_path / "incomplete").mkdir()
    write_manifest(tmp_path / "incomplete", kind="dataset", config={}, summary={"paired": True})
    with pytest.raises(UserError, match="dataset_dict.json is missing, so the dataset artifact is damaged"):
        load_prepared(tmp_path / "incomplete")
    with pytest.raises(UserError, match="'run' artifact, expected a 'dataset'"):
        load_prepared(tmp_path / "run")
    _save(tmp_path / "u", [{"prompt": "p", "chosen": "c", "rejected": "r"}], {"paired": False})
    with pytest.raises(UserError, match="lacks column"):
        load_prepared(tmp_path / "u")
