"""Atomic outputs, locks, stale temporaries, output/input overlap, I/O errors, manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from aot_cli.artifacts.store import (atomic_dir, atomic_file, describe_input, directory_fingerprint, fingerprint,
                                     output_lock, read_manifest, remove_stale_temporaries_in, sampled_digest,
                                     write_manifest)
from aot_cli.errors import UserError


def test_atomic_output_renames_on_success_and_cleans_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
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
        with atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True):
            raise RuntimeError
    assert (out / "keep.txt").read_text() == "old"
    with atomic_dir(out, overwrite=True) as tmp:
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
    (tmp_path / "manifest.json").write_text('{"kind": "mod')  # truncated by a kill
    with pytest.raises(UserError, match="manifest.json:1: not valid JSON .* damaged"):
        read_manifest(tmp_path, "run")
    (tmp_path / "manifest.json").write_text('{"what": 1}')
    with pytest.raises(UserError, match="not an aot manifest"):
        read_manifest(tmp_path)


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


def test_output_that_is_or_contains_or_sits_inside_an_input_is_refused(tmp_path):
    data = tmp_path / "runs" / "a"
    data.mkdir(parents=True)
    for out in (data, tmp_path / "runs", data / "merged"):
        with pytest.raises(UserError, match="would overwrite or sit inside the input"):
            with atomic_dir(out, overwrite=True, inputs=[data]):
                pass
    assert data.is_dir()
    with atomic_dir(tmp_path / "runs" / "b", inputs=[data, "org/hub-model", None]) as tmp:
        (tmp / "x").write_text("ok")   # a sibling of an input is fine; hub ids are not paths


def test_a_second_writer_of_the_same_output_gets_one_line(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from aot_cli.artifacts.store import output_lock
        with output_lock(Path({str(out)!r})):
            print("locked", flush=True)
            time.sleep(30)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"another aot process \\(pid {holder.pid}\\) is writing it"):
            with atomic_dir(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with atomic_dir(out) as tmp:   # a killed holder leaves no stale lock
        (tmp / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".out.tmp-{dead_pid}-0123abcd"
    stale.mkdir()
    (stale / "weights").write_text("a full copy left by a killed run")
    alive = tmp_path / f".out.tmp-{os.getpid()}-feedbeef"   # ours, still running: kept
    alive.mkdir()
    other = tmp_path / f".out2.tmp-{dead_pid}-0123abcd"   # another output's: not ours to judge here
    other.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
    assert not stale.exists() and alive.exists() and other.exists()
    # any output's stale temporaries in a directory (a run's checkpoints/ after a kill)
    old = tmp_path / f".step-4.old-{dead_pid}-0123abcd"
    old.mkdir()
    remove_stale_temporaries_in(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "out"])


def test_a_failed_step_leaves_no_directory_behind(tmp_path):
    """The directories made above the output for it are removed again when the step fails."""
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(UserError, match="bad data"):
        with atomic_dir(out):
            raise UserError("bad data")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "mine.txt").write_text("kept")
    with pytest.raises(RuntimeError):
        with atomic_dir(out):
            raise RuntimeError
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["mine.txt"]


def test_an_output_that_cannot_be_written_is_one_user_error(tmp_path, monkeypatch):
    import errno
    import pathlib

    real_mkdir = pathlib.Path.mkdir

    def refused(self, *args, **kwargs):  # what a directory without write permission answers (root ignores modes)
        if self.name.startswith(".out.tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refused)
    with pytest.raises(UserError, match="cannot write .*out: Permission denied"):
        with atomic_dir(tmp_path / "out"):
            pass


def test_disk_full_inside_the_output_is_one_user_error(tmp_path):
    import errno

    with pytest.raises(UserError, match="cannot write .*out: No space left on device"):
        with atomic_dir(tmp_path / "out") as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):  # an input that cannot be read is not an output problem
        with atomic_dir(tmp_path / "out"):
            raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "input.json"))


def test_atomic_file_replaces_in_one_step(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    with atomic_file(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"


def test_output_lock_is_released_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with output_lock(out):
            raise RuntimeError
    with output_lock(out):
        pass
