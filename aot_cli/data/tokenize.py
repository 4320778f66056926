"""Tokenization exactly as training sees it: chat template, prompt/completion boundary, truncation.

One example becomes ``prompt ids + completion ids``, and together they are exactly the ids
``apply_chat_template`` gives for the whole conversation (up to the BOS and EOS rules below):

- The chat template is always applied. A string prompt is one user turn, a string completion one
  assistant turn.
- Which prompt the model is trained on: the whole conversation's own prefix, i.e. everything the
  template writes before the answer when it renders prompt + answer (no generation prompt). Most
  templates write the generation prompt there, but not all: Mistral v0.3 writes the system prompt
  only into a *last* user turn, so a conversation that ends in an answer has none; DeepSeek-R1's
  generation prompt opens a ``<think>`` block its rendered answers lack; Qwen3 writes an empty
  ``<think></think>`` before the last answer. Training on the generation prompt there would splice
  two renderings into a sequence the template never produces, and the answer's start would have to
  be searched for as text (which can land inside the prompt: "Reply Yes or No." answered "Yes").
  ``Encoded.prompt_is_generation`` says whether the prompt ids are the generation prompt's ids;
  ``LengthStats.prompt_not_generation`` counts the rows where they are not, for ``aot inspect``.
- Where the answer starts is found from the template, never by searching for the answer's text:
  the conversation is rendered a second time with the first answer message's content replaced by a
  sentinel, and the answer starts where the sentinel does. The real rendering must agree with it up
  to there (else the template writes the conversation before the answer differently for this
  answer: Qwen3 moves ``<think>`` reasoning out of it) and then continue with the answer's text, up
  to surrounding whitespace the template trims (else it drops or rewrites part of the answer:
  DeepSeek-R1 drops everything up to ``</think>``). Either is a UserError, never a wrong split. A
  template that refuses the conversation (Gemma raises on a system message) is a UserError with the
  template's own message.
- Exact ids: the conversation is tokenized once, whole, without added special tokens (as
  ``apply_chat_template`` does). The prompt is the longest run of its leading ids that also starts
  the tokenization of the text before the answer. Usually that is all of that text; when one token
  spans the boundary (a byte-level BPE merging the template's newline with a space that starts the
  answer), the token goes to the completion: the prompt never holds any of the answer, the
  completion holds the token whole, and ``prompt_is_generation`` is False for the row.
- No double BOS: BOS is prepended only when the tokenizer normally adds one (its post-processor
  does) and the templated conversation does not already start with it (Llama-3 style templates
  write ``{{ bos_token }}`` themselves).
- EOS exactly once, nothing after it: a templated answer that ends in EOS followed only by
  whitespace (ChatML writes ``<|im_end|>\\n``) is cut right after the EOS; one without EOS gets it
  appended (Gemma ends a turn with ``<end_of_turn>\\n``, which stays inside the completion).
- Truncation (``TokenizeSettings``): the prompt is cut from the LEFT to ``max_prompt_length``; then,
  if the total exceeds ``max_length``, the completion is cut from the END, keeping at least one
  token; only if the prompt alone leaves no room for that token is the prompt cut further. A leading
  BOS always survives left truncation. A truncated completion does not get EOS re-added: the model
  must not learn to stop where the text was merely cut.

``tokenize_split`` maps this over a dataset split and caches the result on disk under
``cache_dir("tokenized")``, keyed by fingerprints of the data, the tokenizer and the settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import datasets
from datasets import Features, Value
from jinja2 import TemplateError
from transformers import AutoTokenizer

from aot_cli.artifacts.store import fingerprint as _fingerprint_of
from aot_cli.artifacts.store import remove_stale_temporaries, temporary_name
from aot_cli.cache import cache_dir
from aot_cli.console import progress, warn
from aot_cli.errors import OptionError, UserError
from aot_cli.vocab import is_local_path

# Bump when the encoding logic changes, so cached tokenizations made by older code are not reused.
ENCODING_VERSION = 2


@dataclass(frozen=True)
class TokenizeSettings:
    """Length limits in tokens; None means no limit."""

    max_length: int | None = None
    max_prompt_length: int | None = None

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 2:
            raise OptionError(f"{{max_length}} {self.max_length} leaves no room for a prompt token and a "
                              "completion token (use at least 2)", "max_length")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise OptionError(f"{{max_prompt_length}} must be at least 1, got {self.max_prompt_length}",
                              "max_prompt_length")


@dataclass
class Encoded:
    """One tokenized example: ``input_ids[:prompt_len]`` is the prompt, the rest the completion."""

    input_ids: list[int]
    prompt_len: int
    truncated_prompt: bool
    truncated_completion: bool
    prompt_is_generation: bool = True  # False: the prompt ids are not the generation prompt's ids
    eos_added: bool = False            # True: the template did not end the completion with EOS


@dataclass(frozen=True)
class Specials:
    """What a tokenizer does with BOS and EOS (`adds_bos`: its post-processor prepends BOS)."""

    bos_id: int | None
    eos_id: int | None
    eos_token: str | None
    adds_bos: bool


def specials_of(tokenizer: Any) -> Specials:
    """Ask the tokenizer rather than trusting `add_bos_token`: fast tokenizers add BOS in their
    post-processor whatever that attribute says."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    bos_id = tokenizer.bos_token_id
    adds_bos = bos_id is not None and len(with_special) > len(without) and with_special[0] == bos_id
    return Specials(bos_id, tokenizer.eos_token_id, tokenizer.eos_token, adds_bos)


