"""Read a preference-data source into raw rows, keeping where each row came from.

A source is a hub dataset id, a local file (.json, .jsonl, .parquet, .csv), a directory of such
files, a directory written by ``datasets``' ``save_to_disk``, or a prepared dataset (a directory
with a ``manifest.json`` of kind "dataset"). Local JSON
is parsed here, line by line, rather than by ``datasets``: raw files are heterogeneous (a field
that is a string in one row and a list in the next), and a user needs ``FILE:LINE`` for a broken
line, not an Arrow schema error. Every raw row keeps its origin so later checks can name it.

Test splits: a hub (or ``save_to_disk``) dataset's ``--split`` name with "train" replaced by "test" (``train_prefs`` ->
``test_prefs``), else a split named ``test``, ``test_prefs`` or ``validation``, is kept as the test
split; in a directory, files whose name contains "test" form the test split, all others train.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import DatasetDict, get_dataset_split_names, load_dataset, load_from_disk
from huggingface_hub import HfApi

from aot_cli.artifacts.store import MANIFEST, describe_input
from aot_cli.data.dataset import load_prepared
from aot_cli.errors import OptionError, UserError
from aot_cli.jsonl import describe_error, parse_lines, read_text
from aot_cli.vocab import DATA_SUFFIXES as SUFFIXES
from aot_cli.vocab import is_local_path

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # a surrogate can only enter JSON text escaped


@dataclass
class RawPart:
    """Rows from one file or one hub split; `lines` holds JSONL line numbers when known."""

    label: str
    rows: Sequence[dict]
    lines: list[int] | None = None

    def where(self, index: int) -> str:
        """Where row `index` (0-based) came from: ``FILE:LINE`` or ``FILE: row N``."""
        if self.lines is not None:
            return f"{self.label}:{self.lines[index]}"
        return f"{self.label}: row {index + 1}"

    def __iter__(self) -> Iterator[dict]:
        if isinstance(self.rows, list):
            yield from self.rows
            return
        for batch in self.rows.iter(batch_size=1000):  # a datasets.Dataset: fast batched reads
            names = list(batch)
            for values in zip(*(batch[n] for n in names)):
                yield dict(zip(names, values))


@dataclass
class Source:
    """Raw rows per split ("train", and "test" when the source has one) plus provenance."""

    kind: str  # "hub" | "files" | "prepared"
    splits: dict[str, list[RawPart]]
    record: dict
    inputs: list[dict]
    prepared: Any = None  # (DatasetArtifact, DatasetDict) for a prepared dataset
    columns: set[str] = field(default_factory=set)


def load_source(source: str, *, subset: str | None = None, split: str | None = None,
                revision: str | None = None, limit: int | None = None) -> Source:
    """Read `source` (see the module docstring); `limit` keeps the first N rows of each split."""
    path = Path(source)
    saved = path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())
    if path.exists() and (subset or revision or (split and not saved)):
        raise OptionError(f"{source}: {{subset}}, {{split}} and {{revision}} apply to hub datasets, not local "
                          "paths (a directory's files named *test* form its test split)", "subset", "split",
                          "revision")
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return _load_prepared_source(path, limit)
        if saved:
            return _load_saved(path, split, limit)
        return _load_directory(path, limit)
    if path.is_file():
        part = _limit(read_file(path), limit)
        return _files_source({"train": [part]}, [path], source)
    if is_local_path(source):
        raise UserError(f"{source}: no such file or directory (give a local .json/.jsonl/.parquet/.csv "
                        "file, a directory of them, a prepared dataset, or a hub id like org/name)")
    return _load_hub(source, subset=subset, split=split, revision=revision, limit=limit)


def _limit(part: RawPart, limit: int | None) -> RawPart:
    if limit is None or len(part.rows) <= limit:
        return part
    rows = part.rows[:limit] if isinstance(part.rows, list) else part.rows.select(range(limit))
    return RawPart(part.label, rows, part.lines[:limit] if part.lines is not None else None)


def _files_source(splits: dict[str, list[RawPart]], files: list[Path], source: str) -> Source:
    columns = {key for parts in splits.values() for part in parts for row in part.rows for key in row}
    record = {"type": "files", "path": source, "files": [str(f) for f in files]}
    return Source("files", splits, record, [describe_input(f) for f in files], columns=columns)


def _load_directory(path: Path, limit: int | None) -> Source:
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
    if not files:
        found = ", ".join(sorted(f.name for f in path.iterdir())[:10]) or "nothing"
        raise UserError(f"{path}: no .json/.jsonl/.parquet/.csv files in this directory (found: {found})")
    splits: dict[str, list[RawPart]] = {}
    for f in files:
        splits.setdefault("test" if "test" in f.stem.lower() else "train", []).append(read_file(f))
    if "train" not in splits:
        raise UserError(f"{path}: every file looks like a test split (names contain 'test'); "
                        "add a training file")
    for name, parts in splits.items():
        splits[name] = _limit_parts(parts, limit)
    return _files_source(splits, files, str(path))


def _limit_parts(parts: list[RawPart], limit: int | None) -> list[RawPart]:
    """Keep the first `limit` rows across `parts` (in file order)."""
    if limit is None:
        return parts
    kept, left = [], limit
    for part in parts:
        if left <= 0:
            break
        kept.append(_limit(part, left))
        left -= len(kept[-1].rows)
    return kept


def _load_prepared_source(path: Path, limit: int | None) -> Source:
    artifact, data = load_prepared(path)
    if limit is not None:
        data = data.__class__({k: v.select(range(min(limit, len(v)))) for k, v in data.items()})
    record = {"type": "prepared", "path": str(path), "fingerprint": artifact.fingerprint,
              "source": artifact.summary.get("source")}
    splits = {name: [RawPart(f"{path}[{name}]", data[name])] for name in ("train", "test")}
    return Source("prepared", splits, record, [describe_input(path)], prepared=(artifact, data),
                  columns=set(data["train"].column_names))


def _load_saved(path: Path, split: str | None, limit: int | None) -> Source:
    """A directory written by ``save_to_disk`` (not by aot): its splits, chosen as for a hub dataset."""
    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{path}: looks like a `save_to_disk` dataset but cannot be loaded ({exc})") from None
    if not isinstance(data, DatasetDict):
        data = DatasetDict(train=data)
    chosen = _choose_splits(str(path), list(data), split)
    splits = {ours: [_limit(RawPart(f"{path}[{theirs}]", data[theirs]), limit)] for ours, theirs in chosen.items()}
    record = {"type": "saved", "path": str(path), "splits": chosen}
    return Source("files", splits, record, [describe_input(path)],
                  columns=set(splits["train"][0].rows.column_names))


def _hub_splits(source: str, subset: str | None, split: str | None, revision: str | None) -> dict[str, str]:
    """Which hub splits become our train and test splits: ``{"train": name, "test": name}``."""
    try:
        names = get_dataset_split_names(source, subset, revision=revision)
    except Exception as exc:  # the hub client raises many types; all mean "cannot read it"
        raise OptionError(f"{source}: not a local path, and not readable as a hub dataset "
                          f"({type(exc).__name__}: {exc}); check the path or the id, {{subset}} and {{revision}}, "
                          "and that the hub is reachable", "subset", "revision") from None
    return _choose_splits(source, names, split)


def _choose_splits(source: str, names: list[str], split: str | None) -> dict[str, str]:
    """``{"train": name, "test": name}`` among a dataset's split `names` (see the module docstring)."""
    if split is not None and split not in names:
        raise UserError(f"{source}: no split {split!r} (available: {', '.join(names)})")
    train = split or next((n for n in names if n == "train"), None) or \
        next((n for n in names if n.startswith("train")), None)
    if train is None:
        raise OptionError(f"{source}: no train split among {', '.join(names)} (choose one with {{split}})", "split")
    test_candidates = [train.replace("train", "test")] if "train" in train else []
    test_candidates += ["test", "test_prefs", "validation"]
    test = next((n for n in test_candidates if n in names and n != train), None)
    return {"train": train, "test": test} if test else {"train": train}


