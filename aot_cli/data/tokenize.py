"""Tokenization exactly as training sees it: chat template, prompt/completion boundary, truncation.

One example becomes ``prompt ids + completion ids``:

- The chat template is always applied. A string prompt is one user turn, a string completion one
  assistant turn. Prompt text = the templated prompt with the generation prompt (the assistant
  header); completion text = the rest of the templated conversation. Both are tokenized separately
  with ``add_special_tokens=False``, so the prompt ids are exactly what the model sees at generation
  time and the boundary is exact (TRL tokenizes the same way).
- No double BOS: BOS is prepended only when the tokenizer normally adds one (its post-processor
  does) and the templated prompt does not already start with it (Llama-3 style templates write
  ``{{ bos_token }}`` themselves).
- EOS exactly once, nothing after it: a templated completion that ends in EOS followed only by
  whitespace (ChatML writes ``<|im_end|>\\n``) is cut right after the EOS; one without EOS gets it
  appended.
- When the templated prompt is not a prefix of the templated conversation (templates that render a
  turn differently once an answer follows, e.g. a system prompt merged only into the *last* user
  turn), the prompt stays the templated prompt (what generation sees) and the completion starts
  where the first completion message's content starts in the conversation. ``Encoded.template_prefix``
  records it and ``aot inspect`` warns.
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
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import datasets
from datasets import Features, Value
from jinja2 import TemplateError
from transformers import AutoTokenizer

from aot_cli.artifacts.store import fingerprint as _fingerprint_of
from aot_cli.cache import cache_dir
from aot_cli.console import progress
from aot_cli.errors import UserError
from aot_cli.vocab import is_local_path

# Bump when the encoding logic changes, so cached tokenizations made by older code are not reused.
ENCODING_VERSION = 1


@dataclass(frozen=True)
class TokenizeSettings:
    """Length limits in tokens; None means no limit."""

    max_length: int | None = None
    max_prompt_length: int | None = None

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 2:
            raise UserError(f"--max-length {self.max_length} leaves no room for a prompt token and a "
                            "completion token (use at least 2)")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise UserError(f"--max-prompt-length must be at least 1, got {self.max_prompt_length}")


@dataclass
class Encoded:
    """One tokenized example: ``input_ids[:prompt_len]`` is the prompt, the rest the completion."""

    input_ids: list[int]
    prompt_len: int
    truncated_prompt: bool
    truncated_completion: bool
    template_prefix: bool = True   # False: the templated prompt is not a prefix of the conversation
    eos_added: bool = False        # True: the template did not end the completion with EOS


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
        raise UserError(f"{name_or_path}: the tokenizer has no chat template; give one with "
                        "--chat-template FILE (a Jinja template, e.g. aot_cli/templates/chatml.jinja)")
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


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def split_text(tokenizer: Any, prompt: Any, completion: Any, eos_token: str | None) -> tuple[str, str, bool]:
    """``(prompt text, completion text, prompt is a prefix)`` of one templated example.

    The completion text is cut right after its last EOS when only whitespace follows it.
    """
    prompt_msgs = as_messages(prompt, "user", "prompt")
    completion_msgs = as_messages(completion, "assistant", "completion")
    prompt_text = _template(tokenizer, prompt_msgs, generation_prompt=True)
    full_text = _template(tokenizer, prompt_msgs + completion_msgs, generation_prompt=False)
    is_prefix = full_text.startswith(prompt_text)
    if is_prefix:
        completion_text = full_text[len(prompt_text):]
    else:
        content = str(completion_msgs[0].get("content") or "")
        start = full_text.find(content, _common_prefix_len(prompt_text, full_text)) if content else -1
        if start < 0:
            raise UserError("the templated prompt is not a prefix of the templated conversation and the "
                            "completion's text is not found in it; the chat template rewrites the answer "
                            "(fix the template or give another one with --chat-template)")
        completion_text = full_text[start:]
    if eos_token:
        end = completion_text.rfind(eos_token)
        if end >= 0 and not completion_text[end + len(eos_token):].strip():
            completion_text = completion_text[:end + len(eos_token)]
    return prompt_text, completion_text, is_prefix


def _truncate_left(ids: list[int], length: int, bos_id: int | None) -> list[int]:
    """The last `length` tokens of `ids`, keeping a leading BOS in front."""
    if len(ids) <= length:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id:
        return [bos_id] + (ids[len(ids) - length + 1:] if length > 1 else [])
    return ids[len(ids) - length:]


def _assemble(specials: Specials, prompt_ids: list[int], completion_ids: list[int],
              settings: TokenizeSettings, template_prefix: bool) -> Encoded:
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
                   template_prefix, eos_added)


def _encode_texts(tokenizer: Any, specials: Specials, texts: list[tuple[str, str, bool]],
                  settings: TokenizeSettings) -> list[Encoded]:
    """Tokenize split texts in one batched call per side, then assemble each example."""
    if not texts:
        return []
    # verbose=False: no "longer than the maximum sequence length" warning; truncation is ours.
    prompt_ids = tokenizer([t[0] for t in texts], add_special_tokens=False, verbose=False)["input_ids"]
    completion_ids = tokenizer([t[1] for t in texts], add_special_tokens=False, verbose=False)["input_ids"]
    return [_assemble(specials, p, c, settings, t[2]) for p, c, t in zip(prompt_ids, completion_ids, texts)]


def encode_example(tokenizer: Any, prompt: Any, completion: Any, settings: TokenizeSettings) -> Encoded:
    """Tokenize one (prompt, completion) pair as training does (see the module docstring)."""
    specials = specials_of(tokenizer)
    texts = [split_text(tokenizer, prompt, completion, specials.eos_token)]
    return _encode_texts(tokenizer, specials, texts, settings)[0]


def encode_many(tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Any],
                settings: TokenizeSettings, *, first_row: int = 0, field: str = "completion") -> list[Encoded]:
    """``encode_example`` over many rows; errors name the row (1-based, from `first_row`) and `field`."""
    specials = specials_of(tokenizer)
    texts = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        try:
            texts.append(split_text(tokenizer, prompt, completion, specials.eos_token))
        except UserError as exc:
            raise UserError(f"row {first_row + i + 1} ({field}): {exc}") from None
    return _encode_texts(tokenizer, specials, texts, settings)


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


def tokenize_split(split: Any, tokenizer: Any, settings: TokenizeSettings, *, paired: bool,
                   fingerprint: str | None = None) -> Any:
    """Tokenize a prepared split (CONTRACTS.md) into id columns, cached on disk.

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
    if (entry / "data.arrow").is_file():
        return datasets.Dataset.from_file(str(entry / "data.arrow"))
    columns = _columns(paired)
    tmp = entry.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
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
        if entry.exists():  # another process finished the same work first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if not bars_were_disabled:
            datasets.enable_progress_bars()
    return datasets.Dataset.from_file(str(entry / "data.arrow"))


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
    answer with EOS; aot appends it), `missing_eos` (the tokenizer has no EOS token), `not_prefix`
    (templated prompt not a prefix of prompt + completion).
    """

    rows: int
    lengths: dict[str, dict[str, int]]
    truncated: int
    prompt_too_long: int
    double_bos: int
    eos_added: int
    missing_eos: int
    not_prefix: int

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
                            "not_prefix"), 0)
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
                counts["not_prefix"] += any(not e.template_prefix for e in row)
            bar.advance(task, len(batch["prompt"]))
    return LengthStats(rows=split.num_rows, lengths={k: summarize_lengths(v) for k, v in lengths.items()}, **counts)
