"""Artifact directories: the contract between steps (DESIGN.md section 2).

Every step writes one directory holding a ``manifest.json`` written last. Outputs are built in a
temporary directory next to the target and renamed into place, so a failed step leaves nothing
half-written and a directory without a manifest is known to be incomplete.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
import shutil
import sys
import uuid
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from aot_cli import __version__
from aot_cli.errors import UserError

MANIFEST = "manifest.json"
KINDS = ("dataset", "run", "model", "eval")
_VERSIONED = (
    "torch", "transformers", "datasets", "tokenizers", "peft", "accelerate", "lm_eval",
    "alpaca_eval", "trl", "bitsandbytes",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that change results (missing ones are left out)."""
    versions = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_SAMPLE_BYTES = 1 << 20


def sampled_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes when it is small (<= 2 MiB); otherwise of its size, first MiB and
    last MiB. Hashing a 14 GB checkpoint on every run would take minutes; a changed weight file
    virtually always changes its size, header (safetensors metadata) or tail."""
    path = Path(path)
    size = path.stat().st_size
    if size <= 2 * _SAMPLE_BYTES:
        return sha256_file(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_SAMPLE_BYTES))
        handle.seek(-_SAMPLE_BYTES, os.SEEK_END)
        digest.update(handle.read())
    return digest.hexdigest()


def directory_fingerprint(path: str | Path) -> str:
    """A fingerprint of a directory's files: relative names and their sampled digests."""
    path = Path(path)
    files = sorted(f for f in path.rglob("*") if f.is_file())
    return fingerprint([(str(f.relative_to(path)), sampled_digest(f)) for f in files])


def fingerprint(obj: Any) -> str:
    """A stable short hash of any JSON-serializable value (keys sorted), for cache keys."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def describe_input(path: str | Path) -> dict[str, str]:
    """An ``inputs`` entry: a file gets its SHA-256, an artifact directory its manifest's fingerprint,
    any other directory (a model checkpoint) :func:`directory_fingerprint`; a hub id is recorded as is."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p), "sha256": sha256_file(p)}
    if (p / MANIFEST).is_file():
        manifest = json.loads((p / MANIFEST).read_text())
        fp = manifest.get("summary", {}).get("fingerprint") or sha256_file(p / MANIFEST)
        return {"path": str(p), "fingerprint": fp}
    if p.is_dir():
        return {"path": str(p), "fingerprint": directory_fingerprint(p)}
    return {"hub_id": str(path)}


def invoked_command() -> str:
    """The command line as the user typed it, with the program shown as ``aot``."""
    return shlex.join(["aot", *sys.argv[1:]])


def write_manifest(directory: str | Path, *, kind: str, config: dict, inputs: list[dict] | None = None,
                   summary: dict | None = None) -> dict:
    """Write ``manifest.json`` into `directory` (call this last: it marks the directory complete)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    manifest = {
        "kind": kind,
        "aot_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": invoked_command(),
        "config": config,
        "inputs": inputs or [],
        "versions": library_versions(),
        "summary": summary or {},
    }
    path = Path(directory) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return manifest


def read_manifest(directory: str | Path, kind: str | None = None) -> dict:
    """Read an artifact's manifest, checking its kind; a missing or wrong one is a UserError."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise UserError(f"{directory}: no such directory")
    if not path.is_file():
        what = f"an aot {kind} artifact" if kind else "an aot artifact"
        raise UserError(f"{directory}: no {MANIFEST} (expected {what}; is the step that makes it finished?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if kind is not None and manifest.get("kind") != kind:
        raise UserError(f"{directory}: is a {manifest.get('kind')!r} artifact, expected a {kind!r} one")
    return manifest


def check_output(out: str | Path, overwrite: bool) -> Path:
    """Fail early (before any work) when `out` exists and --overwrite was not given."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists (pass --overwrite to replace it)")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise UserError(f"{out}: cannot create it, {ancestor} is a file")
    return out


@contextmanager
def atomic_output(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `out`; on success rename it into place.

    On any exception the temporary directory is removed and `out` is left as it was. With
    `overwrite`, an existing `out` is replaced only after the new one is complete.
    """
    out = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
