"""Tokenization as training sees it, on the tiny tokenizer (which sets the double-BOS and ChatML-EOS traps).

Expected ids are spelled out from the tokenizer's own pieces: BOS id, the templated text tokenized
without special tokens, the EOS id.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aot_cli.data.tokenize import (
    TokenizeSettings,
    encode_example,
    length_stats,
    load_tokenizer,
    tokenize_split,
    tokenizer_fingerprint,
    truncation_counts,
)
from aot_cli.errors import UserError
from aot_cli.tiny_model import train_tokenizer

NO_LIMIT = TokenizeSettings()
PROMPT_TEXT = "<s><|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture
def tok(tiny_model_dir):
    """A fresh tokenizer per test (tests change its chat template)."""
    return load_tokenizer(tiny_model_dir)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tiny_tokenizer_sets_the_double_bos_trap(tok):
    # The premise of the tests below: the template writes BOS and the tokenizer adds one too.
    templated = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert templated.startswith("<s>")
    assert tok(templated)["input_ids"][:2] == [tok.bos_token_id] * 2


def test_string_example_exact_ids(tok):
    enc = encode_example(tok, "What is the capital of France?", "Paris.", NO_LIMIT)
    expected_prompt = ids(tok, PROMPT_TEXT)
    expected = expected_prompt + ids(tok, "Paris.") + [tok.eos_token_id]
    assert enc.input_ids == expected
    assert enc.prompt_len == len(expected_prompt)
    assert enc.input_ids.count(tok.bos_token_id) == 1 and enc.input_ids[0] == tok.bos_token_id
    assert enc.input_ids.count(tok.eos_token_id) == 2  # end of the user turn, end of the answer
    assert enc.input_ids[-1] == tok.eos_token_id  # "<|im_end|>\n": the trailing newline is cut
    assert tok.decode(enc.input_ids[:enc.prompt_len]) == PROMPT_TEXT
    assert tok.decode(enc.input_ids[enc.prompt_len:]) == "Paris.<|im_end|>"
    assert not (enc.truncated_prompt or enc.truncated_completion or enc.eos_added)
    assert enc.prompt_is_generation


def test_messages_equal_strings(tok):
    as_strings = encode_example(tok, "What is the capital of France?", "Paris.", NO_LIMIT)
    as_messages = encode_example(tok, [{"role": "user", "content": "What is the capital of France?"}],
                                 [{"role": "assistant", "content": "Paris."}], NO_LIMIT)
    assert as_messages == as_strings


def test_multi_turn_prompt_boundary(tok):
    prompt = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 1 2 3?"},
    ]
    enc = encode_example(tok, prompt, [{"role": "assistant", "content": "4 5 6"}], NO_LIMIT)
    templated = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert templated.count("<|im_start|>") == 5
    assert enc.input_ids[:enc.prompt_len] == ids(tok, templated)
    assert enc.input_ids[enc.prompt_len:] == ids(tok, "4 5 6") + [tok.eos_token_id]
    assert enc.input_ids.count(tok.bos_token_id) == 1


def test_bos_added_once_when_template_does_not_write_it(tok):
    tok.chat_template = tok.chat_template.replace("{{ bos_token }}", "")
    enc = encode_example(tok, "hi", "yes", NO_LIMIT)
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids.count(tok.bos_token_id) == 1
    assert enc.input_ids[1:enc.prompt_len] == ids(tok, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_no_bos_when_tokenizer_does_not_add_one(tok):
    # Qwen-like: neither the template nor the tokenizer puts a BOS in front.
    from tokenizers import processors

    tok.chat_template = tok.chat_template.replace("{{ bos_token }}", "")
    tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    enc = encode_example(tok, "hi", "yes", NO_LIMIT)
    assert tok.bos_token_id not in enc.input_ids
    assert enc.input_ids[:enc.prompt_len] == ids(tok, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_eos_appended_when_template_has_none(tok):
    tok.chat_template = tok.chat_template.replace("'<|im_end|>' + ", "'<|end|>' + ")
    enc = encode_example(tok, "hi", "yes", NO_LIMIT)
    assert enc.eos_added
    assert enc.input_ids[enc.prompt_len:] == ids(tok, "yes<|end|>\n") + [tok.eos_token_id]
    assert enc.input_ids.count(tok.eos_token_id) == 1


MISTRAL_LIKE = (  # the system prompt is merged into the user turn only when that turn is the last message
    "{% for m in messages %}{% if m.role == 'user' %}[INST] "
    "{% if loop.last and messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "{{ m.content }}[/INST]{% elif m.role == 'assistant' %} {{ m.content | trim }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def test_prompt_is_the_conversation_prefix_not_the_generation_prompt(tok):
    # With an answer after it the user turn is no longer last, so the conversation has no system
    # prompt: aot trains on the conversation as the template renders it whole, and says so.
    tok.chat_template = MISTRAL_LIKE
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    generation = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert generation == "[INST] Be brief.\n\nhi[/INST]"
    enc = encode_example(tok, prompt, "yes", NO_LIMIT)
    whole = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "yes"}])["input_ids"]
    assert enc.input_ids == [tok.bos_token_id] + whole
    assert tok.decode(enc.input_ids[:enc.prompt_len]) == "<s>[INST] hi[/INST]"
    assert tok.decode(enc.input_ids[enc.prompt_len:]) == " yes<|im_end|>"
    assert not enc.prompt_is_generation
    # Without a system prompt the two renderings agree: the space the template writes before the
    # answer is one token with the answer's first word and goes to the completion.
    enc = encode_example(tok, [{"role": "user", "content": "hi"}], "yes", NO_LIMIT)
    assert tok.decode(enc.input_ids[:enc.prompt_len]) == "<s>[INST] hi[/INST]"
    assert enc.prompt_is_generation


def test_short_answer_inside_the_user_message_is_not_found_there(tok):
    # A text search for "Yes" after the common prefix of the two renderings finds it in the user's
    # message; the boundary comes from the template instead.
    tok.chat_template = MISTRAL_LIKE
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reply Yes or No."}]
    enc = encode_example(tok, prompt, "Yes", NO_LIMIT)
    prompt_text = tok.decode(enc.input_ids[:enc.prompt_len])
    completion_text = tok.decode(enc.input_ids[enc.prompt_len:])
    # The template's space before the answer lands on either side, as this tokenizer merges it.
    assert prompt_text.rstrip() == "<s>[INST] Reply Yes or No.[/INST]"
    assert completion_text.lstrip() == "Yes<|im_end|>"


def test_answer_with_surrounding_whitespace(tok):
    # The template trims it: found all the same, the completion is the trimmed answer.
    tok.chat_template = MISTRAL_LIKE
    enc = encode_example(tok, "hi", "  yes \n", NO_LIMIT)
    assert tok.decode(enc.input_ids[enc.prompt_len:]) == " yes<|im_end|>"
    assert enc.prompt_is_generation


def test_token_across_the_boundary_goes_to_the_completion():
    # ChatML keeps the answer's leading spaces; a byte-level BPE trained on such answers merges the
    # header's newline with the first one ("\n " is one token). The ids stay those of the whole
    # conversation; the token goes to the completion, so the prompt holds nothing of the answer and
    # is not the generation prompt.
    tok = train_tokenizer(["<|im_start|>assistant\n  Yes, and\n  more\n  lines"] * 50, vocab_size=400)
    whole = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  Yes"}])
    newline_space = ids(tok, "\n ")
    assert len(newline_space) == 1 and newline_space[0] in whole["input_ids"]
    enc = encode_example(tok, "hi", "  Yes", NO_LIMIT)
    assert enc.input_ids == whole["input_ids"][:-1]  # the "\n" after the final <|im_end|> is cut
    assert tok.decode(enc.input_ids[:enc.prompt_len]) == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant"
    assert tok.decode(enc.input_ids[enc.prompt_len:]) == "\n  Yes<|im_end|>"
    assert not enc.prompt_is_generation


def test_template_that_rewrites_the_answer_is_a_user_error(tok):
    tok.chat_template = ("{% for m in messages %}{% if m.role == 'user' %}U: {{ m.content }}\n"
                         "{% else %}A: {{ m.content | upper }}\n{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}X: {% endif %}")
    with pytest.raises(UserError, match=re.escape("rewrites the answer: it writes 'YES\\n' for 'yes' (DeepSeek-R1")):
        encode_example(tok, "hi", "yes", NO_LIMIT)
    tok.chat_template = "{% for m in messages %}{{ m.content[:3] }}{% endfor %}"  # the sentinel is cut too
    with pytest.raises(UserError, match=re.escape("rewrites the answer (it does not write the answer's text once")):
        encode_example(tok, "hi", "yes", NO_LIMIT)


def test_template_that_renders_the_prompt_by_the_answer_is_a_user_error(tok):
    tok.chat_template = ("{% for m in messages %}{% if m.role == 'user' %}U: {{ m.content }}"
                         "{% if 'x' in messages[-1].content %}!{% endif %}\n{% else %}A: {{ m.content }}\n"
                         "{% endif %}{% endfor %}")
    enc = encode_example(tok, "hi", "yes", NO_LIMIT)
    assert tok.decode(enc.input_ids[:enc.prompt_len]) == "<s>U: hiA:"  # trim_blocks eats the newline after endif
    with pytest.raises(UserError, match=re.escape("before the answer differently for this answer ('!A: x\\n' where "
                                                  "another answer gets 'A: AOTANSWERSENTINEL\\n'")):
        encode_example(tok, "hi", "x", NO_LIMIT)


def test_answer_containing_the_sentinel(tok):
    from aot_cli.data.tokenize import _SENTINEL

    enc = encode_example(tok, f"Say {_SENTINEL}", _SENTINEL, NO_LIMIT)
    assert tok.decode(enc.input_ids[enc.prompt_len:]) == f"{_SENTINEL}<|im_end|>"
    assert tok.decode(enc.input_ids[:enc.prompt_len]).endswith(f"Say {_SENTINEL}<|im_end|>\n<|im_start|>assistant\n")


def test_split_text_is_the_text_view(tok):
    from aot_cli.data.tokenize import split_text

    tok.chat_template = MISTRAL_LIKE
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert split_text(tok, prompt, "yes", tok.eos_token) == ("[INST] hi[/INST] ", "yes<|im_end|>",
                                                             "[INST] Be brief.\n\nhi[/INST]")


def test_non_text_answer_content_is_a_user_error(tok):
    with pytest.raises(UserError, match="field 'completion': the first message's content must be text, got NoneType"):
        encode_example(tok, "hi", [{"role": "assistant", "content": None}], NO_LIMIT)


def test_truncation_prompt_from_the_left_keeps_bos(tok):
    enc_full = encode_example(tok, "What is the capital of France?", "Paris.", NO_LIMIT)
    prompt, completion = enc_full.input_ids[:enc_full.prompt_len], enc_full.input_ids[enc_full.prompt_len:]
    enc = encode_example(tok, "What is the capital of France?", "Paris.", TokenizeSettings(max_prompt_length=6))
    assert enc.prompt_len == 6
    assert enc.input_ids == [tok.bos_token_id] + prompt[-5:] + completion
    assert enc.truncated_prompt and not enc.truncated_completion


def test_truncation_completion_from_the_end_without_eos(tok):
    enc_full = encode_example(tok, "hi", "The quick brown fox jumps over the lazy dog.", NO_LIMIT)
    p = enc_full.prompt_len
    completion = enc_full.input_ids[p:]
    assert len(completion) > 4
    enc = encode_example(tok, "hi", "The quick brown fox jumps over the lazy dog.",
                         TokenizeSettings(max_length=p + 3))
    assert len(enc.input_ids) == p + 3 and enc.prompt_len == p
    assert enc.input_ids[p:] == completion[:3]  # keeps its first tokens, no EOS re-added
    assert enc.input_ids[-1] != tok.eos_token_id
    assert enc.truncated_completion and not enc.truncated_prompt


def test_truncation_prompt_first_then_completion(tok):
    text = "The quick brown fox jumps over the lazy dog."
    enc_full = encode_example(tok, text, text, NO_LIMIT)
    prompt, completion = enc_full.input_ids[:enc_full.prompt_len], enc_full.input_ids[enc_full.prompt_len:]
    enc = encode_example(tok, text, text, TokenizeSettings(max_length=10, max_prompt_length=6))
    assert enc.input_ids == [tok.bos_token_id] + prompt[-5:] + completion[:4]
    assert enc.prompt_len == 6 and enc.truncated_prompt and enc.truncated_completion


def test_truncation_never_drops_the_completion(tok):
    enc_full = encode_example(tok, "What is the capital of France?", "Paris.", NO_LIMIT)
    prompt, completion = enc_full.input_ids[:enc_full.prompt_len], enc_full.input_ids[enc_full.prompt_len:]
    enc = encode_example(tok, "What is the capital of France?", "Paris.", TokenizeSettings(max_length=4))
    assert enc.input_ids == [tok.bos_token_id] + prompt[-2:] + completion[:1]
    assert enc.prompt_len == 3
    enc = encode_example(tok, "What is the capital of France?", "Paris.", TokenizeSettings(max_length=2))
    assert enc.input_ids == [tok.bos_token_id, completion[0]] and enc.prompt_len == 1


def test_impossible_lengths_are_user_errors():
    with pytest.raises(UserError, match="max_length 1 leaves no room"):
        TokenizeSettings(max_length=1)
    with pytest.raises(UserError, match="max_prompt_length must be at least 1"):
        TokenizeSettings(max_prompt_length=0)


def test_bad_field_type_is_a_user_error(tok):
    with pytest.raises(UserError, match="field 'completion': expected a string or a list of messages"):
        encode_example(tok, "hi", 3, NO_LIMIT)


def test_load_tokenizer_without_chat_template(tiny_model_dir, tmp_path):
    bare = tmp_path / "bare"
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(bare)
    with pytest.raises(UserError, match="no chat template; give one with chat_template"):
        load_tokenizer(bare)
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
                        "{% if add_generation_prompt %}<assistant>{% endif %}")
    tokenizer = load_tokenizer(bare, template)
    enc = encode_example(tokenizer, "hi", "yes", NO_LIMIT)
    assert tokenizer.decode(enc.input_ids) == "<s><user>hi<|im_end|><assistant>yes<|im_end|>"
    with pytest.raises(UserError, match="chat template file not found"):
        load_tokenizer(bare, tmp_path / "missing.jinja")


def test_load_tokenizer_sets_pad_to_eos(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.pad_token == "<pad>"  # an existing pad token is kept
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "nopad")
    assert load_tokenizer(tmp_path / "nopad").pad_token == tokenizer.eos_token


def test_load_tokenizer_missing_path(tmp_path):
    with pytest.raises(UserError, match="nowhere: no such directory \\(give a model directory or a hub id"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: cannot load a tokenizer"):
        load_tokenizer(tmp_path / "empty")


@pytest.fixture
def paired_split():
    import datasets

    return datasets.Dataset.from_dict({
        "prompt": ["hi", "What is the capital of France?", "hi"],
        "chosen": ["yes", "Paris.", "The quick brown fox jumps over the lazy dog."],
        "rejected": ["no", "The quick brown fox jumps over the lazy dog.", "no"],
    })


def test_tokenize_split_paired_columns_match_encode_example(tok, paired_split):
    settings = TokenizeSettings(max_length=14)
    out = tokenize_split(paired_split, tok, settings, paired=True)
    assert out.column_names == ["chosen_input_ids", "chosen_prompt_len", "rejected_input_ids",
                                "rejected_prompt_len", "truncated_prompt", "truncated_completion"]
    for i, row in enumerate(paired_split):
        for side in ("chosen", "rejected"):
            enc = encode_example(tok, row["prompt"], row[side], settings)
            assert out[i][f"{side}_input_ids"] == enc.input_ids
            assert out[i][f"{side}_prompt_len"] == enc.prompt_len
    # Row 2 (a 16-token prompt) has its prompt cut to 13 and both completions to 1 token; row 3
    # keeps its 10-token prompt and cuts only the long chosen answer.
    assert out["truncated_prompt"][:] == [False, True, False]
    assert out["truncated_completion"][:] == [False, True, True]
    assert truncation_counts(out) == {"rows": 3, "prompt": 1, "completion": 2, "any": 2}


def test_tokenize_split_unpaired_keeps_label(tok):
    import datasets

    split = datasets.Dataset.from_dict({"prompt": ["hi", "hi"], "completion": ["yes", "no"], "label": [True, False]})
    out = tokenize_split(split, tok, NO_LIMIT, paired=False)
    assert out.column_names == ["input_ids", "prompt_len", "truncated_prompt", "truncated_completion", "label"]
    assert out["label"][:] == [True, False]
    assert out[1]["input_ids"] == encode_example(tok, "hi", "no", NO_LIMIT).input_ids


def test_tokenize_split_cache_hit_and_invalidation(tok, paired_split, monkeypatch):
    from aot_cli.cache import cache_dir
    from aot_cli.data import tokenize as module

    calls = []
    real = module.encode_many
    monkeypatch.setattr(module, "encode_many", lambda *a, **k: calls.append(1) or real(*a, **k))
    settings = TokenizeSettings(max_length=64)
    first = tokenize_split(paired_split, tok, settings, paired=True, fingerprint="uf/train")
    assert len(calls) == 2  # one batch, chosen and rejected
    second = tokenize_split(paired_split, tok, settings, paired=True, fingerprint="uf/train")
    assert len(calls) == 2 and second[:] == first[:]
    entries = set(p.name for p in cache_dir("tokenized").iterdir())
    tokenize_split(paired_split, tok, TokenizeSettings(max_length=32), paired=True, fingerprint="uf/train")
    assert len(calls) == 4
    tok.chat_template = tok.chat_template.replace("{{ bos_token }}", "")
    changed = tokenize_split(paired_split, tok, settings, paired=True, fingerprint="uf/train")
    assert len(calls) == 6  # a new template is a new key (here the ids agree: BOS is re-added once)
    assert changed[:] == first[:]
    tokenize_split(paired_split, tok, settings, paired=True, fingerprint="uf/test")
    assert len(calls) == 8
    assert len(set(p.name for p in cache_dir("tokenized").iterdir()) - entries) == 3
    assert not [p for p in cache_dir("tokenized").iterdir() if p.name.startswith(".")]


def test_tokenize_split_two_writers_and_a_killed_one(tok, paired_split, monkeypatch):
    """A killed writer's temporary is removed by the next run of the same key; when another process
    publishes the same entry between our check and our rename, ours is dropped and theirs is used."""
    import shutil

    from aot_cli.data import tokenize as module

    settings = TokenizeSettings(max_length=48)
    first = tokenize_split(paired_split, tok, settings, paired=True, fingerprint="race/train")[:]
    entry = Path(tokenize_split(paired_split, tok, settings, paired=True,
                                fingerprint="race/train").cache_files[0]["filename"]).parent
    saved = entry.with_name("saved")
    shutil.copytree(entry, saved)
    shutil.rmtree(entry)
    stale = entry.with_name(f".{entry.name}.tmp-999999999-0123abcd")   # no process has that pid
    stale.mkdir()
    real_replace = module.os.replace

    def other_process_wins(src, dst):
        real_replace(saved, dst)                 # theirs lands first: our rename onto it fails
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(module.os, "replace", other_process_wins)
    again = tokenize_split(paired_split, tok, settings, paired=True, fingerprint="race/train")
    assert again[:] == first and not stale.exists()
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(f".{entry.name}")] == []


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other rows"])
def test_tokenize_split_recomputes_a_damaged_cache_entry(tok, paired_split, monkeypatch, capsys, damage):
    """A cache entry cut short (a kill, a full disk), overwritten, or holding another split is
    removed with a warning and computed again, never read as if it were right."""
    from aot_cli.data import tokenize as module

    calls = []
    real = module.encode_many
    monkeypatch.setattr(module, "encode_many", lambda *a, **k: calls.append(1) or real(*a, **k))
    settings = TokenizeSettings(max_length=48)
    first = tokenize_split(paired_split, tok, settings, paired=True, fingerprint=f"damaged-{damage}")
    expected, arrow = first[:], Path(first.cache_files[0]["filename"])  # (first maps the file: read it now)
    if damage == "truncated":
        arrow.write_bytes(arrow.read_bytes()[:len(arrow.read_bytes()) // 2])
    elif damage == "garbage":
        arrow.write_bytes(b"\0" * 100)
    else:
        other = tokenize_split(paired_split.select([0]), tok, settings, paired=True, fingerprint="damaged-one-row")
        arrow.write_bytes(Path(other.cache_files[0]["filename"]).read_bytes())
    calls.clear()
    capsys.readouterr()
    again = tokenize_split(paired_split, tok, settings, paired=True, fingerprint=f"damaged-{damage}")
    assert len(calls) == 2 and again[:] == expected
    warning = "".join(capsys.readouterr().err.split())
    assert "".join(f"warning: tokenized cache entry {arrow.parent} is damaged (".split()) in warning
    assert "tokenizingagain" in warning
    if damage == "other rows":
        assert "otherrowsorcolumns" in warning


def test_tokenize_split_error_names_the_row(tok):
    import datasets

    split = datasets.Dataset.from_dict({"prompt": ["hi", "hi"], "chosen": ["yes", "ok"], "rejected": ["no", "no"]})
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(UserError, match=r"row 1 \(chosen\): the chat template failed.*roles must alternate"):
        tokenize_split(split, tok, NO_LIMIT, paired=True)


def test_tokenizer_fingerprint(tiny_model_dir, tok):
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(load_tokenizer(tiny_model_dir))
    before = tokenizer_fingerprint(tok)
    tok.chat_template += " "
    assert tokenizer_fingerprint(tok) != before


def test_length_stats(tok, paired_split):
    stats = length_stats(paired_split, tok, TokenizeSettings(max_length=14), paired=True)
    prompt = [encode_example(tok, p, "x", NO_LIMIT).prompt_len for p in paired_split["prompt"]]
    assert prompt == [10, 16, 10]
    chosen = [len(ids(tok, c)) + 1 for c in paired_split["chosen"]]
    rejected = [len(ids(tok, r)) + 1 for r in paired_split["rejected"]]
    # Nearest rank on 3 values: p50 is the 2nd smallest, p95 and max the largest.
    assert stats.lengths["prompt"] == {"p50": 10, "p95": 16, "max": 16}
    assert stats.lengths["chosen"] == {"p50": sorted(chosen)[1], "p95": max(chosen), "max": max(chosen)}
    assert stats.lengths["rejected"] == {"p50": sorted(rejected)[1], "p95": max(rejected), "max": max(rejected)}
    totals = sorted(p + max(c, r) for p, c, r in zip(prompt, chosen, rejected))
    assert stats.lengths["total"] == {"p50": totals[1], "p95": totals[2], "max": totals[2]}
    assert stats.rows == 3 and stats.truncated == sum(t > 14 for t in totals) == 2
    assert stats.prompt_too_long == 1  # 16 prompt tokens + 1 completion token > 14
    assert (stats.double_bos, stats.eos_added, stats.missing_eos, stats.prompt_not_generation) == (0, 0, 0, 0)
    tight = length_stats(paired_split, tok, TokenizeSettings(max_length=11, max_prompt_length=12), paired=True)
    assert tight.truncated == 3 and tight.prompt_too_long == 1  # the 16-token prompt, cut to 12, leaves no room


def test_length_stats_flags_template_problems(tok, paired_split):
    tok.chat_template = "{{ bos_token }}" + tok.chat_template.replace("'<|im_end|>' + ", "")
    stats = length_stats(paired_split, tok, NO_LIMIT, paired=True)
    assert (stats.double_bos, stats.eos_added, stats.missing_eos, stats.prompt_not_generation) == (3, 3, 0, 0)


def test_percentile_nearest_rank():
    from aot_cli.data.tokenize import _percentile

    values = list(range(1, 21))  # 1..20
    assert [_percentile(values, q) for q in (50, 95, 100)] == [10, 19, 20]
    assert _percentile([], 50) == 0 and _percentile([7], 95) == 7
