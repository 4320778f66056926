"""`aot prepare` on random rows of every input shape (hypothesis), through the real CLI in-process.

Each shape has a generator of valid rows and an oracle: the records those rows must become, written
here from the shape's definition (roles normalized, the shared leading messages as the prompt, the
best and worst scored responses as a pair, labels as booleans), then the hygiene every dataset gets
(blank prompts or answers, identical answers and exact duplicates dropped, the first copy kept).
Text draws from all of Unicode plus the characters that break naive readers: U+2028, U+2029 and
U+0085 (where ``str.splitlines`` cuts a line), CR, NUL, a byte order mark, astral characters; now
and then it is long (up to ~30k characters). Files are JSON Lines (LF or CRLF) or JSON arrays.

Two properties per shape: valid rows come out exactly as the oracle says (or, when none survive,
exit 2 with one ``error:`` line); rows mutated at random (a field of another JSON type, a field
removed, a stray key) never give a traceback: exit 0 with a loadable dataset, or exit 2 with one
``error:`` line. Examples are derandomized under CI (CI=true), so a CI run is reproducible.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aot_cli.data.dataset import load_prepared

pytestmark = pytest.mark.slow

SPECIAL = ["\u2028", "\u2029", "\u0085", "\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x00", "\ufeff", "\t", " ",
           "\U0001f600", "\\", '"', "\ud7ff", "\ue000", "\uffff", "[bold]", "{}"]
SHORT_TEXT = st.lists(st.one_of(st.characters(codec="utf-8"), st.sampled_from(SPECIAL)), max_size=12).map("".join)
LONG_TEXT = st.builds(lambda n, piece: ("ab\u2028" + piece) * n, st.integers(50, 2000), SHORT_TEXT)  # up to ~30k
TEXT = st.one_of(SHORT_TEXT, SHORT_TEXT, SHORT_TEXT, SHORT_TEXT, LONG_TEXT)
ROLE_NAMES = {"user": ("user", "human"), "assistant": ("assistant", "gpt"), "system": ("system",)}
HH_MARKERS = ("\n\nHuman:", "\n\nAssistant:")
SETTINGS = settings(max_examples=50, deadline=None, database=None, derandomize=os.environ.get("CI") == "true",
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
# Damaged rows may also hold lone surrogates (JSON escapes them as "\ud800"), NaN and huge numbers.
SURROGATE_TEXT = st.lists(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=6).map("".join)
ANY_TEXT = st.one_of(SHORT_TEXT, SHORT_TEXT, SHORT_TEXT, SURROGATE_TEXT)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ANY_TEXT)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                  st.dictionaries(ANY_TEXT, inner, max_size=3)),
                           max_leaves=6)
VALID_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
                            lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(SHORT_TEXT, inner, max_size=3)),
                            max_leaves=6)


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


# --- generators of valid rows: each returns (rows, records the oracle expects before hygiene, flags) ---


@st.composite
def raw_message(draw, role: str, text=TEXT) -> tuple[dict, dict]:
    """A message in any accepted spelling ({role|from, content|value}, human/gpt) and its normal form."""
    content = draw(text)
    name = draw(st.sampled_from(ROLE_NAMES[role]))
    role_key, content_key = draw(st.sampled_from([("role", "content"), ("from", "value"), ("role", "value"),
                                                  ("from", "content")]))
    return {role_key: name, content_key: content}, _msg(role, content)


@st.composite
def conversation(draw, roles: list[str], text=TEXT) -> tuple[list[dict], list[dict]]:
    pairs = [draw(raw_message(role, text)) for role in roles]
    return [raw for raw, _ in pairs], [norm for _, norm in pairs]


def role_list(first: tuple[str, ...], rest: tuple[str, ...], last: str | None = None, max_size: int = 3):
    """Role sequences: one of `first`, then up to `max_size` of `rest`, then `last` when given."""
    return st.tuples(st.sampled_from(first), st.lists(st.sampled_from(rest), max_size=max_size)).map(
        lambda t: [t[0], *t[1], *([last] if last else [])])


@st.composite
def paired_strings(draw):
    question = draw(st.booleans())
    names = ("question", "response_j", "response_k") if question else ("prompt", "chosen", "rejected")
    rows, records = [], []
    for _ in range(draw(st.integers(1, 6))):
        values = [draw(TEXT) for _ in names]
        rows.append({**dict(zip(names, values)), **draw(extras())})
        records.append(dict(zip(("prompt", "chosen", "rejected"), values)))
    return rows, records, []


@st.composite
def extras(draw) -> dict:
    """Columns no shape reads, with any JSON value."""
    return draw(st.dictionaries(st.sampled_from(["id", "meta", "source_name"]), VALID_VALUES, max_size=2))


@st.composite
def distinct_tails(draw, text=TEXT, roles=("user", "assistant")):
    """Two answer continuations that start with different assistant messages."""
    first = draw(st.lists(text, min_size=2, max_size=2, unique=True))
    tails = []
    for content in first:
        raw0, norm0 = draw(raw_message("assistant", st.just(content)))
        raw, norm = draw(conversation(draw(st.lists(st.sampled_from(roles), max_size=2)), text))
        tails.append(([raw0, *raw], [norm0, *norm]))
    return tails


@st.composite
def paired_messages(draw):
    rows, records = [], []
    for _ in range(draw(st.integers(1, 5))):
        case = draw(st.sampled_from(["shared", "string-prompt", "message-prompt"]))
        extra = draw(extras())
        if case == "shared":  # the prompt is the leading messages both answers share
            raw_p, prompt = draw(conversation(draw(role_list(("system", "user", "assistant"),
                                                             ("user", "assistant"), "user"))))
            (raw_c, chosen), (raw_r, rejected) = draw(distinct_tails())
            row = {"chosen": raw_p + raw_c, "rejected": raw_p + raw_r, **extra}
            if draw(st.booleans()):
                row["prompt"] = draw(TEXT)  # ignored: the conversations carry the prompt
            records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        elif case == "string-prompt":  # answers without a user turn: the prompt string is the user turn
            prompt = draw(TEXT)
            raw_c, chosen = draw(conversation(draw(st.lists(st.just("assistant"), min_size=1, max_size=2))))
            raw_r, rejected = draw(conversation(draw(st.lists(st.just("assistant"), min_size=1, max_size=2))))
            row = {"prompt": prompt, "chosen": raw_c, "rejected": raw_r, **extra}
            records.append({"prompt": [_msg("user", prompt)], "chosen": chosen, "rejected": rejected})
        else:  # a message-list prompt, repeated at the start of the answers or not
            raw_p, prompt = draw(conversation(draw(st.lists(st.sampled_from(["system", "user"]), max_size=2))))
            raw_c, chosen = draw(conversation(draw(st.lists(st.just("assistant"), min_size=1, max_size=2))))
            raw_r, rejected = draw(conversation(draw(st.lists(st.just("assistant"), min_size=1, max_size=2))))
            with_c, with_r = draw(st.booleans()), draw(st.booleans())
            row = {"prompt": raw_p, "chosen": (raw_p if with_c else []) + raw_c,
                   "rejected": (raw_p if with_r else []) + raw_r, **extra}
            n = len(prompt)
            records.append({"prompt": prompt,
                            "chosen": chosen[n:] if not with_c and chosen[:n] == prompt else chosen,
                            "rejected": rejected[n:] if not with_r and rejected[:n] == prompt else rejected})
        rows.append(row)
    return rows, records, []


HH_TEXT = TEXT.filter(lambda s: not any(m in s for m in HH_MARKERS))


def hh_transcript(messages: list[dict], drop_leading_blank: bool) -> str:
    text = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)
    return text[2:] if drop_leading_blank else text


@st.composite
def hh(draw):
    rows, records = [], []
    for _ in range(draw(st.integers(1, 5))):
        _, prompt = draw(conversation(draw(role_list(("user", "assistant"), ("user", "assistant"), "user")), HH_TEXT))
        (_, chosen), (_, rejected) = draw(distinct_tails(HH_TEXT))
        cut = draw(st.booleans())
        rows.append({"chosen": hh_transcript(prompt + chosen, cut), "rejected": hh_transcript(prompt + rejected, cut),
                     **draw(extras())})
        records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows, records, []


@st.composite
def sharegpt(draw):
    rows, records = [], []
    for _ in range(draw(st.integers(1, 5))):
        raw_p, prompt = draw(conversation(draw(st.lists(st.sampled_from(["system", "user", "assistant"]),
                                                        max_size=4))))
        raw_c, chosen = draw(raw_message(draw(st.sampled_from(["assistant", "user"]))))
        raw_r, rejected = draw(raw_message("assistant"))
        row = {"conversations": raw_p, "chosen": raw_c, "rejected": raw_r}
        system = draw(st.one_of(st.none(), TEXT))
        if system is not None:
            row["system"] = system
        if system:
            prompt = [_msg("system", system), *prompt]
        rows.append(row)
        records.append({"prompt": prompt, "chosen": [chosen], "rejected": [rejected]})
    return rows, records, []


SCORES = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False, width=32),
                   st.integers(-50, 50).map(lambda i: f" {i / 4} "))
MISSING = st.sampled_from([None, "N/A", "", " nan ", "None", float("nan")])


def _score(value) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return None if value.strip().lower() in ("", "n/a", "na", "nan", "none") else float(value)
    return float(value)


def binarized(responses: list[tuple]) -> list[dict]:
    """(prompt, response, raw score) in order -> best-vs-worst pairs, one per prompt in first-seen order."""
    groups: dict[str, list] = {}
    for prompt, response, score in responses:
        groups.setdefault(json.dumps(prompt), []).append((prompt, response, _score(score)))
    pairs = []
    for group in groups.values():
        scored = [r for r in group if r[2] is not None]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda r: r[2])
        worst = min(scored, key=lambda r: r[2])
        if best[2] != worst[2]:
            pairs.append({"prompt": best[0], "chosen": best[1], "rejected": worst[1]})
    return pairs


@st.composite
def ultrafeedback(draw):
    rows, responses = [], []
    instructions = draw(st.lists(TEXT, min_size=1, max_size=3))  # rows may repeat an instruction
    for _ in range(draw(st.integers(1, 5))):
        instruction = draw(st.sampled_from(instructions))
        completions = []
        for _ in range(draw(st.integers(0, 4))):
            response = draw(TEXT)
            item = {"response": response, "model": "m", "annotations": {"helpfulness": {"Rating": "3"}}}
            score = draw(st.one_of(SCORES, MISSING, st.just("absent")))
            if score != "absent":
                item["overall_score"] = score
            completions.append(item)
            responses.append((instruction, response, None if score == "absent" else score))
        rows.append({"source": "s", "instruction": instruction, "completions": completions})
    # a file where no completion has the score field is a typo'd --score (an error of its own)
    assume(not responses or any("overall_score" in c for row in rows for c in row["completions"]))
    return rows, binarized(responses), []


@st.composite
def text_or_conversation(draw, last: str):
    if draw(st.integers(0, 3)) == 0:
        return draw(conversation(draw(st.lists(st.just(last), min_size=1, max_size=2))))
    value = draw(TEXT)
    return value, value


@st.composite
def scored(draw):
    rows, responses = [], []
    prompts = [draw(text_or_conversation("user")) for _ in range(draw(st.integers(1, 3)))]
    for index in range(draw(st.integers(1, 8))):
        raw_p, prompt = draw(st.sampled_from(prompts))
        raw_r, response = draw(text_or_conversation("assistant"))
        score = draw(SCORES if index == 0 else st.one_of(SCORES, MISSING))  # detection looks at a number
        rows.append({"prompt": raw_p, "response": raw_r, "helpfulness": score, "verbosity": draw(SCORES)})
        responses.append((prompt, response, score))
    return rows, binarized(responses), []


@st.composite
def pku(draw):
    prefer = draw(st.sampled_from(["better", "safer"]))
    rows, records = [], []
    for _ in range(draw(st.integers(1, 5))):
        prompt, r0, r1 = draw(TEXT), draw(TEXT), draw(TEXT)
        better, safer = draw(st.integers(0, 1)), draw(st.integers(0, 1))
        rows.append({"prompt": prompt, "response_0": r0, "response_1": r1, "better_response_id": better,
                     "safer_response_id": safer, "is_response_0_safe": draw(st.booleans())})
        winner = better if prefer == "better" else safer
        records.append({"prompt": prompt, "chosen": (r0, r1)[winner], "rejected": (r0, r1)[1 - winner]})
    return rows, records, ["--prefer", prefer] if prefer != "better" else []


LABELS = st.sampled_from([True, False, 0, 1, 1.0, 0.0, "true", "False", " 1 ", "0", "TRUE"])


def _label(value) -> bool:
    return value.strip().lower() in ("true", "1") if isinstance(value, str) else bool(value)


@st.composite
def labelled(draw):
    field = draw(st.sampled_from(["label", "is_safe"]))
    use_messages = draw(st.booleans())
    rows, records = [], []
    for _ in range(draw(st.integers(1, 6))):
        label = draw(LABELS)
        if use_messages:
            roles = draw(st.lists(st.sampled_from(["system", "user", "assistant"]), max_size=4))
            raw, conv = draw(conversation(roles))
            last = max((i for i, m in enumerate(conv) if m["role"] == "user"), default=-1)
            rows.append({"messages": raw, field: label})
            records.append({"prompt": conv[:last + 1], "completion": conv[last + 1:], "label": _label(label)})
        else:
            name = draw(st.sampled_from(["completion", "response"]))
            raw_p, prompt = draw(text_or_conversation("user"))
            raw_c, completion = draw(text_or_conversation("assistant"))
            rows.append({"prompt": raw_p, name: raw_c, field: label})
            records.append({"prompt": prompt, "completion": completion, "label": _label(label)})
    return rows, records, []


SHAPES = {"paired-strings": (paired_strings, True), "paired-messages": (paired_messages, True), "hh": (hh, True),
          "sharegpt": (sharegpt, True), "ultrafeedback": (ultrafeedback, True), "scored": (scored, True),
          "pku": (pku, True), "labelled": (labelled, False)}


# --- the oracle's hygiene, the file writer, the runner ------------------------------------------


def _blank(value) -> bool:
    return not value.strip() if isinstance(value, str) else all(not m["content"].strip() for m in value)


def expected_rows(records: list[dict], paired: bool) -> list[dict]:
    """What `aot prepare --test-size 0` keeps of normalized `records`, in order: all strings or (when
    any field is a message list) all message lists, then hygiene."""
    answers = ("chosen", "rejected") if paired else ("completion",)
    if any(isinstance(r[f], list) for r in records for f in ("prompt", *answers)):
        roles = {"prompt": "user", "chosen": "assistant", "rejected": "assistant", "completion": "assistant"}
        records = [{k: [_msg(roles[k], v)] if k in roles and isinstance(v, str) else v for k, v in r.items()}
                   for r in records]
    kept, seen = [], set()
    for r in records:
        if _blank(r["prompt"]) or any(_blank(r[a]) for a in answers) or (paired and r["chosen"] == r["rejected"]):
            continue
        key = json.dumps([r[f] for f in ("prompt", *answers, *(() if paired else ("label",)))])
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return kept


@st.composite
def layout(draw) -> dict:
    """How the rows are written: JSON Lines (LF or CRLF, blank lines, escaped or raw non-ASCII) or a
    JSON array, with or without a byte order mark."""
    return {"suffix": draw(st.sampled_from([".jsonl", ".json"])), "ascii": draw(st.booleans()),
            "newline": draw(st.sampled_from(["\n", "\r\n"])), "blank_lines": draw(st.booleans()),
            "bom": draw(st.booleans()), "indent": draw(st.sampled_from([None, 1]))}


def write_rows(directory: Path, rows: list, how: dict) -> Path:
    path = directory / f"rows{how['suffix']}"
    if how["suffix"] == ".json":
        text = json.dumps(rows, ensure_ascii=how["ascii"], indent=how["indent"])
    else:
        lines = [json.dumps(r, ensure_ascii=how["ascii"]) for r in rows]
        if how["blank_lines"]:
            lines = [x for line in lines for x in (line, "")]
        text = how["newline"].join(lines) + how["newline"]
    # surrogatepass: a raw lone surrogate becomes bytes that are not UTF-8, which must be an error too
    path.write_bytes(("\ufeff" if how["bom"] else "").encode() + text.encode("utf-8", "surrogatepass"))
    return path


def traceback_of(result) -> str:
    """The traceback of an unexpected exception inside `aot`, for the failure message."""
    error = result.exception
    return "" if error is None or isinstance(error, SystemExit) else "".join(traceback.format_exception(error))


def one_error_line(result) -> bool:
    lines = result.stderr.strip().splitlines()
    return result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")


def prepare(aot, rows: list, how: dict, *flags):
    """Run `aot prepare` on `rows` written as `how` says; (result, train rows as dicts or None)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = write_rows(Path(tmp), rows, how)
        result = aot("prepare", source, "-o", Path(tmp) / "out", *flags)
        if result.exit_code != 0:
            return result, None
        _, data = load_prepared(Path(tmp) / "out")
        return result, [dict(r) for r in data["train"]] + [dict(r) for r in data["test"]]


