"""Batched chat generation for AlpacaEval: the model's own chat template, left padding, resumable.

Each instruction becomes ``[{"role": "user", "content": instruction}]`` templated with the
generation prompt (the assistant header), exactly as the model will be used. Outputs are appended
to ``model_outputs.json`` after every batch (atomic replace), so an interrupted run resumes where
it stopped: instructions already answered there are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from aot_cli.console import progress
from aot_cli.errors import UserError
from aot_cli.jsonl import describe_error, read_text

MODEL_OUTPUTS = "model_outputs.json"


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


def generate_batch(model: Any, tokenizer: Any, instructions: list[str], *, max_new_tokens: int,
                   temperature: float) -> list[str]:
    """Answers to `instructions` (left-padded batch; sampling when temperature > 0, else greedy)."""
    ids = [prompt_ids(tokenizer, text) for text in instructions]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=model.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=model.device)
    sampling = ({"do_sample": True, "temperature": temperature, "top_p": 1.0} if temperature > 0
                else {"do_sample": False})
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **sampling)
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def generate_outputs(model: Any, tokenizer: Any, rows: list[dict], path: Path, *, generator: str,
                     batch_size: int, max_new_tokens: int, temperature: float, seed: int) -> list[dict]:
    """Answer every row of `rows` ({instruction, dataset}) not yet in `path`; returns all outputs in
    the order of `rows`. Batches are fixed slices of `rows`, each sampled under its own seed
    (``seed + batch index``), so a resumed run (same batch size) writes what an uninterrupted one would."""
    done = {r["instruction"]: r for r in read_outputs(path)}
    batches = [(i, rows[start:start + batch_size]) for i, start in enumerate(range(0, len(rows), batch_size))]
    batches = [(i, [r for r in batch if r["instruction"] not in done]) for i, batch in batches]
    batches = [(i, batch) for i, batch in batches if batch]
    if batches:
        with progress() as bar:
            task = bar.add_task("generating", total=sum(len(batch) for _, batch in batches))
            for i, batch in batches:
                torch.manual_seed(seed + i)
                answers = generate_batch(model, tokenizer, [r["instruction"] for r in batch],
                                         max_new_tokens=max_new_tokens, temperature=temperature)
                for row, answer in zip(batch, answers):
                    done[row["instruction"]] = {"instruction": row["instruction"], "output": answer,
                                                "generator": generator, "dataset": row.get("dataset")}
                write_outputs(path, list(done.values()))
                bar.advance(task, len(batch))
    return [done[r["instruction"]] for r in rows]
