"""From raw source rows to normalized records, split by split.

``aot prepare`` calls ``normalize_split`` for each split once the shape is known (counting drops and
remembering the first row dropped for each reason), then ``unify`` so a dataset is all strings or
all message lists.
"""

from __future__ import annotations

from collections import Counter

from aot_cli.console import progress
from aot_cli.data.formats import Drop, ShapeOptions, normalize_row
from aot_cli.data.sources import RawPart


def normalize_split(shape: str, parts: list[RawPart], opts: ShapeOptions, dropped: Counter,
                    examples: dict[str, str]) -> list[dict]:
    """All records of one split, with a progress bar; drop reasons are counted into `dropped`, and
    the first row dropped for each reason goes into `examples` (so a message can name it)."""
    records: list[dict] = []
    total = sum(len(p.rows) for p in parts)
    with progress(transient=True) as bar:
        task = bar.add_task("Normalizing", total=total)
        for part in parts:
            for index, row in enumerate(part):
                result = normalize_row(shape, row, part.where(index), opts)
                for item in [result] if isinstance(result, Drop) else result:
                    if isinstance(item, Drop):
                        dropped[item.reason] += 1
                        examples.setdefault(item.reason, item.example)
                    else:
                        records.append(item)
                if index % 1000 == 999:
                    bar.advance(task, 1000)
        bar.update(task, completed=total)
    return records


def unify(records: dict[str, list[dict]], paired: bool) -> bool:
    """Make every text field a string, or (when any is a message list) every one a message list:
    a dataset is one or the other (docs/architecture.md, the dataset artifact). Returns whether it is conversational."""
    fields = ("prompt", "chosen", "rejected") if paired else ("prompt", "completion")
    conversational = any(isinstance(r[f], list) for rows in records.values() for r in rows for f in fields)
    if conversational:
        roles = {"prompt": "user", "chosen": "assistant", "rejected": "assistant", "completion": "assistant"}
        for rows in records.values():
            for r in rows:
                for f in fields:
                    if isinstance(r[f], str):
                        r[f] = [{"role": roles[f], "content": r[f]}]
    return conversational
