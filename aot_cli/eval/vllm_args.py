"""How a resolved MODEL is handed to vLLM (``--backend vllm``), as plain dictionaries.

vLLM is the optional ``vllm`` extra (``pip install 'aot-cli[vllm]'``, CUDA only: it brings its own
CUDA build of torch). Nothing here imports it, so the CLI checks the choice before anything heavy
is loaded and the tests check the mapping where vLLM is absent.

The same model as ``--backend hf``, by the same rules (:mod:`aot_cli.eval.source`):

- a merged model directory, a full run's ``model/`` or a hub id: loaded as saved;
- a LoRA run: the base with the adapter applied by vLLM's LoRA support (``enable_lora`` and a
  ``LoRARequest`` for generation, ``lora_local_path`` for lm-eval), unmerged, as ``hf`` uses it;
  ``max_lora_rank`` is the smallest rank vLLM accepts that holds the adapter's;
- a QLoRA run is refused: it is evaluated as trained (adapter on the 4-bit base, bitsandbytes) and
  vLLM cannot rebuild that model; ``aot merge`` it first and evaluate the merged directory.

The tokenizer (with the chat template the run was trained with) is always the one ``hf`` uses.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from aot_cli.errors import UserError
from aot_cli.vocab import DTYPES

VLLM_EXTRA = "pip install 'aot-cli[vllm]'"
# max_lora_rank values every vLLM >= 0.6 accepts (newer ones add 1, 320 and 512).
LORA_RANKS = (8, 16, 32, 64, 128, 256)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest LoRA rank of a peft adapter: ``r``, or a larger one of its ``rank_pattern``."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    return max([int(config.get("r") or 0), *map(int, (config.get("rank_pattern") or {}).values())])


def vllm_lora_rank(rank: int, spec: str) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank `rank`."""
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise UserError(f"{spec}: LoRA rank {rank} is above {LORA_RANKS[-1]}, the largest vLLM serves unmerged; merge "
                    f"it first (aot merge {spec} -o DIR) and evaluate DIR, or use --backend hf")


def check_vllm(source: Any, device: str | None) -> None:
    """The cheap checks of ``--backend vllm`` (preflight, before torch is imported)."""
    if not vllm_installed():
        raise UserError(f"--backend vllm needs vLLM, which is not installed: {VLLM_EXTRA} (CUDA only), "
                        "or use --backend hf")
    if device not in (None, "cuda"):
        raise UserError(f"--device {device} with --backend vllm: vLLM takes its GPUs from CUDA_VISIBLE_DEVICES "
                        "(e.g. CUDA_VISIBLE_DEVICES=1 aot eval ...); drop --device")
    if source.load_in_4bit:
        raise UserError(f"{source.spec}: a QLoRA run (adapter on a 4-bit base) cannot be loaded by vLLM as it was "
                        f"trained; merge it first (aot merge {source.spec} -o DIR) and evaluate DIR, or use "
                        "--backend hf")
    if source.peft:
        _lora_rank(source)


def _lora_rank(source: Any) -> int:
    return vllm_lora_rank(adapter_rank(source.peft), source.spec)


def engine_args(source: Any, dtype: str, seed: int) -> dict:
    """Keyword arguments of ``vllm.LLM`` for generation (the adapter itself goes with each request)."""
    args = {"model": source.pretrained, "tokenizer": source.tokenizer, "dtype": DTYPES.get(dtype, "auto"),
            "seed": seed}
    if source.peft:
        args.update(enable_lora=True, max_lora_rank=_lora_rank(source), max_loras=1)
    return args


def lm_eval_model_args(source: Any, dtype: str, seed: int) -> dict:
    """model_args of lm-eval's ``vllm`` model (it turns on ``enable_lora`` itself for a LoRA path)."""
    args = {"pretrained": source.pretrained, "tokenizer": source.tokenizer, "dtype": DTYPES.get(dtype, "auto"),
            "seed": seed}
    if source.peft:
        args.update(lora_local_path=source.peft, max_lora_rank=_lora_rank(source))
    return args


def sampling_args(*, max_new_tokens: int, temperature: float, seed: int, eos_id: int) -> dict:
    """Keyword arguments of ``vllm.SamplingParams`` for one AlpacaEval answer: what ``hf`` does
    (temperature 0 = greedy, top_p 1, stop at the tokenizer's EOS), with the request's own seed."""
    return {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": 1.0, "seed": seed,
            "stop_token_ids": [eos_id], "skip_special_tokens": True}
