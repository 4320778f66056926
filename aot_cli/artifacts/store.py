"""How artifacts are written and fingerprinted: atomic directories and files, locks, manifests.

Every step writes one directory holding a ``manifest.json`` written last (docs/architecture.md,
"The artifact contract"). :func:`atomic_dir` builds it in a temporary directory next to the target
and renames it into place, so a failed or killed step leaves nothing half-written and a directory
without a manifest is known to be incomplete. The same function:

- refuses an output that is, contains or lies inside one of the step's inputs (``-o RUN`` on
  ``aot merge RUN`` would otherwise delete the run it reads);
- holds an exclusive lock on the output while writing, so a second process writing the same
  output stops with one line instead of interleaving with the first;
- removes temporaries left by killed processes (their pid is in the name and no longer runs);
- turns an I/O failure on the output (permission, disk full, read-only filesystem, a name too
  long) into one :class:`UserError` naming the output.

:func:`atomic_file` is the same promise for one file. Nothing here imports anything heavy.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import uuid
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Iterator

from aot_cli import __version__
from aot_cli.errors import UserError

MANIFEST = "manifest.json"
KINDS = ("dataset", "run", "model", "eval")
_VERSIONED = (
    "torch", "transformers", "datasets", "tokenizers", "peft", "accelerate", "lm_eval",
    "alpaca_eval", "trl", "bitsandbytes",
)
# errno values that mean "the output cannot be written here", as opposed to a bug.
_OUTPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.EDQUOT}


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


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a safetensors file, or None when it is whole: its header parses and the file
    is exactly as long as the header plus the data the header describes. A file cut short by a kill or
    a full disk fails this; reading the header costs a few kilobytes whatever the file's size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        if header_len is None or header_len > size - 8:
            return f"truncated: {size} bytes, shorter than its header"
        try:
            header = json.loads(handle.read(header_len))
            end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                      default=0)
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not valid safetensors metadata"
    expected = 8 + header_len + end
    if size != expected:
        return ("truncated: " if size < expected else "") + f"{size} bytes, its header describes {expected}"
    return None


def json_problem(path: str | Path) -> str | None:
    """What is wrong with a JSON file, or None when it parses."""
    try:
        json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return f"line {exc.lineno}: not valid JSON ({exc.msg})"
    except UnicodeDecodeError:
        return "not UTF-8 text"
    return None


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
    any other directory (a model checkpoint) :func:`directory_fingerprint`; a hub id is recorded as is.
    Local paths are recorded absolute, so a later step finds them from any directory."""
    p = Path(path).expanduser()
    if p.is_file():
        return {"path": str(p.resolve()), "sha256": sha256_file(p)}
    if (p / MANIFEST).is_file():
        manifest = read_manifest(p)
        fp = manifest.get("summary", {}).get("fingerprint") or sha256_file(p / MANIFEST)
        return {"path": str(p.resolve()), "fingerprint": fp}
    if p.is_dir():
        return {"path": str(p.resolve()), "fingerprint": directory_fingerprint(p)}
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
    with atomic_file(Path(directory) / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def read_manifest(directory: str | Path, kind: str | None = None) -> dict:
    """Read an artifact's manifest, checking its kind; a missing, damaged or wrong one is a UserError."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise UserError(f"{directory}: no such directory")
    if not path.is_file():
        what = f"an aot {kind} artifact" if kind else "an aot artifact"
        raise UserError(f"{directory}: no {MANIFEST} (expected {what}; is the step that makes it finished?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); the artifact is damaged: "
                        "make it again") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; the artifact is damaged: make it again") from None
    if not isinstance(manifest, dict) or manifest.get("kind") not in KINDS:
        raise UserError(f"{path}: not an aot manifest (no 'kind' among {', '.join(KINDS)})")
    if kind is not None and manifest["kind"] != kind:
        raise UserError(f"{directory}: is a {manifest['kind']!r} artifact, expected a {kind!r} one")
    return manifest


# --- writing outputs -----------------------------------------------------------------------------


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output(out: str | Path, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Fail early (before any work) when `out` exists without --overwrite, when it cannot be a
    directory, or when it is, contains or lies inside one of `inputs` (hub ids are ignored)."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    for item in inputs:
        if item is None:
            continue
        path = Path(item).expanduser()
        if path.exists() and _overlaps(resolved, path.resolve()):
            raise UserError(f"{out}: the output would overwrite or sit inside the input {item}; "
                            "write to another directory")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists (pass --overwrite to replace it)")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise UserError(f"{out}: cannot create it, {ancestor} is a file")
    return out


def output_error(out: Path, exc: OSError) -> UserError | None:
    """The one-line error for an OSError that means "`out` cannot be written here", else None."""
    if exc.errno not in _OUTPUT_ERRNOS:
        return None
    return UserError(f"cannot write {out}: {exc.strerror or exc}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def temporary_name(target: Path, what: str = "tmp") -> Path:
    """A unique sibling name for `target` carrying this process's pid: ``.NAME.tmp-PID-<8 random hex digits>``."""
    return target.with_name(f".{target.name}.{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


# What temporary_name makes: the target's name, the kind (tmp: being written, old: being replaced or
# deleted), the writer's pid.
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")


def _stale(path: Path) -> re.Match | None:
    """The parsed name of a temporary whose writer no longer runs, else None."""
    match = _TEMPORARY.fullmatch(path.name)
    return match if match and not _pid_alive(int(match["pid"])) else None


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def remove_stale_temporaries(target: Path) -> None:
    """Delete the temporaries of `target` whose writing process no longer exists (killed runs)."""
    if target.parent.is_dir():
        for path in target.parent.glob(f".{glob.escape(target.name)}.*"):
            match = _stale(path)
            if match and match["target"] == target.name:
                _remove(path)


def remove_stale_temporaries_in(directory: Path) -> None:
    """Delete every temporary in `directory` whose writing process no longer exists, whatever its
    target (a run's ``checkpoints/`` after a kill mid-checkpoint)."""
    if directory.is_dir():
        for path in directory.glob(".*"):
            if _stale(path):
                _remove(path)


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on `out` (a ``.NAME.lock`` file beside it) while writing it.

    A second process writing the same output gets a UserError at once. The lock is an ``flock``,
    so the kernel releases it when the holder dies: a killed run never leaves a stale lock. The
    file is removed on release (while still locked); a process that locked a file removed
    meanwhile sees that the name now points elsewhere and treats it as taken.
    """
    lock_path = out.parent / f".{out.name}.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as exc:
        raise (output_error(out, exc) or exc) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_ino != os.stat(lock_path).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"{out}: another aot process ({holder}) is writing it; wait for it to finish "
                            "or choose another output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
    finally:
        handle.close()


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished directory `tmp` to `out`, replacing an existing `out` only now."""
    if out.exists():
        old = temporary_name(out, "old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _about_output(exc: OSError, out: Path, tmp: Path | None = None) -> bool:
    """Whether an OSError concerns the output being written (not an input read meanwhile)."""
    names = [Path(name) for name in (exc.filename, exc.filename2) if name]
    if not names:  # a full disk reports no file name
        return True
    return any(out in (name, *name.parents) or (tmp is not None and tmp in (name, *name.parents))
               or name.name.startswith(f".{out.name}.") for name in names)


def output_failure(exc: OSError, out: Path, tmp: Path | None = None) -> UserError | None:
    """The one-line error when `exc` means that `out` (or its temporary `tmp`) cannot be written
    (full disk, permission, read-only filesystem...), else None: an input's error stays a bug's."""
    error = output_error(out, exc)
    return error if error is not None and _about_output(exc, out, tmp) else None


def _missing_ancestors(path: Path) -> list[Path]:
    """The directories above `path` that do not exist yet, nearest first."""
    return [parent for parent in path.parents if not parent.exists()]


def _remove_if_empty(directories: list[Path]) -> None:
    """Remove `directories` (nearest first) while they are empty: what a failed step created for nothing."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


@contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = False,
               inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `out`; on success rename it into place.

    On any exception the temporary directory is removed and `out` is left as it was, and so are the
    directories above it (those created for it are removed again). With `overwrite`, an existing
    `out` is replaced only after the new one is complete. See the module docstring for the input
    check, the lock, stale temporaries and I/O errors.
    """
    out = check_output(out, overwrite, inputs)
    created = _missing_ancestors(out)
    try:
        with output_lock(out):
            remove_stale_temporaries(out)
            tmp = temporary_name(out)
            try:
                tmp.mkdir()
            except OSError as exc:
                raise (output_error(out, exc) or exc) from None
            try:
                yield tmp
                replace_dir(tmp, out)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                error = output_failure(exc, out, tmp)
                if error is None:
                    raise
                raise error from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except BaseException:
        _remove_if_empty(created)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename, so a
    reader (or a killed writer) never sees half a file; a killed writer's temporary is removed by
    the next write of the same file."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise (output_error(path, exc) or exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
