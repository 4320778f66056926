"""The common preference-data shapes: recognize one by its columns and normalize its rows.

Each shape's normalizer turns one raw row into records of one of three kinds:

- ``paired``: ``{prompt, chosen, rejected}``
- ``scored``: ``{prompt, completion, score}`` (one per response; binarized into pairs later)
- ``unpaired``: ``{prompt, completion, label}``

or into a drop reason (a string, counted in the manifest) when a top-level field is missing. A
field that is present with the wrong type is an error naming the row and field: silently dropping
rows whose structure we misread would hide a wrong shape. Strings stay strings and conversations
stay message lists ``[{role, content}]``; role names are normalized (human -> user, gpt ->
assistant) and nothing else is touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from aot_cli.data.operations import ScoreExpr, missing_score, short_repr, to_label
from aot_cli.errors import OptionError, UserError

ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
LABEL_FIELDS = ("label", "is_safe")
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


@dataclass(frozen=True)
class Shape:
    """A known data shape: its name, the columns that identify it, what it produces."""

    name: str
    columns: str
    kind: str


SHAPES = {s.name: s for s in (
    Shape("paired-strings", "prompt, chosen, rejected strings (or question, response_j, response_k)", "paired"),
    Shape("paired-messages", "chosen, rejected message lists (prompt optional: string or messages)", "paired"),
    Shape("hh", "chosen, rejected Anthropic HH transcripts ('\\n\\nHuman:' / '\\n\\nAssistant:')", "paired"),
    Shape("sharegpt", "conversations [{from, value}], chosen, rejected {from, value}", "paired"),
    Shape("ultrafeedback", "instruction, completions [{response, overall_score, annotations, ...}]", "scored"),
    Shape("scored", "prompt, response + numeric score columns (HelpSteer)", "scored"),
    Shape("pku", "prompt, response_0, response_1, better_response_id, safer_response_id", "paired"),
    Shape("labelled", "prompt, completion|response, label|is_safe (or messages, label)", "unpaired"),
)}


@dataclass(frozen=True)
class ShapeOptions:
    """The flags that change how rows are read: where labels and scores come from, which response wins."""

    label_field: str | None = None
    label_threshold: float | None = None
    score: ScoreExpr | None = None
    prefer: str = "better"


def known_shapes() -> str:
    """The shapes and their columns, for error messages."""
    return "; ".join(f"{s.name} ({s.columns})" for s in SHAPES.values())


def detect_shape(columns: set[str], sample: dict, label_field: str | None = None) -> str:
    """The shape name for a source with these `columns`; `sample` is a row used to tell strings
    from message lists. UserError lists the columns found and the known shapes."""
    cols = set(columns)
    has_completion = "completion" in cols or "response" in cols
    has_text = "messages" in cols or ("prompt" in cols and has_completion)
    if {"instruction", "completions"} <= cols:
        return "ultrafeedback"
    if {"response_0", "response_1"} <= cols and cols & {"better_response_id", "safer_response_id"}:
        return "pku"
    if {"conversations", "chosen", "rejected"} <= cols:
        return "sharegpt"
    if {"question", "response_j", "response_k"} <= cols:
        return "paired-strings"
    if {"chosen", "rejected"} <= cols:
        if isinstance(sample.get("chosen"), list):
            return "paired-messages"
        if "prompt" in cols:
            return "paired-strings"
        if isinstance(sample.get("chosen"), str) and _HH_TURN.search(sample["chosen"]):
            return "hh"
    if has_text and cols & set(LABEL_FIELDS):
        return "labelled"
    if "prompt" in cols and has_completion and any(
            _numeric(v) for k, v in sample.items() if k not in ("prompt", "response", "completion")):
        return "scored"
    if has_text and label_field in cols:
        return "labelled"
    raise OptionError(f"unknown data shape: found columns {column_list(cols) or '(none)'}; "
                      f"known shapes: {known_shapes()} (or name one with {{format}})", "format")


def column_list(names: Any) -> str:
    """Column names for a message, sorted: a name with a line break or another unprintable
    character is quoted with escapes, so an error stays one line and shows what the name holds."""
    return ", ".join(name if name.isprintable() and name.strip() == name and name else repr(name)
                     for name in sorted(names))


def _numeric(value: Any) -> bool:
    """A score-like value: a number, or a string holding one (CSV cells are strings)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def required_columns(shape: str, columns: set[str], label_field: str | None) -> list[str]:
    """Columns `shape` needs that are absent (for an explicit --format)."""
    need: dict[str, list[list[str]]] = {
        "paired-strings": [["prompt", "question"], ["chosen", "response_j"], ["rejected", "response_k"]],
        "paired-messages": [["chosen"], ["rejected"]],
        "hh": [["chosen"], ["rejected"]],
        "sharegpt": [["conversations"], ["chosen"], ["rejected"]],
        "ultrafeedback": [["instruction"], ["completions"]],
        "scored": [["prompt"], ["response", "completion"]],
        "pku": [["prompt"], ["response_0"], ["response_1"], ["better_response_id", "safer_response_id"]],
        "labelled": [["messages", "prompt"], [label_field] if label_field else list(LABEL_FIELDS)],
    }
    return ["|".join(alts) for alts in need[shape] if not any(a in columns for a in alts)]


