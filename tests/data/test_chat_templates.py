"""The prompt/completion split on nine real chat templates (read in place from ../shared/fixtures).

Each template gets a small tokenizer trained on the spot that knows that model's special tokens
(tokens.json: BOS, EOS, role and turn markers, which of them eat the whitespace after them, whether
the post-processor adds BOS) and splits words the way that model's family does: byte-level BPE with
the Llama-3 / Qwen2 split pattern (GPT-2's for SmolLM2), or SentencePiece-style ``▁`` words.

Two independent oracles for every row: the ids are exactly what ``apply_chat_template`` gives for
the whole conversation (one BOS at most, cut after a final EOS that only whitespace follows, EOS
appended when the template has none), and the prompt ids are exactly the tokens of the text before
the answer, spelled out here per template from its generation prompt. Together: nothing of the
answer in the prompt, nothing of the prompt in the completion.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from aot_cli.data.tokenize import TokenizeSettings, encode_example, encode_many, length_stats
from aot_cli.errors import UserError

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "chat_templates"
pytestmark = pytest.mark.skipif(not (FIXTURES / "tokens.json").is_file(),
                                reason=f"{FIXTURES} is absent (real chat templates are read in place, never copied)")

NO_LIMIT = TokenizeSettings()
TEMPLATES = sorted(p.stem for p in FIXTURES.glob("*.jinja"))

# The Llama-3 / Qwen2 pre-tokenizer split (newlines apart from the word after them).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SENTENCEPIECE = {"mistral-7b-instruct-v0.3": "first", "zephyr-7b-beta": "first",
                 "phi-3-mini-4k-instruct": "first", "gemma-2-9b-it": "never"}  # Metaspace prepend scheme
GPT2_SPLIT = {"smollm2-1.7b-instruct"}

CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Reply Yes or No. Yes. No. Is the sky green? Be brief. You are a pirate.",
    "Hello. Hi there, how can I help? Thank you, that helps.",
    "Let me think about it. The answer is easy.",
]


def spec_of(name: str) -> dict:
    return json.loads((FIXTURES / "tokens.json").read_text(encoding="utf-8"))[name]


@cache
def _trained(name: str) -> str:
    """The tokenizer of `name` as JSON (trained once per session; each test gets a fresh object)."""
    spec = spec_of(name)
    rstrip = set(spec.get("rstrip_tokens", []))
    specials = [spec[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token") if spec[k]]
    specials += spec["additional_special_tokens"]
    specials = [AddedToken(t, special=True, normalized=False, rstrip=t in rstrip) for t in dict.fromkeys(specials)]
    if name in SENTENCEPIECE:
        template_chars = sorted(set((FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")) | set("".join(CORPUS)))
        tok = Tokenizer(models.BPE(unk_token=spec["unk_token"]))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=SENTENCEPIECE[name])
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=SENTENCEPIECE[name])
        alphabet = [c for c in template_chars if c != " "] + ["▁"]
    else:
        tok = Tokenizer(models.BPE())
        split = [] if name in GPT2_SPLIT else [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")]
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            split + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=name in GPT2_SPLIT)])
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec["added_non_special_tokens"]])
    if spec["adds_bos"]:
        bos = spec["bos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return tok.to_str()


def tokenizer_for(name: str) -> PreTrainedTokenizerFast:
    """A fresh tokenizer with `name`'s special tokens and its real chat template."""
    spec = spec_of(name)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained(name)),
                                  **{k: spec[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")})
    tok.chat_template = (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")
    return tok


def whole_ids(tok: PreTrainedTokenizerFast, name: str, conversation: list[dict]) -> list[int]:
    """What training must see: ``apply_chat_template``'s ids for the whole conversation, with one BOS
    in front when the tokenizer adds one and the template does not write it, cut right after a final
    EOS that only whitespace follows, or with EOS appended when the template does not end with it."""
    ids = tok.apply_chat_template(conversation)["input_ids"]
    end = len(ids)
    while ids[end - 1] != tok.eos_token_id and not tok.decode(ids[end - 1:end]).strip():
        end -= 1
    ids = ids[:end] if ids[end - 1] == tok.eos_token_id else ids + [tok.eos_token_id]
    if spec_of(name)["adds_bos"] and ids[0] != tok.bos_token_id:
        ids = [tok.bos_token_id] + ids
    return ids


def prefix_text(tok: PreTrainedTokenizerFast, name: str, prompt: list[dict]) -> str:
    """The text before the answer, from the generation prompt and what each template does to it."""
    generation = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    if name == "qwen3-0.6b":  # an empty think block before the last answer
        return generation + "<think>\n\n</think>\n\n"
    if name == "deepseek-r1-distill-qwen-32b":  # the generation prompt opens a think block, answers do not
        return generation.removesuffix("<think>\n")
    if name == "mistral-7b-instruct-v0.3" and prompt[0]["role"] == "system":
        # The system prompt goes into the user turn only when that turn is the last message.
        return tok.apply_chat_template(prompt[1:], add_generation_prompt=True, tokenize=False)
    return generation


def check_split(tok, name: str, prompt, completion, enc) -> None:
    """The two oracles of the module docstring, and the end-of-turn marker inside the completion."""
    prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    completion_msgs = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    assert enc.input_ids == whole_ids(tok, name, prompt_msgs + completion_msgs)
    expected_prompt = tok(prefix_text(tok, name, prompt_msgs), add_special_tokens=False)["input_ids"]
    if spec_of(name)["adds_bos"] and expected_prompt[0] != tok.bos_token_id:
        expected_prompt = [tok.bos_token_id] + expected_prompt
    assert enc.input_ids[:enc.prompt_len] == expected_prompt
    assert enc.input_ids[:2] != [tok.bos_token_id] * 2
    end_of_turn = tok.convert_tokens_to_ids(spec_of(name)["end_of_turn"])
    assert end_of_turn in enc.input_ids[enc.prompt_len:]
    assert enc.input_ids[-1] == tok.eos_token_id and enc.input_ids.count(tok.eos_token_id) == (
        enc.input_ids[:enc.prompt_len].count(tok.eos_token_id) + 1)


def differs(name: str, prompt: list[dict]) -> bool:
    """Whether `name` trains on a prompt other than its generation prompt for this prompt."""
    return name in ("qwen3-0.6b", "deepseek-r1-distill-qwen-32b") or (
        name == "mistral-7b-instruct-v0.3" and prompt[0]["role"] == "system")


QUESTION = "What is the capital of France?"


def test_the_fixtures_are_the_nine_templates():
    assert TEMPLATES == ["deepseek-r1-distill-qwen-32b", "gemma-2-9b-it", "llama-3.1-8b-instruct",
                         "mistral-7b-instruct-v0.3", "phi-3-mini-4k-instruct", "qwen2.5-7b-instruct",
                         "qwen3-0.6b", "smollm2-1.7b-instruct", "zephyr-7b-beta"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_string_and_message_rows(name):
    tok = tokenizer_for(name)
    enc = encode_example(tok, QUESTION, "Paris.", NO_LIMIT)
    check_split(tok, name, QUESTION, "Paris.", enc)
    assert enc.prompt_is_generation == (not differs(name, [{"role": "user"}]))
    assert "Paris" not in tok.decode(enc.input_ids[:enc.prompt_len])
    assert tok.decode(enc.input_ids[enc.prompt_len:]).strip().startswith("Paris.")
    as_messages = encode_example(tok, [{"role": "user", "content": QUESTION}],
                                 [{"role": "assistant", "content": "Paris."}], NO_LIMIT)
    assert as_messages == enc


@pytest.mark.parametrize("name", TEMPLATES)
def test_multi_turn_prompt(name):
    tok = tokenizer_for(name)
    prompt = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi there, how can I help?"},
              {"role": "user", "content": QUESTION}]
    enc = encode_example(tok, prompt, "Paris.", NO_LIMIT)
    check_split(tok, name, prompt, "Paris.", enc)
    assert "how can I help" in tok.decode(enc.input_ids[:enc.prompt_len])
    assert "how can I help" not in tok.decode(enc.input_ids[enc.prompt_len:])


@pytest.mark.parametrize("name", TEMPLATES)
def test_answer_with_surrounding_whitespace(name):
    # Llama, Mistral and Gemma trim it, the others keep it: the answer is found either way.
    tok = tokenizer_for(name)
    enc = encode_example(tok, QUESTION, "  Paris. \n", NO_LIMIT)
    check_split(tok, name, QUESTION, "  Paris. \n", enc)
    completion = tok.decode(enc.input_ids[enc.prompt_len:])
    trims = name in ("llama-3.1-8b-instruct", "mistral-7b-instruct-v0.3", "gemma-2-9b-it")
    assert ("Paris. \n" in completion) != trims


@pytest.mark.parametrize("name", TEMPLATES)
def test_short_answer_that_also_occurs_in_the_user_message(name):
    tok = tokenizer_for(name)
    prompt = [{"role": "user", "content": "Reply Yes or No. Is the sky green?"}]
    enc = encode_example(tok, prompt, "No.", NO_LIMIT)
    check_split(tok, name, prompt, "No.", enc)
    assert "Reply Yes or No. Is the sky green?" in tok.decode(enc.input_ids[:enc.prompt_len])
    assert "Yes" not in tok.decode(enc.input_ids[enc.prompt_len:])


@pytest.mark.parametrize("name", [n for n in TEMPLATES if n != "gemma-2-9b-it"])
def test_system_prompt(name):
    tok = tokenizer_for(name)
    prompt = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": QUESTION}]
    enc = encode_example(tok, prompt, "Paris.", NO_LIMIT)
    check_split(tok, name, prompt, "Paris.", enc)
    assert enc.prompt_is_generation == (not differs(name, prompt))
    # Mistral v0.3 drops it from a conversation that ends in an answer: trained as rendered, and flagged.
    assert ("pirate" in tok.decode(enc.input_ids[:enc.prompt_len])) == (name != "mistral-7b-instruct-v0.3")


def test_mistral_rows_with_a_system_prompt_are_counted():
    import datasets

    tok = tokenizer_for("mistral-7b-instruct-v0.3")
    system = {"role": "system", "content": "Be brief."}
    split = datasets.Dataset.from_dict({
        "prompt": [[system, {"role": "user", "content": "Reply Yes or No."}], [{"role": "user", "content": "Hi"}]],
        "chosen": [[{"role": "assistant", "content": "Yes"}], [{"role": "assistant", "content": "Hello."}]],
        "rejected": [[{"role": "assistant", "content": "No"}], [{"role": "assistant", "content": "No."}]],
    })
    stats = length_stats(split, tok, NO_LIMIT, paired=True)
    assert stats.prompt_not_generation == 1 and stats.prompt_not_generation == 1
    enc = encode_example(tok, split[0]["prompt"], "Yes", NO_LIMIT)
    assert tok.decode(enc.input_ids[enc.prompt_len:]) == "Yes</s>"  # not "Yes or No.[/INST] Yes</s>"


def test_gemma_system_role_is_a_one_line_user_error_naming_the_row():
    tok = tokenizer_for("gemma-2-9b-it")
    prompts = [QUESTION, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]]
    with pytest.raises(UserError) as caught:
        encode_many(tok, prompts, ["Paris.", "Paris."], NO_LIMIT, first_row=10, field="chosen")
    assert str(caught.value) == ("row 12 (chosen): the chat template failed on this conversation "
                                 "(System role not supported)")


@pytest.mark.parametrize("name, fragment", [
    ("deepseek-r1-distill-qwen-32b", ("rewrites the answer: it writes 'The answer is easy.<｜end▁of▁sentence｜>' "
                                      "for '<think>Let me think about it.</think>The...")),
    ("qwen3-0.6b", ("writes the conversation before the answer differently for this answer ('Let me think about "
                    "it.\\n</think>\\n\\nThe ans...' where another answer gets '\\n</think>\\n\\nAOTANSWERSENTINEL")),
])
def test_reasoning_in_the_answer_is_a_one_line_user_error_naming_the_row(name, fragment):
    tok = tokenizer_for(name)
    answers = ["Paris.", "<think>Let me think about it.</think>The answer is easy."]
    with pytest.raises(UserError) as caught:
        encode_many(tok, [QUESTION, QUESTION], answers, NO_LIMIT, field="chosen")
    message = str(caught.value)
    assert message.startswith("row 2 (chosen): the chat template ") and "\n" not in message
    assert fragment in message