def _load_hub(source: str, *, subset: str | None, split: str | None, revision: str | None,
              limit: int | None) -> Source:
    chosen = _hub_splits(source, subset, split, revision)
    splits: dict[str, list[RawPart]] = {}
    for ours, theirs in chosen.items():
        try:
            ds = load_dataset(source, subset, split=theirs, revision=revision)
        except Exception as exc:  # see _hub_splits
            raise UserError(f"{source}: cannot load split {theirs!r} ({type(exc).__name__}: {exc})") from None
        splits[ours] = [_limit(RawPart(f"{source}[{theirs}]", ds), limit)]
    commit = _hub_commit(source, revision)
    record = {"type": "hub", "id": source, "subset": subset, "revision": revision, "commit": commit,
              "splits": chosen}
    inputs = [{"hub_id": source, "subset": subset, "revision": revision, "commit": commit, "splits": chosen}]
    return Source("hub", splits, record, inputs, columns=set(splits["train"][0].rows.column_names))


def _hub_commit(source: str, revision: str | None) -> str | None:
    """The commit a hub dataset resolves to (so the manifest pins what `revision` meant that day);
    None when the hub cannot be asked (offline)."""
    try:
        return HfApi().dataset_info(source, revision=revision).sha
    except Exception:  # offline or rate-limited: the record just lacks the commit
        return None


