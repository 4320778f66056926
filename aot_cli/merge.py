"""`aot merge RUN -o OUT`: turn a training run into a plain model directory.

A LoRA run's adapter is folded into its base weights (peft ``merge_and_unload``); a full fine-tuning
run's ``model/`` is re-exported the same way. The result is a ``save_pretrained`` directory
(safetensors shards, tokenizer, generation config) that transformers, lm-eval and vLLM load
without peft, plus a manifest of kind "model".

Why the merge is computed in float32 and only then cast to ``--dtype``: adding ``B @ A * scale``
to bf16 weights in bf16 rounds twice; one rounding at the end is the most faithful export. The
default ``--dtype auto`` saves in the dtype the base checkpoint was saved in (its config's
``dtype``/``torch_dtype``): a bf16 7B base gives a bf16 model of the same size, an fp32 one stays fp32.

``--verify`` (default on) is the check that the export means what the run learned: the logits of the
unmerged model (base + adapter, or the run's own weights) on a few prompts are compared with those
of the directory just written, reloaded from disk. The difference is reported relative to the
largest reference logit; above the tolerance (by dtype, or ``--verify-tolerance``) the merge fails
and nothing is left behind.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from aot_cli.artifacts import atomic_output, check_output, describe_input, read_manifest, write_manifest
from aot_cli.config import arg, opt, to_dict
from aot_cli.console import info, out_console
from aot_cli.errors import UserError

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DTYPE_NAMES = {torch_name: name for name, torch_name in DTYPES.items()}
# Relative tolerance of verify: max |merged - unmerged| / max |unmerged| over the prompts' logits.
# The float32 default allows only accumulation-order noise; the half-precision ones the rounding
# of every weight to 8 (bf16) or 11 (fp16) mantissa bits.
VERIFY_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 3e-2}
# What save_pretrained's shard splitting (huggingface_hub) parses: a number and a decimal unit.
SHARD_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*[KMGT]B\s*$", re.IGNORECASE)
VERIFY_PROMPTS = (
    "The capital of France is",
    "Here is a short answer: yes. Here is a long answer:",
    "def add(a, b):\n",
)


@dataclass
class MergeConfig:
    """Merge a run's LoRA adapter into its base model (or re-export a full run) as a plain model dir."""

    run: Path = arg(help="Run directory made by `aot train`.", metavar="RUN")
    output: Path = opt(None, "-o", "--output", help="Model directory to write.", required=True)
    dtype: str = opt("auto", "--dtype", help="Dtype of the saved weights (auto = the base checkpoint's).",
                     choices=("auto", *DTYPES))
    max_shard_size: str = opt("5GB", "--max-shard-size", help="Largest safetensors shard, e.g. 2GB or 500MB.")
    verify: bool = opt(True, "--verify/--no-verify", help="Compare logits of the merged and the unmerged "
                       "model on a few prompts; fail above the tolerance.")
    verify_tolerance: Optional[float] = opt(None, "--verify-tolerance", help="Largest allowed max |logit "
                                            "difference| / max |logit| (default by dtype: fp32 1e-4, "
                                            "fp16 1e-2, bf16 3e-2).")
    overwrite: bool = opt(False, "--overwrite", help="Replace an existing output directory.")


@dataclass(frozen=True)
class RunSource:
    """What a run directory holds: the weights to export and where their base lives."""

    run_dir: Path
    weights_dir: Path      # run_dir/adapter or run_dir/model (tokenizer files live here too)
    adapter: bool
    base_model: Optional[str]
    trained_4bit: bool


def inspect_run(run_dir: Path) -> RunSource:
    """Read a run's manifest and find its adapter or full model; UserError when there is neither."""
    manifest = read_manifest(run_dir, kind="run")
    summary, config = manifest.get("summary", {}), manifest.get("config", {})
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        base = summary.get("base_model") or config.get("model")
        if not base:
            raise UserError(f"{run_dir}/manifest.json: no base model recorded (summary.base_model or config.model)")
        return RunSource(run_dir, run_dir / "adapter", True, str(base), bool(config.get("load_in_4bit")))
    if (run_dir / "model" / "config.json").is_file():
        return RunSource(run_dir, run_dir / "model", False, summary.get("base_model") or config.get("model"), False)
    raise UserError(f"{run_dir}: neither adapter/adapter_config.json nor model/config.json found "
                    "(is the run finished? a run in progress only has checkpoints/)")


def _refuse_quantized_base(base: str) -> None:
    """A base stored quantized (e.g. a bnb-4bit checkpoint, local or a hub id) cannot take a faithful merge."""
    from transformers import AutoConfig

    try:
        quant = getattr(AutoConfig.from_pretrained(base), "quantization_config", None)
    except OSError:
        return   # loading the base below reports it
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else type(quant).__name__
        raise UserError(f"{base}: the base model is stored quantized (quantization_config.quant_method="
                        f"{method}); merging into quantized weights would round the adapter away. Point the "
                        "run at the unquantized base (the run's manifest config.model) and merge again")


