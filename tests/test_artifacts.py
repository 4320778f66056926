"""Atomic outputs and manifests."""

from __future__ import annotations

import json

import pytest

from aot_cli.artifacts import atomic_output, describe_input, fingerprint, read_manifest, write_manifest
from aot_cli.errors import UserError


def test_atomic_output_renames_on_success_and_cleans_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_output(out) as tmp:
        write_manifest(tmp, kind="dataset", config={"a": 1}, summary={"fingerprint": "abc"})
    manifest = read_manifest(out, "dataset")
    assert manifest["config"] == {"a": 1} and manifest["kind"] == "dataset"
    assert set(manifest) >= {"aot_version", "created", "command", "inputs", "versions", "summary"}
    assert "torch" in manifest["versions"]


def test_existing_output_needs_overwrite_and_old_kept_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(UserError, match="already exists \\(pass --overwrite"):
        with atomic_output(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output(out, overwrite=True):
            raise RuntimeError
    assert (out / "keep.txt").read_text() == "old"
    with atomic_output(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(UserError, match="no manifest.json"):
        read_manifest(tmp_path, "run")
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "model"}))
    with pytest.raises(UserError, match="is a 'model' artifact, expected a 'run' one"):
        read_manifest(tmp_path, "run")


def test_fingerprints_are_stable_and_content_based(tmp_path):
    assert fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    f = tmp_path / "f.json"
    f.write_text("1")
    first = describe_input(f)["sha256"]
    f.write_text("2")
    assert describe_input(f)["sha256"] != first
    assert describe_input("org/name") == {"hub_id": "org/name"}


def test_directory_fingerprint_samples_big_files(tmp_path):
    from aot_cli.artifacts import directory_fingerprint, sampled_digest

    big = tmp_path / "model.safetensors"
    data = bytearray(5 << 20)
    big.write_bytes(bytes(data))
    first = directory_fingerprint(tmp_path)
    data[-1] = 1  # the tail is sampled
    big.write_bytes(bytes(data))
    assert directory_fingerprint(tmp_path) != first
    before_middle = sampled_digest(big)
    data[3 << 20] = 7  # the middle of a big file is not read: that is the trade-off
    big.write_bytes(bytes(data))
    assert sampled_digest(big) == before_middle
    small = tmp_path / "config.json"
    small.write_text("{}")
    assert describe_input(tmp_path)["fingerprint"] != first
