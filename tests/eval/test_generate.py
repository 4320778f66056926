"""Chat-template generation: the prompt is the templated user turn plus the assistant header, and
left-padded batches answer exactly what single prompts answer."""

from __future__ import annotations

import torch

from aot_cli.eval.generate import generate_batch, prompt_ids


def test_prompt_is_the_templated_user_turn(tiny_model_dir):
    from aot_cli.data.tokenize import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    text = tok.decode(prompt_ids(tok, "What is the capital of France?"))
    assert text.startswith("<s><|im_start|>user\nWhat is the capital of France?<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n") and text.count("<s>") == 1


def test_batched_greedy_generation_matches_single_prompts(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from aot_cli.data.tokenize import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = ["Hi", "Write a function that adds two numbers, then explain it politely."]
    batched = generate_batch(model, tok, prompts, max_new_tokens=8, temperature=0.0)
    singles = [generate_batch(model, tok, [p], max_new_tokens=8, temperature=0.0)[0] for p in prompts]
    assert batched == singles and all(batched)   # non-empty: the random model does not stop at once


def test_a_resumed_sampling_run_writes_what_an_uninterrupted_one_writes(tiny_model_dir, tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    from aot_cli.data.tokenize import load_tokenizer
    from aot_cli.eval.generate import generate_outputs

    tok = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows = [{"instruction": f"Say something about the number {i}.", "dataset": "t"} for i in range(4)]
    settings = dict(generator="g", batch_size=2, max_new_tokens=6, temperature=1.0, seed=3)
    whole = generate_outputs(model, tok, rows, tmp_path / "whole.json", **settings)
    part = tmp_path / "part.json"
    part.write_text(json.dumps(whole[:2]))      # interrupted after the first batch
    assert generate_outputs(model, tok, rows, part, **settings) == whole
    assert json.loads(part.read_text()) == whole
