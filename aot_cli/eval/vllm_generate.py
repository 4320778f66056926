"""AlpacaEval generation with vLLM (``--backend vllm``: the optional ``vllm`` extra, CUDA GPUs).

The same prompts as ``hf`` (our tokenizer and chat template; vLLM gets the token ids), the same
resumable ``model_outputs.json`` and the same batch plan (:func:`aot_cli.eval.generate.answer_rows`).
vLLM schedules the requests of each batch itself (continuous batching): a larger ``--batch-size``
keeps more sequences in flight between two saves. Instruction k (0-based, in the instructions'
order) is sampled under ``seed + k``, so a resumed run writes what an uninterrupted one would. vLLM's
kernels differ from transformers': its answers are not bitwise those of ``hf``, greedy included.
Only imported when that backend is chosen (preflight has checked that vLLM is installed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest

from aot_cli.data.tokenize import load_tokenizer
from aot_cli.eval.generate import Throughput, answer_rows
from aot_cli.eval.vllm_args import engine_args, sampling_args


def generate_outputs(source: Any, rows: list[dict], path: Path, *, dtype: str, generator: str, batch_size: int,
                     max_new_tokens: int, temperature: float, seed: int) -> tuple[list[dict], Throughput]:
    """Answer every row of `rows` not yet in `path` with vLLM; (outputs in the order of `rows`, throughput)."""
    tokenizer = load_tokenizer(source.tokenizer)
    llm = LLM(**engine_args(source, dtype, seed))
    lora = LoRARequest("aot-adapter", 1, str(source.peft)) if source.peft else None

    def answer(indices: list[int], prompts: list[list[int]], batch: int) -> tuple[list[str], list[int]]:
        params = [SamplingParams(**sampling_args(max_new_tokens=max_new_tokens, temperature=temperature,
                                                 seed=seed + k, eos_id=tokenizer.eos_token_id)) for k in indices]
        results = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False,
                               lora_request=lora)
        return [r.outputs[0].text.strip() for r in results], [len(r.outputs[0].token_ids) for r in results]

    throughput = Throughput("vllm", by_length=True)
    outputs = answer_rows(answer, tokenizer, rows, path, generator=generator, batch_size=batch_size,
                          throughput=throughput)
    return outputs, throughput
