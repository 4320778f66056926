"""Operations on normalized preference data: scores and labels, binarize, hygiene, split, unpair.

Each operation returns what it kept plus a ``Counter`` of what it dropped and why, so the
manifest can say exactly where rows went. Randomness comes from one ``random.Random(seed)`` per
operation, so the same flags on the same data give the same artifact.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from typing import Any

import pyarrow as pa
from datasets import Dataset, Features, Value

from aot_cli.errors import OptionError

# One signed term: [+|-] [WEIGHT *] FIELD; a hyphen between name characters is part of the name
# (fine-grained_score), one with a space or a digit beside it is a minus.
_TERM = re.compile(r"\s*([+-])?\s*(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?"
                   r"([A-Za-z_][\w.]*(?:-[A-Za-z_][\w.]*)*)\s*")
_MISSING_SCORES = ("", "n/a", "na", "nan", "none")


class ScoreExpr:
    """``--score``: one field (``overall_score``) or a weighted sum (``0.7*helpfulness + 0.3*honesty``,
    ``helpfulness - 0.4*verbosity``)."""

    def __init__(self, expression: str):
        self.expression = expression
        self.terms: list[tuple[float, str]] = []
        position = 0
        while position < len(expression) or not self.terms:
            match = _TERM.match(expression, position)
            if not match or (self.terms and not match.group(1)):
                rest = expression[position:].strip().lstrip("+-").strip()
                raise OptionError(f"{{score}}: cannot read {rest!r} in {expression!r} (use FIELD or a weighted "
                                  "sum like '0.7*helpfulness + 0.3*honesty - 0.2*verbosity')", "score")
            sign = -1.0 if match.group(1) == "-" else 1.0
            self.terms.append((sign * float(match.group(2) or 1.0), match.group(3)))
            position = match.end()

    @property
    def fields(self) -> list[str]:
        return [name for _, name in self.terms]

    def __call__(self, fields: dict, where: str) -> float | None:
        """The score of one response; None when a field is absent or marked N/A."""
        total = 0.0
        for weight, name in self.terms:
            value = fields.get(name)
            if missing_score(value):
                return None
            total += weight * _finite(value, where, name)
        if not math.isfinite(total):  # finite terms, but a weighted sum past float range
            raise OptionError(f"{where}: {{score}} {self.expression!r} is too large to compute (overflows a float)",
                              "score")
        return total

    def __str__(self) -> str:
        return self.expression


def _finite(value: Any, where: str, name: str) -> float:
    """A score as a finite float, from a JSON number or numeric text. Infinity (or an integer too
    large for a float) would make every margin against it infinite or NaN, so it is an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionError(f"{where}: field {name!r}: expected a number for {{score}}, got {type(value).__name__}",
                          "score")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        number = None
    if number is None or not math.isfinite(number):
        raise OptionError(f"{where}: field {name!r}: expected a finite number for {{score}}, got "
                          f"{short_repr(value)}", "score")
    return number


def short_repr(value: Any) -> str:
    """repr of a value from a data file for an error message, cut to 60 characters."""
    if isinstance(value, int) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def missing_score(value: Any) -> bool:
    """An absent score: null, NaN, or a string such as "N/A" or "" (UltraFeedback and CSV files have them)."""
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and value.strip().lower() in _MISSING_SCORES)


def to_label(value: Any, threshold: float | None, where: str, field: str) -> bool:
    """A boolean label from a flag (true/false, 1/0) or, with `threshold`, from a score (>= T)."""
    if threshold is not None and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if math.isnan(number):
            raise OptionError(f"{where}: field {field!r}: expected a number to compare with "
                              f"{{label_threshold}}, got {type(value).__name__} {short_repr(value)}", "label_threshold")
        return number >= threshold
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise OptionError(f"{where}: field {field!r}: expected true/false or 1/0, got {type(value).__name__} "
                      f"{short_repr(value)} (to threshold scores into labels pass {{label_threshold}} T)",
                      "label_threshold")


def row_key(value: Any) -> str:
    """A hash of a row or field (strings and message lists alike) for grouping and exact duplicates.

    ``repr`` is deterministic here (normalized messages always have keys role, content in that
    order) and several times faster than JSON on long texts.
    """
    return hashlib.md5(repr(value).encode("utf-8", "surrogatepass")).hexdigest()