# --- field readers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Drop:
    """A raw row (or one response of it) that yields no record: the reason (counted in the
    manifest) and where it was."""

    reason: str
    example: str


class Missing(Exception):
    """A top-level field is absent or null: the row is dropped and counted, not an error."""


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _get(row: dict, name: str) -> Any:
    value = row.get(name)
    if value is None:
        raise Missing(name)
    return value


def text(row: dict, name: str, where: str) -> str:
    """A string field."""
    value = _get(row, name)
    if not isinstance(value, str):
        raise UserError(f"{where}: field {name!r}: expected a string, got {_type(value)}")
    return value


def message(item: Any, where: str, name: str) -> dict:
    """One message ``{role|from, content|value}`` with its role normalized."""
    if not isinstance(item, dict):
        raise UserError(f"{where}: field {name!r}: expected a message object, got {_type(item)}")
    role = item.get("role", item.get("from"))
    content = item.get("content", item.get("value"))
    if not isinstance(role, str) or role not in ROLES:
        raise UserError(f"{where}: field {name!r}: unknown role {short_repr(role)} (known: {', '.join(ROLES)})")
    if not isinstance(content, str):
        raise UserError(f"{where}: field {name!r}: message content must be a string, got {_type(content)}")
    return {"role": ROLES[role], "content": content}


def messages(row: dict, name: str, where: str) -> list[dict]:
    """A message-list field."""
    value = _get(row, name)
    if not isinstance(value, list):
        raise UserError(f"{where}: field {name!r}: expected a list of messages, got {_type(value)}")
    return [message(item, where, f"{name}[{i}]") for i, item in enumerate(value)]


def text_or_messages(row: dict, name: str, where: str) -> str | list[dict]:
    value = _get(row, name)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return messages(row, name, where)
    raise UserError(f"{where}: field {name!r}: expected a string or a list of messages, got {_type(value)}")