# --- the properties ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
def test_valid_rows_round_trip_exactly(aot, shape):
    generator, paired = SHAPES[shape]

    @SETTINGS
    @given(case=generator(), how=layout())
    def check(case, how):
        rows, records, flags = case
        result, got = prepare(aot, rows, how, "--test-size", "0", *flags)
        expected = expected_rows(records, paired)
        if not expected:
            assert one_error_line(result) and "no training rows left" in result.stderr, result
            return
        assert result.exit_code == 0, (result, traceback_of(result))
        assert got == expected

    check()


def _paths(value, path=()):
    """The path (a tuple of keys) to every value inside nested dicts and lists, the row itself excluded."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in children:
        yield (*path, key)
        yield from _paths(item, (*path, key))


@st.composite
def mutated(draw, generator):
    """Valid rows with 1-3 random changes: a value of another JSON type, a key removed, a stray key."""
    rows, _, flags = draw(generator())
    rows = json.loads(json.dumps(rows))
    for _ in range(draw(st.integers(1, 3))):
        row = draw(st.sampled_from(rows))
        paths = list(_paths(row))
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "add" or not paths:
            key = draw(st.one_of(ANY_TEXT, st.sampled_from(["label", "prompt", "chosen", "messages", "completion"])))
            row[key] = draw(JSON_VALUES)
            continue
        *parent_path, key = draw(st.sampled_from(paths))
        parent = row
        for step in parent_path:
            parent = parent[step]
        if action == "remove":
            del parent[key]
        else:
            parent[key] = draw(JSON_VALUES)
    return rows, flags


@pytest.mark.parametrize("shape", list(SHAPES))
def test_damaged_rows_never_crash(aot, shape):
    generator, paired = SHAPES[shape]
    extra_flags = st.sampled_from([[], ["--format", shape], ["--test-size", "0.5"], ["--test-size", "2"],
                                   *([["--unpair"], ["--unpair", "--disjoint-prompts"]] if paired else []),
                                   *([["--label-field", "helpfulness", "--label-threshold", "0"],
                                      ["--score", "helpfulness - 0.5*verbosity"]] if shape == "scored" else []),
                                   *([["--label-field", "label", "--label-threshold", "0.5"]]
                                     if shape == "labelled" else [])])

    @SETTINGS
    @given(case=mutated(generator), how=layout(), flags=extra_flags)
    def check(case, how, flags):
        rows, shape_flags = case
        result, _ = prepare(aot, rows, how, *shape_flags, *flags)  # exit 0: the dataset loads
        assert result.exit_code == 0 or one_error_line(result), (result, traceback_of(result))

    check()
