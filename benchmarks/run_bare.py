"""The ``bare`` run of the benchmark: the least a training step on this data can cost, in its own process.

    python benchmarks/run_bare.py SPEC.json

A plain loop, no `aot train`: for each micro-batch `aot train --sort-scope micro` would draw (same
rows, same order, through aot's own tokenization and sampler), each row runs through the policy
at its own length (no position is padding), then one backward of the sum of all rows' completion
log-probs (a plain head: ``log_softmax`` of the completion positions' logits), then the same
optimizer step as `aot train` (gradient clipping at 1.0, fused AdamW). No reference
model or pass, no sort, no second pass, no logging, no checkpoint. The step clock (step_clock.py)
times it exactly as it times the other runs; each run's samples/s over this one's is its fraction of
the limit.

Why a forward per row rather than one packed sequence: on the CPU, transformers' SDPA path takes
packed rows only as a dense ``[N, N]`` block-diagonal mask, which computes (and, for backward,
keeps) attention over all N positions of the micro-batch, 8 rows' worth of it per row here: more
work than padding, not less. A row at a time does exactly the non-padding work.
"""

from __future__ import annotations

import json
import sys

import torch
from step_clock import StepClock
from transformers import AutoModelForCausalLM

from aot_cli.data.dataset import load_prepared
from aot_cli.data.tokenize import TokenizeSettings, load_tokenizer, tokenize_split
from aot_cli.train.batching import StepSampler, make_sides, step_micro_batches
from aot_cli.train.logprobs import IGNORE_INDEX


def rows(batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each row's attended tokens ``[1, n]`` and their labels (right padding: the first n positions)."""
    lengths = batch.attention_mask.sum(-1).tolist()
    return [(batch.input_ids[i, :n][None], batch.labels[i, :n]) for i, n in enumerate(lengths)]


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    torch.manual_seed(spec["seed"])
    clock = StepClock().install()
    dataset, data = load_prepared(spec["data"])
    tokenizer = load_tokenizer(spec["model"])
    settings = TokenizeSettings(spec["max_length"], spec["max_length"])
    tokenized = tokenize_split(data["train"], tokenizer, settings, paired=True,
                              fingerprint=f"{dataset.fingerprint}:train")
    sides = make_sides(tokenized, paired=True)
    sampler = StepSampler(len(sides[0]), len(sides[1]), spec["batch"], spec["seed"], paired=True)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0, fused=True)
    head = model.get_output_embeddings()
    try:
        for k in range(spec["steps"]):
            (batch,) = step_micro_batches(sides, sampler, k, micro_batch=spec["batch"], pad_id=tokenizer.pad_token_id)
            total = 0.0
            for ids, labels in rows(batch):
                hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]
                scored = labels != IGNORE_INDEX
                logps = torch.log_softmax(head(hidden[scored]).float(), dim=-1)
                total = total + logps.gather(1, labels[scored][:, None]).sum()
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        clock.dump(spec["result"])


if __name__ == "__main__":
    main()