def split_shared_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list, list, list] | None:
    """(prompt, chosen rest, rejected rest): the prompt is the longest common leading run of
    messages, cut back to end with a user turn. None when they share no user turn."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    while k > 0 and chosen[k - 1]["role"] != "user":
        k -= 1
    if k == 0:
        return None
    return chosen[:k], chosen[k:], rejected[k:]


def split_last_user(conversation: list[dict]) -> tuple[list, list]:
    """(messages up to and including the last user turn, the rest)."""
    last = max((i for i, m in enumerate(conversation) if m["role"] == "user"), default=-1)
    return conversation[:last + 1], conversation[last + 1:]


def hh_messages(transcript: str) -> list[dict]:
    """An Anthropic HH transcript (``\\n\\nHuman: ...\\n\\nAssistant: ...``) as messages."""
    if transcript.lstrip("\n").startswith(("Human:", "Assistant:")):  # some copies drop the leading blank line
        transcript = "\n\n" + transcript.lstrip("\n")
    parts = _HH_TURN.split(transcript)
    # parts = [text before the first turn, role, content, role, content, ...]
    return [{"role": "user" if role == "Human" else "assistant", "content": content}
            for role, content in zip(parts[1::2], parts[2::2])]


# --- normalizers: (row, where, options) -> records, or the reason to drop the row -------------


def _paired(row: dict, where: str, opts: ShapeOptions) -> list[dict]:
    if "question" in row and "prompt" not in row:
        return [{"prompt": text(row, "question", where), "chosen": text(row, "response_j", where),
                 "rejected": text(row, "response_k", where)}]
    return [{"prompt": text(row, "prompt", where), "chosen": text(row, "chosen", where),
             "rejected": text(row, "rejected", where)}]


def _paired_messages(row: dict, where: str, opts: ShapeOptions) -> list[dict] | str:
    chosen, rejected = messages(row, "chosen", where), messages(row, "rejected", where)
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        prompt = messages(row, "prompt", where)
        n = len(prompt)
        chosen, rejected = (side[n:] if side[:n] == prompt else side for side in (chosen, rejected))
        return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    if prompt is not None and not isinstance(prompt, str):
        raise UserError(f"{where}: field 'prompt': expected a string or a list of messages, got {_type(prompt)}")
    if any(m["role"] == "user" for m in chosen):
        shared = split_shared_prompt(chosen, rejected)
        return [dict(zip(("prompt", "chosen", "rejected"), shared))] if shared else "no_shared_prompt"
    if prompt is None:
        raise Missing("prompt")
    return [{"prompt": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected}]


def _hh(row: dict, where: str, opts: ShapeOptions) -> list[dict] | str:
    chosen = hh_messages(text(row, "chosen", where))
    rejected = hh_messages(text(row, "rejected", where))
    shared = split_shared_prompt(chosen, rejected)
    return [dict(zip(("prompt", "chosen", "rejected"), shared))] if shared else "no_shared_prompt"


def _sharegpt(row: dict, where: str, opts: ShapeOptions) -> list[dict]:
    prompt = messages(row, "conversations", where)
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise UserError(f"{where}: field 'system': expected a string, got {_type(system)}")
    if system:
        prompt = [{"role": "system", "content": system}, *prompt]
    return [{"prompt": prompt, "chosen": [message(_get(row, "chosen"), where, "chosen")],
             "rejected": [message(_get(row, "rejected"), where, "rejected")]}]


def _ultrafeedback(row: dict, where: str, opts: ShapeOptions) -> list[dict | Drop] | str:
    prompt = text(row, "instruction", where)
    completions = _get(row, "completions")
    if not isinstance(completions, list):
        raise UserError(f"{where}: field 'completions': expected a list, got {_type(completions)}")
    if not completions:
        return "too_few_responses"
    records = []
    for i, item in enumerate(completions):
        name = f"completions[{i}]"
        if not isinstance(item, dict):
            raise UserError(f"{where}: field {name!r}: expected an object, got {_type(item)}")
        fields = dict(item)
        annotations = item.get("annotations")
        if annotations is not None and not isinstance(annotations, dict):
            raise UserError(f"{where}: field '{name}.annotations': expected an object, got {_type(annotations)}")
        for aspect, note in (annotations or {}).items():
            if isinstance(note, dict) and "Rating" in note:
                fields.setdefault(aspect, note["Rating"])
        response = text(item, "response", f"{where}: {name}")
        records.append(_score_or_label({"prompt": prompt, "completion": response}, fields, f"{where}: {name}", opts))
    return records


def _scored(row: dict, where: str, opts: ShapeOptions) -> list[dict | Drop]:
    name = "response" if "response" in row else "completion"
    base = {"prompt": text_or_messages(row, "prompt", where), "completion": text_or_messages(row, name, where)}
    return [_score_or_label(base, row, where, opts)]


def _score_or_label(base: dict, fields: dict, where: str, opts: ShapeOptions) -> dict | Drop:
    """One scored response as a record with its score, or its label under --label-field; a
    response without that label is dropped on its own (its siblings stay), as binarize does."""
    if opts.label_field is not None:
        if missing_score(fields.get(opts.label_field)):
            return Drop("missing_label", f"{where}: field {opts.label_field!r} is missing or N/A")
        return {**base, "label": to_label(fields[opts.label_field], opts.label_threshold, where, opts.label_field)}
    return {**base, "score": opts.score(fields, where)}


def _pku(row: dict, where: str, opts: ShapeOptions) -> list[dict]:
    key = f"{opts.prefer}_response_id"
    winner = response_id(_get(row, key), where, key)
    responses = [text(row, "response_0", where), text(row, "response_1", where)]
    return [{"prompt": text(row, "prompt", where), "chosen": responses[winner], "rejected": responses[1 - winner]}]


def _labelled(row: dict, where: str, opts: ShapeOptions) -> list[dict]:
    field = opts.label_field or "label"
    if "messages" in row and "prompt" not in row:
        prompt, completion = split_last_user(messages(row, "messages", where))
    else:
        name = "completion" if "completion" in row else "response"
        prompt, completion = text_or_messages(row, "prompt", where), text_or_messages(row, name, where)
    label = to_label(_get(row, field), opts.label_threshold, where, field)
    return [{"prompt": prompt, "completion": completion, "label": label}]


def response_id(value: Any, where: str, name: str) -> int:
    """0 or 1, from a JSON number or (CSV cells are strings) the text "0" / "1"."""
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return int(value)
    raise UserError(f"{where}: field {name!r}: expected 0 or 1, got {short_repr(value)}")


NORMALIZERS: dict[str, Callable[[dict, str, ShapeOptions], list[dict | Drop] | str]] = {
    "paired-strings": _paired, "paired-messages": _paired_messages, "hh": _hh, "sharegpt": _sharegpt,
    "ultrafeedback": _ultrafeedback, "scored": _scored, "pku": _pku, "labelled": _labelled,
}


def normalize_row(shape: str, row: dict, where: str, opts: ShapeOptions) -> list[dict | Drop] | Drop:
    """Records for one raw row (a response without its label is a Drop among them), or why the
    whole row is dropped ("missing_field", "no_shared_prompt", "too_few_responses")."""
    try:
        result = NORMALIZERS[shape](row, where, opts)
    except Missing as exc:
        return Drop("missing_field", f"{where}: field {exc.args[0]!r} is missing or null")
    return Drop(result, where) if isinstance(result, str) else result


def default_label_field(shape: str, columns: set[str], label_field: str | None) -> str | None:
    """The label column: the one given, or for labelled data the first of label / is_safe present."""
    if label_field is not None or shape != "labelled":
        return label_field
    return next((f for f in LABEL_FIELDS if f in columns), None)


def record_kind(shape: str, opts: ShapeOptions) -> str:
    """What a shape's records are under these options: paired, scored or unpaired."""
    kind = SHAPES[shape].kind
    return "unpaired" if kind == "scored" and opts.label_field is not None else kind
