"""Batched chat generation for AlpacaEval: the model's own chat template, batches of similar length,
resumable, with its throughput measured.

Each instruction becomes ``[{"role": "user", "content": instruction}]`` templated with the
generation prompt (the assistant header), exactly as the model will be used. The templated prompts
are sorted by length, longest first, before being cut into batches of ``--batch-size``: a batch then
pads its prompts to about their own length instead of to the longest of a random mix, and a batch
too large for memory fails at the start rather than an hour in. Each answer goes back to its
instruction's place, so the outputs keep the order of the instructions. Left padding is masked, so
a greedy answer does not depend on the batch it was in: sorting changes the time, not the answers
(tests/eval/test_generate.py checks it).

Outputs are written to ``model_outputs.json`` after every batch (atomic replace), so an interrupted
run resumes where it stopped: instructions already answered there are skipped. The batches are cut
from all the instructions, answered or not, so a resumed run (same batch size) has the same batches,
seeds and answers as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aot_cli.console import info, progress
from aot_cli.errors import UserError
from aot_cli.jsonl import describe_error, read_text

MODEL_OUTPUTS = "model_outputs.json"
BATCH_ORDER = {True: "longest prompt first", False: "instruction order"}

# (row indices, their prompts' token ids, batch index) -> (answers, tokens generated for each)
Answerer = Callable[[list[int], list[list[int]], int], tuple[list[str], list[int]]]


@dataclass
class Throughput:
    """Generated tokens per second of wall time over this run's batches (a resumed run counts only
    what it generated itself; model loading is not included)."""

    backend: str
    by_length: bool
    answers: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    def record(self) -> dict:
        """What results.json keeps under settings.generation."""
        rate = self.tokens_per_s
        return {"backend": self.backend, "batch_order": BATCH_ORDER[self.by_length], "answers_generated": self.answers,
                "generated_tokens": self.tokens, "seconds": round(self.seconds, 3),
                "tokens_per_s": None if rate is None else round(rate, 2)}


def read_outputs(path: Path) -> list[dict]:
    """The answers already in `path` ([] when there is none): a JSON list of {instruction, output,
    generator, dataset}. A file that is not that (edited by hand, cut short on a full disk) is a
    UserError that says how to start over, not a traceback."""
    if not path.is_file():
        return []
    again = f"delete {path} to generate the answers again"
    try:
        rows = json.loads(read_text(path))
    except ValueError as exc:
        raise UserError(f"{path}:{getattr(exc, 'lineno', 1)}: {describe_error(exc)}; {again}") from None
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get("instruction"), str) and isinstance(r.get("output"), str)
            for r in rows):
        raise UserError(f"{path}: expected a JSON list of {{instruction, output, generator}} objects; {again}")
    return rows


def write_outputs(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def prompt_ids(tokenizer: Any, instruction: str) -> list[int]:
    """Token ids of the templated single-turn conversation, ending with the assistant header."""
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                            add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def batch_plan(lengths: list[int], batch_size: int, by_length: bool = True) -> list[list[int]]:
    """Row indices of each batch: sorted by length, longest first (ties keep their order), or in the
    given order when `by_length` is false."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if by_length else list(range(len(lengths)))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def generated_lengths(new_tokens: torch.Tensor, eos_id: int) -> list[int]:
    """Tokens each row of ``generate``'s new part really generated: up to and including its first
    `eos_id` (what follows is padding added after the row stopped), or every position when it never
    stopped."""
    stops = new_tokens == eos_id
    first = stops.int().argmax(dim=1)
    return torch.where(stops.any(dim=1), first + 1, new_tokens.shape[1]).tolist()


def generate_batch(model: Any, tokenizer: Any, prompts: list[list[int]], *, max_new_tokens: int,
                   temperature: float) -> tuple[list[str], list[int]]:
    """Answers to the token-id `prompts` (a left-padded batch; sampling when temperature > 0, else
    greedy) and the number of tokens generated for each."""
    width = max(len(x) for x in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts], device=model.device)
    sampling = ({"do_sample": True, "temperature": temperature, "top_p": 1.0} if temperature > 0
                else {"do_sample": False})
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **sampling)
    new = out[:, width:]
    texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    return texts, generated_lengths(new, tokenizer.eos_token_id)


def in_order(done: dict[str, dict], rows: list[dict]) -> list[dict]:
    """The answers in `done` (by instruction) in the order of `rows`, then any others it holds (answers
    of an earlier run on more instructions are kept)."""
    ordered = {r["instruction"]: done[r["instruction"]] for r in rows if r["instruction"] in done}
    return list(ordered.values()) + [a for key, a in done.items() if key not in ordered]


def answer_rows(answer: Answerer, tokenizer: Any, rows: list[dict], path: Path, *, generator: str,
                batch_size: int, throughput: Throughput) -> list[dict]:
    """Answer every row of `rows` ({instruction, dataset}) not yet in `path` with `answer`, batch by
    batch of :func:`batch_plan`; returns all outputs in the order of `rows` and adds this run's
    batches to `throughput`."""
    done = {r["instruction"]: r for r in read_outputs(path)}
    prompts = [prompt_ids(tokenizer, r["instruction"]) for r in rows]
    plan = batch_plan([len(p) for p in prompts], batch_size, throughput.by_length)
    batches = [(i, [k for k in batch if rows[k]["instruction"] not in done]) for i, batch in enumerate(plan)]
    batches = [(i, batch) for i, batch in batches if batch]
    if batches:
        with progress() as bar:
            task = bar.add_task("generating", total=sum(len(batch) for _, batch in batches))
            for i, batch in batches:
                start = time.perf_counter()
                answers, tokens = answer(batch, [prompts[k] for k in batch], i)
                throughput.seconds += time.perf_counter() - start
                throughput.answers += len(batch)
                throughput.tokens += sum(tokens)
                for k, text in zip(batch, answers):
                    done[rows[k]["instruction"]] = {"instruction": rows[k]["instruction"], "output": text,
                                                    "generator": generator, "dataset": rows[k].get("dataset")}
                write_outputs(path, in_order(done, rows))
                bar.advance(task, len(batch))
        info(f"generated {throughput.answers} answers, {throughput.tokens} tokens in {throughput.seconds:.1f} s: "
             f"{throughput.tokens_per_s or 0:.1f} tokens/s ({throughput.backend}, {BATCH_ORDER[throughput.by_length]})")
    return [done[r["instruction"]] for r in rows]


def generate_outputs(model: Any, tokenizer: Any, rows: list[dict], path: Path, *, generator: str, batch_size: int,
                     max_new_tokens: int, temperature: float, seed: int,
                     by_length: bool = True) -> tuple[list[dict], Throughput]:
    """:func:`answer_rows` with a transformers model; batch i is sampled under ``seed + i``.
    Returns (outputs in the order of `rows`, this run's throughput)."""
    def answer(indices: list[int], prompts: list[list[int]], batch: int) -> tuple[list[str], list[int]]:
        torch.manual_seed(seed + batch)
        return generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature)

    throughput = Throughput("hf", by_length)
    outputs = answer_rows(answer, tokenizer, rows, path, generator=generator, batch_size=batch_size,
                          throughput=throughput)
    return outputs, throughput
