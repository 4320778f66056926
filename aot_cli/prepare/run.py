"""``aot prepare``: any common preference-data shape in, one normalized dataset artifact out.

The step reads the source (``data.sources``), recognizes its shape and normalizes each row
(``data.formats``), turns scores into pairs or labels, drops unusable rows, splits, optionally
unpairs and filters by token length (``data.operations``), and saves a DatasetDict with ``train``
and ``test`` plus a manifest that says how many rows each operation dropped and a content
fingerprint that later caches key on. Every bad input stops before OUT is touched.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from rich.table import Table

from aot_cli.artifacts.store import atomic_dir, write_manifest
from aot_cli.config import to_dict
from aot_cli.console import info, out_console
from aot_cli.data.dataset import content_fingerprint, to_dataset
from aot_cli.data.formats import record_kind
from aot_cli.data.normalize import normalize_split, unify
from aot_cli.data.operations import binarize, column, hygiene, row_key, split_indices, unpair
from aot_cli.data.sources import load_source
from aot_cli.data.tokenize import TokenizeSettings, encode_many, length_stats, load_tokenizer, tokenizer_fingerprint
from aot_cli.errors import UserError
from aot_cli.prepare.config import Config
from aot_cli.prepare.shape import resolve_shape


def run(config: Config) -> dict:
    """Prepare the dataset artifact at ``config.output``; returns its manifest."""
    config.preflight()
    bars, caching = not datasets.are_progress_bars_disabled(), datasets.is_caching_enabled()
    datasets.disable_progress_bars()
    # Maps and selects on a memory-mapped prepared source would otherwise leave cache-*.arrow files
    # inside that input artifact; with caching off they go to a temporary directory.
    datasets.disable_caching()
    try:
        prepared = _prepare(config)
        data = datasets.DatasetDict(prepared.splits)
        with atomic_dir(config.output, overwrite=config.overwrite, inputs=[config.source]) as tmp:
            # An empty split needs an explicit shard, or datasets saves one it cannot load back.
            data.save_to_disk(str(tmp), num_shards={k: 1 for k, v in data.items() if len(v) == 0})
            summary = prepared.summary(content_fingerprint(tmp, prepared.operations))
            manifest = write_manifest(tmp, kind="dataset", config=to_dict(config), inputs=prepared.inputs,
                                      summary=summary)
    finally:
        if bars:
            datasets.enable_progress_bars()
        if caching:
            datasets.enable_caching()
    _report(config.output, summary)
    return manifest


@dataclass
class _Prepared:
    """What the pipeline made: the splits and everything the manifest says about them."""

    splits: dict[str, Any]
    paired: bool
    format: str
    read: dict[str, int]
    dropped: Counter
    operations: list[dict]
    source: dict
    inputs: list[dict]
    examples: dict[str, str] = field(default_factory=dict)  # first dropped row per reason: where, why
    token_lengths: dict | None = None

    def summary(self, fingerprint: str) -> dict:
        summary = {"paired": self.paired, "format": self.format, "conversational": _conversational(self.splits),
                   "counts": {k: len(v) for k, v in self.splits.items()}, "read": self.read,
                   "dropped": dict(sorted(self.dropped.items())), "drop_examples": self.examples,
                   "fingerprint": fingerprint,
                   "source": self.source, "operations": self.operations}
        if not self.paired:
            summary["label_balance"] = {
                name: {"positive": sum(column(split, "label")), "negative": len(split) - sum(column(split, "label"))}
                for name, split in self.splits.items()}
        if self.token_lengths is not None:
            summary["token_lengths"] = self.token_lengths
        return summary


def _conversational(splits: dict[str, Any]) -> bool:
    return not hasattr(splits["train"].features["prompt"], "dtype")


def _prepare(config: Config) -> _Prepared:
    tokenizer = None
    if config.tokenizer:  # first: a bad tokenizer fails before a long read
        tokenizer = load_tokenizer(config.tokenizer, config.chat_template)
    source = load_source(config.source, subset=config.subset, split=config.split, revision=config.revision,
                         limit=config.limit)
    if source.kind == "prepared":
        result = _from_prepared(config, source)
    else:
        result = _from_raw(config, source)
    _ensure_rows(config, result)
    if tokenizer is not None:
        # Not describe_input: that would hash every file of a model directory (weights included).
        result.inputs.append({"tokenizer": config.tokenizer, "fingerprint": tokenizer_fingerprint(tokenizer)})
    if config.max_length is not None:
        _drop_too_long(config, result, tokenizer)
        _ensure_rows(config, result)
    operations = result.operations
    splits = result.splits
    if "test" not in splits:
        splits = _split(config, splits["train"], result.paired, operations)
    else:
        operations.append({"op": "split", "from_source": True})
    if config.unpair:
        splits = _unpair(config, splits, result.dropped, operations)
        result.paired = False
    result.splits = splits
    _ensure_rows(config, result)  # --disjoint-prompts balancing can leave nothing
    if tokenizer is not None:
        result.token_lengths = {name: length_stats(split, tokenizer, TokenizeSettings(), result.paired).lengths
                                for name, split in result.splits.items()}
    if config.limit is not None:
        operations.insert(0, {"op": "limit", "rows": config.limit})
    return result


def _ensure_rows(config: Config, result: _Prepared) -> None:
    """An empty training split is an error that says where the rows went."""
    if len(result.splits["train"]) == 0:
        dropped = ", ".join(f"{reason} {n}" for reason, n in result.dropped.most_common()) or "nothing"
        first = "".join(f"; first {reason}: {where}" for reason, where in result.examples.items())
        raise UserError(f"{config.source}: no training rows left (read {sum(result.read.values())} rows; "
                        f"dropped: {dropped}{first})")


def _from_prepared(config: Config, source: Any) -> _Prepared:
    """A prepared dataset as the source: its rows are already normalized; keep its splits."""
    artifact, data = source.prepared
    summary = artifact.summary
    for flag, value in (("--binarize", config.binarize), ("--score", config.score),
                        ("--min-margin", config.min_margin), ("--label-field", config.label_field),
                        ("--format", None if config.format == "auto" else config.format),
                        ("--prefer", None if config.prefer == "better" else config.prefer)):
        if value:
            raise UserError(f"{config.source}: {flag} does not apply to a prepared dataset (its rows are "
                            f"already normalized); run prepare on the original source instead")
    paired = artifact.paired
    if config.unpair and not paired:
        raise UserError(f"{config.source}: --unpair needs paired data, but this dataset is already unpaired")
    dropped: Counter = Counter()
    seen: set[str] = set()
    test, dropped_test = hygiene(data["test"], paired, seen)
    train, dropped_train = hygiene(data["train"], paired, seen)
    dropped.update(dropped_test + dropped_train)
    operations = [*summary.get("operations", []), {"op": "hygiene"}]
    return _Prepared({"train": train, "test": test}, paired, summary.get("format", "prepared"),
                     {k: len(v) for k, v in data.items()}, dropped, operations, source.record, source.inputs)


def _from_raw(config: Config, source: Any) -> _Prepared:
    """Normalize raw rows, binarize or label them, and clean each split."""
    shape, opts = resolve_shape(config, source)
    kind = record_kind(shape, opts)
    operations: list[dict] = [{"op": "normalize", "format": shape}]
    dropped: Counter = Counter()
    examples: dict[str, str] = {}
    records = {name: normalize_split(shape, parts, opts, dropped, examples) for name, parts in source.splits.items()}
    read = {name: sum(len(p.rows) for p in parts) for name, parts in source.splits.items()}
    if kind == "scored":
        method = config.binarize or "best-vs-worst"
        responses = prompts = 0
        for name in records:
            responses += len(records[name])
            records[name], lost = binarize(records[name], method, config.min_margin, config.seed)
            prompts += len(records[name]) + lost["tie"] + lost["below_min_margin"] + lost["too_few_responses"]
            dropped.update(lost)
        operations.append({"op": "binarize", "method": method, "score": str(opts.score),
                           "min_margin": config.min_margin, "seed": config.seed,
                           "responses": responses, "prompts": prompts})
        kind = "paired"
    elif opts.label_field is not None:
        operations.append({"op": "labels", "field": opts.label_field, "threshold": opts.label_threshold})
    if shape == "pku":
        operations.append({"op": "prefer", "by": f"{opts.prefer}_response_id"})
    paired = kind == "paired"
    conversational = unify(records, paired)
    splits = {name: to_dataset(rows, paired, conversational) for name, rows in records.items()}
    seen: set[str] = set()
    for name in sorted(splits, key=lambda n: n != "test"):  # test first: train copies of test rows go
        splits[name], lost = hygiene(splits[name], paired, seen)
        dropped.update(lost)
    operations.append({"op": "hygiene"})
    return _Prepared(splits, paired, shape, read, dropped, operations, source.record, source.inputs, examples)


def _split(config: Config, train: Any, paired: bool, operations: list[dict]) -> dict[str, Any]:
    """Hold out a test split: whole prompts for paired data, stratified by label for unpaired."""
    if paired:
        train_ix, test_ix = split_indices(len(train), config.test_size, config.seed,
                                          groups=[row_key(p) for p in column(train, "prompt")])
    else:
        train_ix, test_ix = split_indices(len(train), config.test_size, config.seed, labels=column(train, "label"))
    operations.append({"op": "split", "test_size": config.test_size, "seed": config.seed,
                       "by": "prompt" if paired else "label"})
    return {"train": train.select(train_ix), "test": train.select(test_ix)}


def _unpair(config: Config, splits: dict[str, Any], dropped: Counter, operations: list[dict]) -> dict:
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for name in ("test", "train"):
        rows, lost = unpair(splits[name], config.disjoint_prompts, config.seed)
        dropped.update(lost)
        if not config.disjoint_prompts:  # disjoint rows are distinct by construction
            rows, lost = hygiene(rows, paired=False, seen=seen)
            dropped.update(lost)
        out[name] = rows
    operations.append({"op": "unpair", "disjoint_prompts": config.disjoint_prompts, "seed": config.seed})
    return {"train": out["train"], "test": out["test"]}


def _drop_too_long(config: Config, result: _Prepared, tokenizer: Any) -> None:
    """Drop rows whose prompt + longer answer exceed --max-length tokens with the chat template,
    before the split, so --test-size counts the rows that are kept."""
    answers = ("chosen", "rejected") if result.paired else ("completion",)
    for name, split in result.splits.items():
        prompts = column(split, "prompt")
        totals = [0] * len(split)
        for answer in answers:
            encoded = encode_many(tokenizer, prompts, column(split, answer), TokenizeSettings(), field=answer)
            totals = [max(t, len(e.input_ids)) for t, e in zip(totals, encoded)]
        keep = [i for i, t in enumerate(totals) if t <= config.max_length]
        result.dropped["too_long"] += len(split) - len(keep)
        result.splits[name] = split.select(keep)
    result.operations.append({"op": "max_length", "tokenizer": result.inputs[-1]["fingerprint"],
                              "max_length": config.max_length})


def _report(out: Path, summary: dict) -> None:
    """A table of what was written (stdout) and one line naming the artifact (stderr)."""
    title = f"{summary['format']} -> {'paired' if summary['paired'] else 'unpaired'}"
    table = Table(title=title, min_width=len(title) + 4)  # a title wider than the columns would wrap
    table.add_column("split")
    table.add_column("rows", justify="right")
    if not summary["paired"]:
        table.add_column("positive", justify="right")
        table.add_column("negative", justify="right")
    for name, count in summary["counts"].items():
        extra = []
        if not summary["paired"]:
            balance = summary["label_balance"][name]
            extra = [str(balance["positive"]), str(balance["negative"])]
        table.add_row(name, str(count), *extra)
    out_console.print(table)
    if summary["dropped"]:
        info("dropped: " + ", ".join(f"{reason} {n}" for reason, n in summary["dropped"].items()))
        for reason, where in summary["drop_examples"].items():
            info(f"  first {reason}: {where}")
    info(f"wrote {out} (fingerprint {summary['fingerprint']})")
    data = shlex.quote(str(out))
    loss = "" if summary["paired"] else " --loss aot_unpaired"
    info(f"next: aot inspect {data} --model MODEL (the rows as training will tokenize them), then "
         f"aot train --model MODEL --data {data}{loss} -o RUN_DIR")
