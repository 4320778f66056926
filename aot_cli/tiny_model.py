"""Build a tiny random-init causal LM with a freshly trained tokenizer and a real chat template.

No hub access is needed: the tokenizer is a byte-level BPE trained on the spot, so any text encodes.
It behaves like a Llama-family tokenizer (BOS added by the post-processor) with a ChatML template that
also writes ``{{ bos_token }}`` and ends each turn with the EOS token ``<|im_end|>``: the same traps
real models set (double BOS, EOS inside the template), so the data pipeline is tested against them.

Used by the tests (session fixture) and by ``make demo``:
``python -m aot_cli.tiny_model OUT_DIR [--corpus FILE.jsonl ...] [--hidden 64 --layers 2 --vocab 1024]``.
The tokenizer learns from the given JSON/JSONL files, or without ``--corpus`` from the project's
generated preference set (``aot_cli.tiny_data``), so nothing outside the project is needed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from aot_cli.console import quiet_libraries

from aot_cli.tiny_data import corpus as generated_corpus

BOS, EOS, PAD, UNK = "<s>", "<|im_end|>", "<pad>", "<unk>"
IM_START = "<|im_start|>"

_BASE_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Answer the question clearly and politely.",
    "Here is a short answer: yes. Here is a long answer: it depends on the details.",
    "def add(a, b):\n    return a + b\n",
    "What is the capital of France? The capital of France is Paris.",
    "I cannot help with that request, but I can suggest something safer instead.",
    "1 2 3 4 5 6 7 8 9 10 100 1000",
    "system\nuser\nassistant\n",  # the ChatML role names: one token each, as in real chat tokenizers
]


def chat_template() -> str:
    """The ChatML template shipped with the package."""
    return resources.files("aot_cli").joinpath("templates/chatml.jinja").read_text().strip()


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer (Llama-like: BOS prepended) with the ChatML template."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS, PAD, IM_START],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) + _BASE_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[IM_START], model_max_length=2048,
    )
    fast.chat_template = chat_template()
    return fast


def build_tiny_model(out_dir: str | Path, *, corpus: Iterable[str] = (), hidden: int = 64,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = 1024,
                     max_positions: int = 1024, seed: int = 0) -> Path:
    """Write a tiny Llama (safetensors) and its tokenizer to `out_dir`; deterministic for a seed."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(corpus, vocab)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _corpus_from(paths: list[str]) -> list[str]:
    """Every string value in JSON/JSONL files, so the tokenizer knows the demo data's words."""
    texts: list[str] = []

    def walk(value):
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for path in paths:
        raw = Path(path).read_text(encoding="utf-8")
        if path.endswith(".jsonl"):
            for line in raw.splitlines():
                if line.strip():
                    walk(json.loads(line))
        else:
            walk(json.loads(raw))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--corpus", nargs="*", default=[],
                        help="JSON/JSONL files to train the tokenizer on (default: a set from aot_cli.tiny_data)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet_libraries()
    corpus = _corpus_from(args.corpus) if args.corpus else generated_corpus()
    build_tiny_model(args.out_dir, corpus=corpus, hidden=args.hidden,
                     layers=args.layers, vocab=args.vocab, seed=args.seed)
    print(args.out_dir)


if __name__ == "__main__":
    main()
