"""``aot prepare``: any common preference-data shape in, one normalized dataset artifact out.

The step reads the source (``data.sources``), recognizes its shape and normalizes each row
(``data.formats``), turns scores into pairs or labels, drops unusable rows, splits, optionally
unpairs and filters by token length (``data.operations``), and saves a DatasetDict with ``train``
and ``test`` plus a manifest that says how many rows each operation dropped and a content
fingerprint that later caches key on. Every bad input stops before OUT is touched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aot_cli.config import arg, opt, to_dict
from aot_cli.errors import UserError

FORMATS = ("auto", "paired-strings", "paired-messages", "hh", "sharegpt", "ultrafeedback", "scored", "pku", "labelled")


@dataclass
class PrepareConfig:
    """Options of ``aot prepare`` (also the keys of its --config YAML)."""

    source: str = arg(help="Hub dataset id, local .json/.jsonl/.parquet/.csv file, directory of them, "
                           "a save_to_disk directory, or a prepared dataset", metavar="SOURCE")
    output: Path = opt(None, "-o", "--output", help="Output directory (the dataset artifact)", required=True)
    format: str = opt("auto", help="Data shape; auto recognizes it by its columns", choices=FORMATS)
    split: str | None = opt(None, help="Hub (or save_to_disk) split to read as train (its test counterpart "
                                       "is kept as test)")
    subset: str | None = opt(None, help="Hub dataset configuration (subset) name")
    revision: str | None = opt(None, help="Hub dataset revision (branch, tag or commit)")
    binarize: str | None = opt(None, help="Pick pairs from scored responses (default best-vs-worst for "
                                          "ultrafeedback and scored data)",
                               choices=("best-vs-worst", "best-vs-random"))
    score: str | None = opt(None, help="Score for --binarize: a field or a weighted sum like "
                                       "'0.7*helpfulness + 0.3*honesty - 0.2*verbosity' "
                                       "(default overall_score / helpfulness)")
    min_margin: float = opt(0.0, help="Drop pairs whose score difference is below this")
    prefer: str = opt("better", help="PKU-SafeRLHF: which preference id picks the chosen response",
                      choices=("better", "safer"))
    unpair: bool = opt(False, help="Turn pairs into unpaired rows (chosen -> label true, rejected -> false)")
    disjoint_prompts: bool = opt(False, help="With --unpair: no prompt gives both a positive and a "
                                             "negative; balanced counts (the paper's unpaired setting)")
    label_field: str | None = opt(None, help="Field holding the label (a flag, or a score with "
                                             "--label-threshold); default label / is_safe")
    label_threshold: float | None = opt(None, help="Label = (label field >= this)")
    test_size: float = opt(0.1, help="Test split when the source has none: a fraction (< 1) or a count")
    tokenizer: str | None = opt(None, help="Model or tokenizer path: record token-length stats with its "
                                           "chat template")
    chat_template: Path | None = opt(None, help="With --tokenizer: Jinja chat template file, for a tokenizer "
                                                "without one (a base model) or to override it, as in aot train")
    max_length: int | None = opt(None, help="With --tokenizer: drop rows longer than this many tokens")
    limit: int | None = opt(None, help="Read only the first N rows of each source split (quick runs)")
    overwrite: bool = opt(False, help="Replace OUT if it exists")
    seed: int = opt(42, help="Seed for the split, best-vs-random and --disjoint-prompts")


def _check_flags(config: PrepareConfig) -> None:
    """Flag combinations that cannot work, before any data is read."""
    if config.disjoint_prompts and not config.unpair:
        raise UserError("--disjoint-prompts needs --unpair")
    if config.chat_template is not None and config.tokenizer is None:
        raise UserError("--chat-template needs --tokenizer (the template is applied to count token lengths)")
    if config.max_length is not None and config.tokenizer is None:
        raise UserError("--max-length needs --tokenizer (the lengths are counted in that model's tokens)")
    if config.max_length is not None and config.max_length < 2:
        raise UserError(f"--max-length must be at least 2, got {config.max_length}")
    if config.label_threshold is not None and config.label_field is None:
        raise UserError("--label-threshold needs --label-field (the field the threshold applies to)")
    if config.binarize and config.label_field:
        raise UserError("--binarize and --label-field exclude each other: scores become pairs or labels, not both")
    if config.min_margin < 0:
        raise UserError(f"--min-margin must be >= 0, got {config.min_margin:g}")
    if config.test_size < 0:
        raise UserError(f"--test-size must be >= 0, got {config.test_size:g}")
    if config.limit is not None and config.limit < 1:
        raise UserError(f"--limit must be at least 1, got {config.limit}")


def run(config: PrepareConfig) -> dict:
    """Prepare the dataset artifact at ``config.output``; returns its manifest."""
    import datasets

    from aot_cli.artifacts import atomic_output, check_output, write_manifest
    from aot_cli.data.dataset import content_fingerprint

    _check_flags(config)
    check_output(config.output, config.overwrite)
    bars, caching = not datasets.are_progress_bars_disabled(), datasets.is_caching_enabled()
    datasets.disable_progress_bars()
    # Maps and selects on a memory-mapped prepared source would otherwise leave cache-*.arrow files
    # inside that input artifact; with caching off they go to a temporary directory.
    datasets.disable_caching()
    try:
        prepared = _prepare(config)
        data = datasets.DatasetDict(prepared.splits)
        with atomic_output(config.output, config.overwrite) as tmp:
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
        from aot_cli.data.operations import column

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


def _prepare(config: PrepareConfig) -> _Prepared:
    from aot_cli.data.sources import load_source

    tokenizer = None
    if config.tokenizer:  # first: a bad tokenizer fails before a long read
        from aot_cli.data.tokenize import load_tokenizer

        tokenizer = load_tokenizer(config.tokenizer, config.chat_template)
    source = load_source(config.source, subset=config.subset, split=config.split, revision=config.revision,
                         limit=config.limit)
    if source.kind == "prepared":
        result = _from_prepared(config, source)
    else:
        result = _from_raw(config, source)
    _ensure_rows(config, result)
    if tokenizer is not None:
        from aot_cli.data.tokenize import tokenizer_fingerprint

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
        from aot_cli.data.tokenize import TokenizeSettings, length_stats

        result.token_lengths = {name: length_stats(split, tokenizer, TokenizeSettings(), result.paired).lengths
                                for name, split in result.splits.items()}
    if config.limit is not None:
        operations.insert(0, {"op": "limit", "rows": config.limit})
    return result


def _ensure_rows(config: PrepareConfig, result: _Prepared) -> None:
    """An empty training split is an error that says where the rows went."""
    if len(result.splits["train"]) == 0:
        dropped = ", ".join(f"{reason} {n}" for reason, n in result.dropped.most_common()) or "nothing"
        first = "".join(f"; first {reason}: {where}" for reason, where in result.examples.items())
        raise UserError(f"{config.source}: no training rows left (read {sum(result.read.values())} rows; "
                        f"dropped: {dropped}{first})")


def _from_prepared(config: PrepareConfig, source: Any) -> _Prepared:
    """A prepared dataset as the source: its rows are already normalized; keep its splits."""
    from aot_cli.data.operations import hygiene

    data, manifest = source.prepared
    summary = manifest.get("summary", {})
    for flag, value in (("--binarize", config.binarize), ("--score", config.score),
                        ("--min-margin", config.min_margin), ("--label-field", config.label_field),
                        ("--format", None if config.format == "auto" else config.format),
                        ("--prefer", None if config.prefer == "better" else config.prefer)):
        if value:
            raise UserError(f"{config.source}: {flag} does not apply to a prepared dataset (its rows are "
                            f"already normalized); run prepare on the original source instead")
    paired = bool(summary.get("paired", True))
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


def _from_raw(config: PrepareConfig, source: Any) -> _Prepared:
    """Normalize raw rows, binarize or label them, and clean each split."""
    from aot_cli.data.dataset import to_dataset
    from aot_cli.data.formats import record_kind
    from aot_cli.data.normalize import normalize_split, resolve_shape, unify
    from aot_cli.data.operations import binarize, hygiene

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


def _split(config: PrepareConfig, train: Any, paired: bool, operations: list[dict]) -> dict[str, Any]:
    """Hold out a test split: whole prompts for paired data, stratified by label for unpaired."""
    from aot_cli.data.operations import column, row_key, split_indices

    if paired:
        train_ix, test_ix = split_indices(len(train), config.test_size, config.seed,
                                          groups=[row_key(p) for p in column(train, "prompt")])
    else:
        train_ix, test_ix = split_indices(len(train), config.test_size, config.seed, labels=column(train, "label"))
    operations.append({"op": "split", "test_size": config.test_size, "seed": config.seed,
                       "by": "prompt" if paired else "label"})
    return {"train": train.select(train_ix), "test": train.select(test_ix)}


def _unpair(config: PrepareConfig, splits: dict[str, Any], dropped: Counter, operations: list[dict]) -> dict:
    from aot_cli.data.operations import hygiene, unpair

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


def _drop_too_long(config: PrepareConfig, result: _Prepared, tokenizer: Any) -> None:
    """Drop rows whose prompt + longer answer exceed --max-length tokens with the chat template,
    before the split, so --test-size counts the rows that are kept."""
    from aot_cli.data.operations import column
    from aot_cli.data.tokenize import TokenizeSettings, encode_many

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
    from rich.table import Table

    from aot_cli.console import info, out_console

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
