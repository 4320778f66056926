"""Build what a benchmark run trains on, locally and deterministically: a random-init Llama of a
given shape, its tokenizer, and a synthetic paired preference dataset saved as an aot dataset
artifact (the same directory `aot prepare` writes, so both tools read identical rows).

Rows are conversational (prompt, chosen, rejected as message lists) so that TRL and `aot train`
both apply the same ChatML template and see the same tokens. Words are pseudo-words the tokenizer
was trained on, so one word is about one token and lengths are controlled in tokens; every
templated prompt+completion fits in ``max_length``, so neither tool truncates (they truncate
differently) and both process exactly the same tokens.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark shape: model, sequence length and micro-batch (pairs per micro-batch)."""

    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_length: int
    batch: int


CONFIGS = {
    # Harness smoke test only: seconds, not a measurement.
    "smoke": BenchConfig("smoke", hidden=32, layers=1, heads=2, intermediate=64, vocab=512, max_length=64, batch=2),
    "tiny": BenchConfig("tiny", hidden=64, layers=2, heads=4, intermediate=128, vocab=4000, max_length=256, batch=8),
    "small": BenchConfig("small", hidden=512, layers=8, heads=8, intermediate=1376, vocab=32000, max_length=512,
                         batch=4),
    # One large GPU (benchmarks/gpu_check.py): 468 M parameters, shaped like the 0.5B class of models.
    "0.5b": BenchConfig("0.5b", hidden=1024, layers=24, heads=16, intermediate=4096, vocab=32000, max_length=1024,
                        batch=8),
}

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 6))))
    return sorted(words)


def bench_model(out: Path, cfg: BenchConfig, seed: int = 0) -> Path:
    """``OUT/model-NAME``, built once and reused by every later run into OUT (the same random init),
    with the libraries' progress bars off (a benchmark's log shows its own lines only)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    model = out / f"model-{cfg.name}"
    if not (model / "config.json").is_file():
        model.mkdir(parents=True, exist_ok=True)
        build_model(model, cfg, seed=seed)
    return model


def build_model(out_dir: Path, cfg: BenchConfig, seed: int = 0) -> Path:
    """A random-init LlamaForCausalLM of `cfg`'s shape (fp32, untied head, safetensors) and a BPE
    tokenizer with the ChatML template. The model's vocabulary is ``cfg.vocab`` even when the BPE
    learns fewer tokens, so the head costs what the shape says."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from aot_cli.tiny_model import train_tokenizer

    words = _words(min(cfg.vocab // 8, 3000), seed)  # few enough that BPE learns each as one token
    corpus = [" ".join(words[i:i + 16]) for i in range(0, len(words), 16)] * 2
    tokenizer = train_tokenizer(corpus, cfg.vocab)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=max(cfg.vocab, len(tokenizer)), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=max(2048, cfg.max_length), tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "words.txt").write_text("\n".join(words) + "\n")
    return out_dir


def conversation_length(tokenizer, messages: list[dict]) -> int:
    """Tokens of a conversation (prompt and completion messages) under the tokenizer's chat template."""
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def _fit(tokenizer, prompt: list[str], completion: list[str], max_length: int) -> str:
    """Drop words from the end of `completion` until the templated conversation fits."""
    user = {"role": "user", "content": " ".join(prompt)}
    while True:
        text = " ".join(completion)
        if len(completion) <= 1 or conversation_length(
                tokenizer, [user, {"role": "assistant", "content": text}]) <= max_length:
            return text
        completion = completion[: max(1, len(completion) - 4)]


def build_dataset(out_dir: Path, model_dir: Path, cfg: BenchConfig, n_train: int, seed: int = 0) -> Path:
    """A paired, conversational aot dataset artifact with `n_train` training rows (and 4 test rows).

    Lengths in tokens: prompt ~ U[L/16, L/4]; chosen and rejected each ~ U[L/16, L - prompt - 16],
    drawn independently, so a micro-batch's rows differ in length as real preference data does
    (the padding each tool adds is part of what is measured)."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from aot_cli.artifacts.store import fingerprint, write_manifest

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words = (model_dir / "words.txt").read_text().split()
    rng = random.Random(seed)
    length = cfg.max_length

    def row() -> dict:
        n_prompt = rng.randint(length // 16, length // 4)
        prompt = [rng.choice(words) for _ in range(n_prompt)]
        room = max(length // 16, length - n_prompt - 16)
        pair = []
        for _ in range(2):
            completion = [rng.choice(words) for _ in range(rng.randint(length // 16, room))]
            pair.append([{"role": "assistant", "content": _fit(tokenizer, prompt, completion, length)}])
        return {"prompt": [{"role": "user", "content": " ".join(prompt)}], "chosen": pair[0], "rejected": pair[1]}

    rows = {"train": [row() for _ in range(n_train)], "test": [row() for _ in range(4)]}
    DatasetDict({split: Dataset.from_list(r) for split, r in rows.items()}).save_to_disk(str(out_dir))
    write_manifest(
        out_dir, kind="dataset", config={"benchmark": asdict(cfg), "n_train": n_train, "seed": seed},
        summary={
            "paired": True, "format": "conversational",
            "counts": {split: len(r) for split, r in rows.items()}, "dropped": {},
            "fingerprint": fingerprint(rows), "source": f"synthetic benchmark data ({cfg.name})",
            "operations": [],
        },
    )
    return out_dir