def column(ds: Any, name: str) -> list:
    """One column of a Dataset as a Python list (``ds[name]`` reads it row by row: ~50x slower)."""
    return ds.select_columns([name])[:][name]


def binarize(records: list[dict], method: str, min_margin: float, seed: int) -> tuple[list[dict], Counter]:
    """Group scored responses by prompt and pick one (chosen, rejected) pair per prompt.

    ``best-vs-worst``: the highest against the lowest score. ``best-vs-random``: the highest against
    a random response scored strictly lower. Responses without a score are left out
    (``missing_score``); a prompt whose pair has equal scores is a ``tie``, one under `min_margin`
    is ``below_min_margin``, one with fewer than two scored responses ``too_few_responses``.
    """
    rng = random.Random(seed)
    dropped: Counter = Counter()
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(row_key(record["prompt"]), []).append(record)
    pairs = []
    for group in groups.values():
        scored = [r for r in group if r["score"] is not None]
        dropped["missing_score"] += len(group) - len(scored)
        if len(scored) < 2:
            dropped["too_few_responses"] += 1
            continue
        best = max(scored, key=lambda r: r["score"])
        if method == "best-vs-worst":
            other = min(scored, key=lambda r: r["score"])
        else:
            lower = [r for r in scored if r["score"] < best["score"]]
            other = rng.choice(lower) if lower else best
        margin = best["score"] - other["score"]
        if margin == 0:
            dropped["tie"] += 1
        elif margin < min_margin:
            dropped["below_min_margin"] += 1
        else:
            pairs.append({"prompt": best["prompt"], "chosen": best["completion"], "rejected": other["completion"]})
    return pairs, +dropped


def _empty(value: Any) -> bool:
    """A string that is blank, or a message list whose contents are all blank."""
    if isinstance(value, str):
        return not value.strip()
    return not value or all(not m["content"].strip() for m in value)


def _hygiene_batch(batch: dict[str, list], paired: bool) -> dict[str, list]:
    """Per row: the reason to drop it ("" to keep) and a content hash for exact duplicates."""
    completions = ("chosen", "rejected") if paired else ("completion",)
    reasons, keys = [], []
    for i, prompt in enumerate(batch["prompt"]):
        values = [batch[c][i] for c in completions]
        if _empty(prompt):
            reasons.append("empty_prompt")
        elif any(_empty(v) for v in values):
            reasons.append("empty_completion")
        elif paired and values[0] == values[1]:
            reasons.append("identical_pair")
        else:
            reasons.append("")
        keys.append(row_key([prompt, *values, batch["label"][i] if not paired else None]))
    return {"_drop": reasons, "_key": keys}


def hygiene(ds: Any, paired: bool, seen: set[str] | None = None) -> tuple[Any, Counter]:
    """Drop rows with an empty prompt or completion, identical chosen and rejected, and exact
    duplicates (the first copy stays; keys in `seen` count as already present)."""
    if len(ds) == 0:
        return ds, Counter()
    flags = ds.map(_hygiene_batch, batched=True, batch_size=2000, fn_kwargs={"paired": paired},
                   remove_columns=ds.column_names, desc="hygiene", load_from_cache_file=False)
    seen = set() if seen is None else seen
    keep, dropped = [], Counter()
    flags = flags[:]
    for index, (reason, key) in enumerate(zip(flags["_drop"], flags["_key"])):
        if not reason and key in seen:
            reason = "duplicate"
        if reason:
            dropped[reason] += 1
            continue
        seen.add(key)
        keep.append(index)
    return (ds if len(keep) == len(ds) else ds.select(keep)), dropped


def held_out_count(n: int, test_size: float) -> int:
    """How many of `n` rows go to the test split: a fraction when < 1, a count otherwise."""
    if test_size <= 0:
        return 0
    if test_size >= 1 and test_size != int(test_size):
        raise OptionError(f"{{test_size}} {test_size:g}: a count must be a whole number (a fraction is below 1)",
                          "test_size")
    count = round(test_size * n) if test_size < 1 else int(test_size)
    if test_size < 1 and count == 0 and n > 1:
        count = 1
    if count >= n:
        raise OptionError(f"{{test_size}} {test_size:g} leaves no training rows ({n} rows after filtering); "
                          "give a smaller fraction or count", "test_size")
    return count