def load_unmerged(source: RunSource) -> tuple[Any, Any]:
    """(model in float32 on CPU, tokenizer): base + adapter as a PeftModel, or the run's full model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.weights_dir)
    if not source.adapter:
        return AutoModelForCausalLM.from_pretrained(source.weights_dir, dtype=torch.float32), tokenizer
    from peft import PeftModel

    _refuse_quantized_base(source.base_model)
    if source.trained_4bit:
        info(f"the run trained on a 4-bit base (QLoRA); merging into the unquantized base {source.base_model} "
             "(dequantized weights, float32, then --dtype)")
    try:
        base = AutoModelForCausalLM.from_pretrained(source.base_model, dtype=torch.float32)
    except OSError as exc:
        raise UserError(f"cannot load the run's base model {source.base_model!r} ({exc})") from None
    return PeftModel.from_pretrained(base, source.weights_dir), tokenizer


def checkpoint_dtype(source: RunSource) -> str:
    """What ``--dtype auto`` means: the dtype in the base checkpoint's config, as bf16/fp16/fp32 (fp32
    when it names none: nothing is lost). A full run falls back to its saved model's config when its
    base cannot be read; its own weights may be wider than the base (fp32 master weights of bf16 training)."""
    from transformers import AutoConfig

    candidates = [source.base_model] if source.adapter else [source.base_model, source.weights_dir]
    for where in filter(None, candidates):
        try:
            config = AutoConfig.from_pretrained(where)
        except OSError as exc:
            error = f"cannot read the config of {where!r} ({str(exc).splitlines()[0]})"
            continue
        saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        name = DTYPE_NAMES.get(str(saved).replace("torch.", ""), "fp32")
        info(f"--dtype auto: {name} ({where} is saved in {saved or 'an unrecorded dtype'})")
        return name
    raise UserError(error)


def merge_adapter(model: Any) -> Any:
    """The plain transformers model with the LoRA deltas added to its weights (identity for a full run)."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def prompt_logits(model: Any, tokenizer: Any, prompts=VERIFY_PROMPTS) -> list:
    """Float32 logits of each prompt, one forward per prompt (no padding to get wrong)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for text in prompts:
            enc = tokenizer(text, return_tensors="pt").to(model.device)
            out.append(model(**enc).logits.float().cpu())
    return out


def logits_difference(reference: list, candidate: list) -> dict:
    """max |candidate - reference| and that divided by max |reference|, over all prompts' logits."""
    max_abs = max(float((c - r).abs().max()) for r, c in zip(reference, candidate))
    scale = max(float(r.abs().max()) for r in reference)
    return {"max_abs_diff": max_abs, "max_abs_logit": scale, "relative_diff": max_abs / max(scale, 1e-12)}


def _finish_generation_config(model: Any, tokenizer: Any) -> None:
    """Make sure the saved generation config knows the tokenizer's EOS/PAD (vLLM and lm-eval read it).
    Training ended every completion with the tokenizer's EOS, so generation must stop there too, even
    when the base's generation config names another end token (a chat template added to a base)."""
    gen = model.generation_config
    eos = tokenizer.eos_token_id
    if gen.eos_token_id is None:
        gen.eos_token_id = eos
    elif eos is not None:
        known = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        if eos not in known:
            gen.eos_token_id = [*known, eos]
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id


def run(config: MergeConfig) -> dict:
    """Merge (or re-export), save, verify; returns the manifest written."""
    import torch
    from transformers import AutoModelForCausalLM

    check_output(config.output, config.overwrite)
    if not SHARD_SIZE.match(config.max_shard_size):
        raise UserError(f"--max-shard-size {config.max_shard_size!r}: expected a number and a unit of KB, MB, GB "
                        "or TB, e.g. 5GB or 500MB")
    source = inspect_run(Path(config.run))
    dtype_name = checkpoint_dtype(source) if config.dtype == "auto" else config.dtype
    tolerance = config.verify_tolerance if config.verify_tolerance is not None else VERIFY_TOLERANCE[dtype_name]
    dtype = getattr(torch, DTYPES[dtype_name])

    info(f"loading {'base + adapter' if source.adapter else 'full model'} from {source.run_dir}")
    model, tokenizer = load_unmerged(source)
    reference = prompt_logits(model, tokenizer) if config.verify else None
    merged = merge_adapter(model)
    _finish_generation_config(merged, tokenizer)
    merged = merged.to(dtype)
    n_params = sum(p.numel() for p in merged.parameters())

    with atomic_output(config.output, config.overwrite) as tmp:
        merged.save_pretrained(tmp, max_shard_size=config.max_shard_size)
        tokenizer.save_pretrained(tmp)
        del model, merged
        shards = sorted(p.name for p in tmp.glob("*.safetensors"))
        verify = None
        if config.verify:
            reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
            verify = {**logits_difference(reference, prompt_logits(reloaded, tokenizer)),
                      "tolerance": tolerance, "prompts": len(VERIFY_PROMPTS)}
            del reloaded
            if verify["relative_diff"] > tolerance:
                raise UserError(
                    f"merge verify failed: logits of the merged model differ from the unmerged one by "
                    f"{verify['max_abs_diff']:.3g} (relative {verify['relative_diff']:.3g} > tolerance "
                    f"{tolerance:g}); nothing was written to {config.output}")
        summary = {"source_run": str(source.run_dir), "base_model": source.base_model,
                   "adapter": source.adapter, "dtype": dtype_name, "parameters": n_params,
                   "shards": shards, "verify": verify}
        manifest = write_manifest(tmp, kind="model", config=to_dict(config),
                                  inputs=[describe_input(source.run_dir)], summary=summary)

    what = "merged adapter into" if source.adapter else "re-exported"
    line = f"{what} {source.base_model or source.weights_dir} -> {config.output} ({dtype_name}, {len(shards)} shard(s))"
    if verify:
        line += f"; verify: max |logit diff| {verify['max_abs_diff']:.3g} (relative {verify['relative_diff']:.2g})"
    out_console.print(line, highlight=False, soft_wrap=True)
    return manifest