def load_tokenizer(name_or_path: str | Path, chat_template_file: Path | None = None,
                   trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model, ready for ``encode_example``.

    `chat_template_file` (a Jinja file) replaces the tokenizer's chat template. A tokenizer with no
    chat template and none given is a UserError: aot always applies one. A tokenizer without a pad
    token gets EOS as its pad token; padded positions are masked out (attention and labels), so the
    choice never reaches the loss.
    """
    template = None
    if chat_template_file is not None:
        path = Path(chat_template_file)
        if not path.is_file():
            raise UserError(f"{path}: chat template file not found")
        template = path.read_text(encoding="utf-8")
    name = str(name_or_path)
    if is_local_path(name) and not Path(name).expanduser().exists():
        raise UserError(f"{name}: no such directory (give a model directory or a hub id like org/name)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"{name_or_path}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None
    if template is not None:
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        raise OptionError(f"{name_or_path}: the tokenizer has no chat template; give one with "
                          "{chat_template} FILE (a Jinja template, e.g. aot_cli/templates/chatml.jinja)",
                          "chat_template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def as_messages(value: Any, role: str, field: str) -> list[dict]:
    """A string becomes one `role` turn; a message list is returned as is."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in value):
        return list(value)
    raise UserError(f"field {field!r}: expected a string or a list of messages "
                    f"[{{'role', 'content'}}], got {type(value).__name__}")


def _template(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    except TemplateError as exc:
        raise UserError(f"the chat template failed on this conversation ({exc})") from None


def _common_prefix_len(a: Sequence, b: Sequence) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _clip(text: str, width: int = 40) -> str:
    """A short quotable piece of `text` for a one-line error message."""
    return repr(text if len(text) <= width else text[:width] + "...")


@dataclass(frozen=True)
class Rendered:
    """One example as the chat template renders it: `text` is the whole conversation (cut right after
    its last EOS when only whitespace follows), the answer starts at ``text[answer_start]``, and
    `generation_prompt` is the prompt rendered with the generation prompt (what generation sees)."""

    text: str
    answer_start: int
    generation_prompt: str


_SENTINEL = "AOTANSWERSENTINEL"


def render_example(tokenizer: Any, prompt: Any, completion: Any, eos_token: str | None) -> Rendered:
    """Render one (prompt, completion) pair and find where the answer starts (module docstring)."""
    prompt_msgs = as_messages(prompt, "user", "prompt")
    completion_msgs = as_messages(completion, "assistant", "completion")
    content = completion_msgs[0].get("content")
    if not isinstance(content, str):
        raise UserError(f"field 'completion': the first message's content must be text, "
                        f"got {type(content).__name__}")
    text = _template(tokenizer, prompt_msgs + completion_msgs, generation_prompt=False)
    sentinel = _SENTINEL
    while sentinel in text:  # data that happens to contain it: make it longer until it is unique
        sentinel += "X"
    marked = _template(tokenizer, prompt_msgs + [{**completion_msgs[0], "content": sentinel}] + completion_msgs[1:],
                       generation_prompt=False)
    start = marked.find(sentinel)
    if start < 0 or marked.count(sentinel) > 1:
        raise OptionError("the chat template rewrites the answer (it does not write the answer's text once, as "
                          "given), so aot cannot tell where the answer starts; give another template with "
                          "{chat_template}", "chat_template")
    if not text.startswith(marked[:start]):
        at = _common_prefix_len(text, marked)
        raise OptionError(f"the chat template writes the conversation before the answer differently for this "
                          f"answer ({_clip(text[at:])} where another answer gets {_clip(marked[at:])}; Qwen3 moves "
                          "<think> reasoning out of the answer), so aot cannot tell where the answer starts; remove "
                          "the reasoning from the answers or give another template with {chat_template}",
                          "chat_template")
    written = text[start:].lstrip()
    if not written.startswith(content.strip()):
        raise OptionError(f"the chat template rewrites the answer: it writes {_clip(written)} for "
                          f"{_clip(content.strip())} (DeepSeek-R1 drops everything up to </think>), so aot would not "
                          "train on the answer given; remove what the template drops (the reasoning) from the answers "
                          "or give another template with {chat_template}", "chat_template")
    if eos_token:
        end = text.rfind(eos_token, start)
        if end >= 0 and not text[end + len(eos_token):].strip():
            text = text[:end + len(eos_token)]
    return Rendered(text, start, _template(tokenizer, prompt_msgs, generation_prompt=True))


def split_text(tokenizer: Any, prompt: Any, completion: Any, eos_token: str | None) -> tuple[str, str, str]:
    """``(text before the answer, text from the answer on, generation prompt)`` of one example: the
    text view of the split (the ids may move one token across the boundary, see the module docstring)."""
    rendered = render_example(tokenizer, prompt, completion, eos_token)
    return (rendered.text[:rendered.answer_start], rendered.text[rendered.answer_start:],
            rendered.generation_prompt)


def _truncate_left(ids: list[int], length: int, bos_id: int | None) -> list[int]:
    """The last `length` tokens of `ids`, keeping a leading BOS in front."""
    if len(ids) <= length:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id:
        return [bos_id] + (ids[len(ids) - length + 1:] if length > 1 else [])
    return ids[len(ids) - length:]


def _assemble(specials: Specials, prompt_ids: list[int], completion_ids: list[int],
              settings: TokenizeSettings, prompt_is_generation: bool) -> Encoded:
    """BOS, EOS and truncation on the two token lists of one example."""
    if specials.adds_bos and (not prompt_ids or prompt_ids[0] != specials.bos_id):
        prompt_ids = [specials.bos_id] + prompt_ids
    eos_added = False
    if specials.eos_id is not None and (not completion_ids or completion_ids[-1] != specials.eos_id):
        completion_ids = completion_ids + [specials.eos_id]
        eos_added = True
    truncated_prompt = truncated_completion = False
    if settings.max_prompt_length is not None and len(prompt_ids) > settings.max_prompt_length:
        prompt_ids = _truncate_left(prompt_ids, settings.max_prompt_length, specials.bos_id)
        truncated_prompt = True
    if settings.max_length is not None and len(prompt_ids) + len(completion_ids) > settings.max_length:
        if len(prompt_ids) + 1 > settings.max_length:
            prompt_ids = _truncate_left(prompt_ids, settings.max_length - 1, specials.bos_id)
            truncated_prompt = True
        keep = settings.max_length - len(prompt_ids)
        if keep < len(completion_ids):
            completion_ids = completion_ids[:keep]
            truncated_completion = True
    return Encoded(prompt_ids + completion_ids, len(prompt_ids), truncated_prompt, truncated_completion,
                   prompt_is_generation, eos_added)


def _encode_rendered(tokenizer: Any, specials: Specials, rendered: list[Rendered],
                     settings: TokenizeSettings) -> list[Encoded]:
    """Tokenize rendered examples (the whole conversation once; the text before the answer and the
    generation prompt only to place the boundary and compare), then assemble each example."""
    if not rendered:
        return []

    def tokenize(texts: list[str]) -> list[list[int]]:
        # verbose=False: no "longer than the maximum sequence length" warning; truncation is ours.
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    whole = tokenize([r.text for r in rendered])
    before = tokenize([r.text[:r.answer_start] for r in rendered])
    # Most templates write the generation prompt before the answer: tokenize it only where they do not.
    differ = [i for i, r in enumerate(rendered) if r.generation_prompt != r.text[:r.answer_start]]
    generation = list(before)
    for i, ids in zip(differ, tokenize([rendered[i].generation_prompt for i in differ]) if differ else []):
        generation[i] = ids
    encoded = []
    for ids, before_ids, generation_ids in zip(whole, before, generation):
        boundary = _common_prefix_len(ids, before_ids)
        encoded.append(_assemble(specials, ids[:boundary], ids[boundary:], settings,
                                 ids[:boundary] == generation_ids))
    return encoded


def encode_example(tokenizer: Any, prompt: Any, completion: Any, settings: TokenizeSettings) -> Encoded:
    """Tokenize one (prompt, completion) pair as training does (see the module docstring)."""
    specials = specials_of(tokenizer)
    rendered = [render_example(tokenizer, prompt, completion, specials.eos_token)]
    return _encode_rendered(tokenizer, specials, rendered, settings)[0]


def encode_many(tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Any],
                settings: TokenizeSettings, *, first_row: int = 0, field: str = "completion") -> list[Encoded]:
    """``encode_example`` over many rows; errors name the row (1-based, from `first_row`) and `field`."""
    specials = specials_of(tokenizer)
    rendered = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        try:
            rendered.append(render_example(tokenizer, prompt, completion, specials.eos_token))
        except UserError as exc:
            raise UserError(f"row {first_row + i + 1} ({field}): {exc}") from None
    return _encode_rendered(tokenizer, specials, rendered, settings)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes token ids: vocabulary, merges, normalizer,
    pre- and post-processor, added and special tokens, and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return _fingerprint_of({
        "class": type(tokenizer).__name__,
        "model": hashlib.sha256(model.encode()).hexdigest(),
        "special": tokenizer.special_tokens_map,
        "chat_template": tokenizer.chat_template,
    })


def _columns(paired: bool) -> dict[str, str]:
    """Output column prefix -> the dataset field holding that completion."""
    return {"chosen_": "chosen", "rejected_": "rejected"} if paired else {"": "completion"}


def _features(split: Any, paired: bool) -> Any:
    features = {}
    for prefix in _columns(paired):
        features[f"{prefix}input_ids"] = datasets.Sequence(Value("int32"))
        features[f"{prefix}prompt_len"] = Value("int32")
    features["truncated_prompt"] = Value("bool")
    features["truncated_completion"] = Value("bool")
    if not paired:
        features["label"] = split.features["label"]
    return Features(features)


def _read_cached(entry: Path, rows: int, features: Any) -> Any:
    """The cached tokenization in `entry`, or None when there is none or it is damaged (a file cut
    short, other rows or columns): a damaged entry is removed with a warning and computed again."""
    path = entry / "data.arrow"
    if not path.is_file():
        return None
    try:
        cached = datasets.Dataset.from_file(str(path))
        problem = None if cached.num_rows == rows and cached.features == features else "other rows or columns"
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its IOError an OSError
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if problem is None:
        return cached
    warn(f"tokenized cache entry {entry} is damaged ({problem}); tokenizing again")
    shutil.rmtree(entry, ignore_errors=True)
    return None


def tokenize_split(split: Any, tokenizer: Any, settings: TokenizeSettings, *, paired: bool,
                   fingerprint: str | None = None) -> Any:
    """Tokenize a prepared split (docs/architecture.md) into id columns, cached on disk.

    Paired: ``chosen_input_ids``, ``chosen_prompt_len``, ``rejected_input_ids``,
    ``rejected_prompt_len``; unpaired: ``input_ids``, ``prompt_len``, ``label``. Both also carry
    ``truncated_prompt`` and ``truncated_completion`` (either side of a pair), summed by
    ``truncation_counts``. The cache key is (`fingerprint` or the split's datasets fingerprint, row
    count, tokenizer fingerprint, settings, encoding version): pass the dataset manifest's
    fingerprint plus the split name as `fingerprint` when the split is the saved one, unchanged.
    """
    key = _fingerprint_of({
        "encoding": ENCODING_VERSION, "data": fingerprint or split._fingerprint, "rows": split.num_rows,
        "tokenizer": tokenizer_fingerprint(tokenizer), "settings": dataclasses.asdict(settings),
        "paired": paired,
    })
    entry = cache_dir("tokenized") / key
    cached = _read_cached(entry, split.num_rows, _features(split, paired))
    if cached is not None:
        return cached
    columns = _columns(paired)
    remove_stale_temporaries(entry)  # left by a killed process (the pid in the name says whose)
    tmp = temporary_name(entry)
    tmp.mkdir(parents=True)
    bars_were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with progress(transient=True) as bar:
            task = bar.add_task("Tokenizing", total=split.num_rows)

            def encode_batch(batch: dict, indices: list[int]) -> dict:
                out: dict[str, list] = {"truncated_prompt": [False] * len(indices),
                                        "truncated_completion": [False] * len(indices)}
                for prefix, field in columns.items():
                    encoded = encode_many(tokenizer, batch["prompt"], batch[field], settings,
                                          first_row=indices[0], field=field)
                    out[f"{prefix}input_ids"] = [e.input_ids for e in encoded]
                    out[f"{prefix}prompt_len"] = [e.prompt_len for e in encoded]
                    for i, e in enumerate(encoded):
                        out["truncated_prompt"][i] |= e.truncated_prompt
                        out["truncated_completion"][i] |= e.truncated_completion
                bar.advance(task, len(indices))
                return out

            split.map(encode_batch, batched=True, with_indices=True, features=_features(split, paired),
                      remove_columns=[c for c in split.column_names if paired or c != "label"],
                      cache_file_name=str(tmp / "data.arrow"), new_fingerprint=key, load_from_cache_file=False)
        _publish(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if not bars_were_disabled:
            datasets.enable_progress_bars()
    return datasets.Dataset.from_file(str(entry / "data.arrow"))


def _publish(tmp: Path, entry: Path) -> None:
    """Rename the finished `tmp` into `entry`, unless another process (same key, same content) got
    there first, even between our check and our rename (a rename onto a full directory fails)."""
    if not entry.exists():
        try:
            os.replace(tmp, entry)
            return
        except OSError:
            if not entry.exists():
                raise
    shutil.rmtree(tmp)


def truncation_counts(tokenized: Any) -> dict[str, int]:
    """Rows of a ``tokenize_split`` result whose prompt, completion, or either was truncated."""
    prompt = list(tokenized["truncated_prompt"])
    completion = list(tokenized["truncated_completion"])
    return {"rows": len(prompt), "prompt": sum(prompt), "completion": sum(completion),
            "any": sum(p or c for p, c in zip(prompt, completion))}


@dataclass
class LengthStats:
    """Token lengths of a split before truncation, and what the settings and template would do to it.

    `lengths` maps prompt, chosen, rejected (or completion) and total (prompt + the longest
    completion of the row) to their p50, p95 and max. Counts are rows: `truncated` (the settings
    cut the prompt or a completion), `prompt_too_long` (the prompt leaves no room for one completion
    token within max_length, so it is cut further than max_prompt_length), `double_bos` (ids start
    with BOS twice: the template itself writes it twice), `eos_added` (the template does not end the
    answer with EOS; aot appends it), `missing_eos` (the tokenizer has no EOS token),
    `prompt_not_generation` (the prompt trained on, the conversation's own prefix, is not the
    generation prompt: see the module docstring).
    """

    rows: int
    lengths: dict[str, dict[str, int]]
    truncated: int
    prompt_too_long: int
    double_bos: int
    eos_added: int
    missing_eos: int
    prompt_not_generation: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _percentile(sorted_values: list[int], percent: int) -> int:
    """Nearest-rank percentile: the smallest value with at least `percent`% of the values at or
    below it (an actual length, never an interpolated one)."""
    if not sorted_values:
        return 0
    rank = max(1, -(-percent * len(sorted_values) // 100))  # ceil without floats
    return sorted_values[rank - 1]


def summarize_lengths(values: list[int]) -> dict[str, int]:
    """p50, p95 (nearest rank) and max of a list of lengths."""
    values = sorted(values)
    return {"p50": _percentile(values, 50), "p95": _percentile(values, 95), "max": _percentile(values, 100)}


def length_stats(split: Any, tokenizer: Any, settings: TokenizeSettings, paired: bool,
                 batch_size: int = 1000) -> LengthStats:
    """Token-length statistics of a prepared split as training would tokenize it (used by
    ``aot inspect`` and ``aot prepare --tokenizer --max-length``); nothing is cached."""
    specials = specials_of(tokenizer)
    columns = list(_columns(paired).values())
    lengths: dict[str, list[int]] = {"prompt": [], **{c: [] for c in columns}, "total": []}
    counts = dict.fromkeys(("truncated", "prompt_too_long", "double_bos", "eos_added", "missing_eos",
                            "prompt_not_generation"), 0)
    mpl, ml = settings.max_prompt_length, settings.max_length
    with progress(transient=True) as bar:
        task = bar.add_task("Measuring", total=split.num_rows)
        for start, batch in zip(range(0, split.num_rows, batch_size), split.iter(batch_size=batch_size)):
            sides = [encode_many(tokenizer, batch["prompt"], batch[c], TokenizeSettings(),
                                 first_row=start, field=c) for c in columns]
            for row in zip(*sides):
                prompt_len = row[0].prompt_len
                completion_lens = [len(e.input_ids) - e.prompt_len for e in row]
                lengths["prompt"].append(prompt_len)
                lengths["total"].append(prompt_len + max(completion_lens))
                for column, n in zip(columns, completion_lens):
                    lengths[column].append(n)
                kept_prompt = min(prompt_len, mpl) if mpl else prompt_len
                counts["truncated"] += bool((mpl and prompt_len > mpl) or
                                            (ml and kept_prompt + max(completion_lens) > ml))
                counts["prompt_too_long"] += bool(ml and kept_prompt + 1 > ml)
                counts["double_bos"] += row[0].input_ids[:2] == [specials.bos_id] * 2
                counts["eos_added"] += any(e.eos_added for e in row)
                counts["missing_eos"] += any(specials.eos_id is None or e.input_ids[-1] != specials.eos_id
                                             for e in row)
                counts["prompt_not_generation"] += any(not e.prompt_is_generation for e in row)
            bar.advance(task, len(batch["prompt"]))
    return LengthStats(rows=split.num_rows, lengths={k: summarize_lengths(v) for k, v in lengths.items()}, **counts)
