"""Which shape a source is, and whether the options of ``aot prepare`` fit it.

``resolve_shape`` takes ``--format`` or detects the shape from the columns and a sample of values,
then checks the options that depend on the shape (``--binarize`` needs scores, ``--unpair`` pairs,
``--prefer`` PKU-style data...) before a single row is normalized.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from aot_cli.data.formats import (SHAPES, ShapeOptions, column_list, default_label_field, detect_shape,
                                  required_columns)
from aot_cli.data.operations import ScoreExpr
from aot_cli.data.sources import Source
from aot_cli.errors import UserError
from aot_cli.prepare.config import Config

DEFAULT_SCORES = {"ultrafeedback": "overall_score", "scored": "helpfulness"}


def resolve_shape(config: Config, source: Source) -> tuple[str, ShapeOptions]:
    """(shape name, ShapeOptions) from ``--format`` or the source's columns, checking that the flags
    of `config` fit the shape."""
    sample = source_sample(source)
    if not source.columns:
        raise UserError(f"{config.source}: no rows to read (an empty file or split)")
    if config.format == "auto":
        try:
            shape = detect_shape(source.columns, sample, config.label_field)
        except UserError as exc:
            raise UserError(f"{config.source}: {exc}") from None
    else:
        shape = config.format
        missing = required_columns(shape, source.columns, config.label_field)
        if missing:
            raise UserError(f"{config.source}: --format {shape} needs column(s) {', '.join(missing)}; "
                            f"found {column_list(source.columns)}")
    kind = SHAPES[shape].kind
    if config.binarize and kind != "scored":
        raise UserError(f"--binarize applies to ultrafeedback or scored data; {config.source} is {shape}")
    if config.label_field and kind == "paired":
        raise UserError(f"--label-field applies to labelled or scored data; {config.source} is {shape} "
                        "(paired); use --unpair to make labels from pairs")
    if config.prefer != "better" and shape != "pku":
        raise UserError(f"--prefer applies to PKU-SafeRLHF-style data; {config.source} is {shape}")
    label_field = default_label_field(shape, source.columns, config.label_field)
    if config.unpair and kind == "unpaired":
        raise UserError(f"--unpair needs paired data; {config.source} is {shape} (already unpaired)")
    for flag, value in (("--score", config.score), ("--min-margin", config.min_margin)):
        if value and (kind != "scored" or label_field is not None):
            what = "with labels from --label-field" if kind == "scored" else f"({kind})"
            raise UserError(f"{flag} applies when scored responses are binarized into pairs; {config.source} is "
                            f"{shape} {what}")
    if config.unpair and label_field is not None:
        raise UserError(f"--unpair needs paired data; {config.source} is {shape} with labels from --label-field "
                        "(already unpaired); drop --unpair, or --label-field to binarize the scores into pairs")
    score = None
    if kind == "scored" and label_field is None:
        score = ScoreExpr(config.score or DEFAULT_SCORES[shape])
        _check_score_fields(config.source, shape, score, source)
    return shape, ShapeOptions(label_field, config.label_threshold, score, config.prefer)


def source_sample(source: Source, rows: int = 100) -> dict:
    """The first non-null value of each column over the first `rows` train rows (to tell strings
    from message lists even when the very first row has a gap)."""
    sample: dict = {}
    for row in _first_rows(source, rows):
        for key, value in row.items():
            if sample.get(key) is None:
                sample[key] = value
    return sample


def _first_rows(source: Source, rows: int) -> Iterator[dict]:
    """The first `rows` train rows, across the files of a directory."""
    return itertools.islice((row for part in source.splits["train"] for row in part), rows)


def _check_score_fields(name: str, shape: str, score: ScoreExpr, source: Source) -> None:
    """Fail early when a --score field exists nowhere (a typo), listing the fields there are."""
    if shape == "ultrafeedback":
        available = _completion_fields(source)
        if not available:  # no completion object to look in: reading the rows names the bad field
            return
    else:
        available = set(source.columns)
    missing = [f for f in score.fields if f not in available]
    if missing:
        numeric = available - {"prompt", "response", "completion", "annotations", "model", "principle",
                               "custom_system_prompt", "critique"}
        raise UserError(f"{name}: --score field(s) {', '.join(missing)} not found "
                        f"(available: {column_list(numeric)})")


def _completion_fields(source: Source, rows: int = 100) -> set[str]:
    """The fields (and annotation aspects) of every completion object in the first `rows` train rows:
    one completion may lack a score its siblings have."""
    fields: set[str] = set()
    for row in _first_rows(source, rows):
        completions = row.get("completions")
        for item in completions if isinstance(completions, list) else []:
            if isinstance(item, dict):
                annotations = item.get("annotations")
                fields |= set(item) | (set(annotations) if isinstance(annotations, dict) else set())
    return fields