def split_indices(n: int, test_size: float, seed: int, *, groups: list[str] | None = None,
                  labels: list[bool] | None = None) -> tuple[list[int], list[int]]:
    """(train, test) row indices. With `groups` (paired data: the prompt), whole prompts go to one
    side so the test split asks nothing the training split saw (and holds at most the count asked
    for, or the smallest prompt when every prompt has more rows); with `labels` (unpaired data) the
    split is stratified so both sides keep the label balance."""
    count = held_out_count(n, test_size)
    rng = random.Random(seed)
    test: list[int] = []
    if labels is not None:
        by_label = {value: [i for i, lab in enumerate(labels) if lab == value] for value in (True, False)}
        quota = {v: count * len(ix) / n for v, ix in by_label.items()}
        whole = {v: int(q) for v, q in quota.items()}
        for v in sorted(quota, key=lambda v: whole[v] - quota[v])[: count - sum(whole.values())]:
            whole[v] += 1
        for value, indices in by_label.items():
            test += rng.sample(indices, whole[value])
    elif groups is not None:
        members: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        order = list(members)
        rng.shuffle(order)
        for g in order:  # whole prompts, never more rows than asked for
            if len(test) + len(members[g]) <= count:
                test += members[g]
            if len(test) == count:
                break
        if count and not test:  # every prompt has more rows than the test split asks for
            smallest = min(order, key=lambda g: len(members[g]))
            if len(members[smallest]) == n:
                raise OptionError(f"all {n} rows share one prompt, so a test split by prompt would take them "
                                  "all; use {test_size} 0 (or a source with its own test split)", "test_size")
            test = list(members[smallest])
    else:
        test = rng.sample(range(n), count)
    chosen = set(test)
    return [i for i in range(n) if i not in chosen], sorted(chosen)


def _unpair_batch(batch: dict[str, list]) -> dict[str, list]:
    out: dict[str, list] = {"prompt": [], "completion": [], "label": []}
    for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
        out["prompt"] += [prompt, prompt]
        out["completion"] += [chosen, rejected]
        out["label"] += [True, False]
    return out


def unpair(ds: Any, disjoint: bool, seed: int) -> tuple[Any, Counter]:
    """Paired rows -> unpaired ``prompt, completion, label`` rows.

    Default: each pair gives one positive (chosen) and one negative (rejected). `disjoint`: the
    paper's unpaired setting, where no prompt gives both: prompts are shuffled with `seed` and each
    goes to the side (positive: its chosen answers, negative: its rejected ones) that has fewer rows
    so far; the larger side is then trimmed at random to the smaller (``unpair_balance``).
    Duplicates created by unpairing (one answer in several pairs) are dropped as ``duplicate``.
    """
    features = Features({"prompt": ds.features["prompt"], "completion": ds.features["chosen"],
                         "label": Value("bool")})
    if len(ds) == 0:
        return Dataset.from_dict({k: [] for k in features}, features=features), Counter()
    if not disjoint:
        out = ds.map(_unpair_batch, batched=True, batch_size=2000, remove_columns=ds.column_names,
                     features=features, desc="unpair", load_from_cache_file=False)
        return out, Counter()
    rng = random.Random(seed)
    prompts, chosen, rejected = (column(ds, c) for c in ("prompt", "chosen", "rejected"))
    members: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        members.setdefault(row_key(prompt), []).append(i)
    order = list(members)
    rng.shuffle(order)
    sides: dict[bool, list[tuple[int, Any]]] = {True: [], False: []}
    for key in order:
        side = len(sides[True]) <= len(sides[False])
        answers = chosen if side else rejected
        distinct = {row_key(answers[i]): i for i in reversed(members[key])}
        sides[side] += [(i, answers[i]) for i in sorted(distinct.values())]
    size = min(len(sides[True]), len(sides[False]))
    extra = max(len(sides[True]), len(sides[False])) - size
    for side in sides:
        if len(sides[side]) > size:
            sides[side] = rng.sample(sides[side], size)
    rows = sorted([(i, not side, answer, side) for side in sides for i, answer in sides[side]])
    columns = {"prompt": [prompts[r[0]] for r in rows], "completion": [r[2] for r in rows],
               "label": [r[3] for r in rows]}
    out = Dataset(pa.Table.from_pydict(columns, schema=features.arrow_schema))  # ~3x faster than from_dict
    return out, Counter({"unpair_balance": extra} if extra else {})