# --- local files -------------------------------------------------------------------------------


def read_file(path: Path) -> RawPart:
    """Parse one local file into rows (dicts); UserError names the file and line on bad input."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'!r} (use {', '.join(SUFFIXES)})")
    if suffix == ".parquet":
        return _read_parquet(path)
    text = read_text(path)
    if suffix == ".csv":
        return _read_csv(path, text)
    if suffix == ".jsonl":
        return _read_jsonl(path, text)
    return _read_json(path, text)


def _read_jsonl(path: Path, text: str) -> RawPart:
    """One JSON object per line (lines end at "\\n" only: see aot_cli.jsonl)."""
    rows, lines = [], []
    escaped_surrogate = _ESCAPED_SURROGATE.search(text) is not None
    for number, row in parse_lines(text, str(path)):
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        if escaped_surrogate:
            _check_unicode(row, f"{path}:{number}")
        rows.append(row)
        lines.append(number)
    return RawPart(str(path), rows, lines)


def _check_unicode(row: dict, where: str) -> None:
    """JSON can escape a lone UTF-16 surrogate (``"\\ud800"``), which is no Unicode character: Arrow
    cannot store it, so it is an error naming the field rather than a crash when the dataset is saved."""
    field = _surrogate_field(row, "")
    if field is not None:
        raise UserError(f"{where}: field {field!r} holds an unpaired surrogate escape (like \"\\ud800\"), which is "
                        "not a Unicode character; fix the text or drop the row")


def _surrogate_field(value: Any, name: str) -> str | None:
    """The path (``chosen[1].content``) of the first string or key inside `value` with a surrogate."""
    if isinstance(value, str):
        return name if _SURROGATE.search(value) else None
    if isinstance(value, list):
        children = [(f"{name}[{i}]", item) for i, item in enumerate(value)]
    elif isinstance(value, dict):
        children = [(f"{name}.{key}" if name else str(key), item) for key, item in value.items()]
    else:
        return None
    for path, item in children:
        found = path if _SURROGATE.search(path) else _surrogate_field(item, path)
        if found is not None:
            return found
    return None


def _read_json(path: Path, text: str) -> RawPart:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines saved with a .json name (as `datasets` writes them)
            return _read_jsonl(path, text)
        raise UserError(f"{path}:{exc.lineno}: {describe_error(exc)}") from None
    except ValueError as exc:
        raise UserError(f"{path}: {describe_error(exc)}") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise UserError(f"{path}: columns have different lengths ({sorted(lengths)})")
        names = list(data)
        data = [dict(zip(names, values)) for values in zip(*data.values())]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of JSON objects, got {type(data).__name__}")
    escaped_surrogate = _ESCAPED_SURROGATE.search(text) is not None
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {index + 1}: expected a JSON object, got {type(row).__name__}")
        if escaped_surrogate:
            _check_unicode(row, f"{path}: row {index + 1}")
    return RawPart(str(path), data)


def _read_csv(path: Path, text: str) -> RawPart:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = [dict(row) for row in reader]
    except csv.Error as exc:
        raise UserError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    return RawPart(str(path), rows)


def _read_parquet(path: Path) -> RawPart:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc})") from None
    return RawPart(str(path), table.to_pylist())
