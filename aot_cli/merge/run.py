"""`aot merge RUN -o OUT`: turn a training run into a plain model directory.

A LoRA run's adapter is folded into its base weights (peft ``merge_and_unload``); a full fine-tuning
run's ``model/`` is re-exported the same way. The result is a ``save_pretrained`` directory
(safetensors shards, tokenizer, generation config) that transformers, lm-eval and vLLM load
without peft, plus a manifest of kind "model".

Why the merge is computed in float32 and only then cast to ``--dtype``: adding ``B @ A * scale``
to bf16 weights in bf16 rounds twice; one rounding at the end is the most faithful export. The
default ``--dtype auto`` saves in the dtype the base checkpoint was saved in (its config's
``dtype``/``torch_dtype``): a bf16 7B base gives a bf16 model of the same size, an fp32 one stays fp32.

A QLoRA run (``--load-in-4bit``) trained its adapter on the 4-bit base, not on the original weights:
its export is that 4-bit base, loaded as training loaded it and dequantized, plus the adapter. Merged
into the original weights instead, the export would carry the base's quantization error (docs/merge.md
has the numbers). The manifest's ``base_weights`` says which base weights went into the export.

``--verify`` (default on) is the check that the export means what the run learned: the logits of the
unmerged model (base + adapter as trained, 4-bit for a QLoRA run, or the run's own weights) on a few
prompts are compared with those of the directory just written, reloaded from disk. The difference is
reported relative to the largest reference logit; above the tolerance (by dtype, or
``--verify-tolerance``) the merge fails and nothing is left behind.
"""

from __future__ import annotations

import shlex
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

from aot_cli.artifacts.kinds import RunArtifact
from aot_cli.artifacts.models import LoadedRun, load_run, load_run_dequantized, torch_dtype
from aot_cli.artifacts.store import atomic_dir, describe_input, write_manifest
from aot_cli.config import to_dict
from aot_cli.console import as_typed, info, out_console
from aot_cli.errors import UserError
from aot_cli.merge.config import Config
from aot_cli.vocab import DTYPE_NAMES, DTYPES

# Relative tolerance of verify: max |merged - unmerged| / max |unmerged| over the prompts' logits.
# The float32 default allows only accumulation-order noise; the half-precision ones the rounding
# of every weight to 8 (bf16) or 11 (fp16) mantissa bits.
VERIFY_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 3e-2}
VERIFY_PROMPTS = (
    "The capital of France is",
    "Here is a short answer: yes. Here is a long answer:",
    "def add(a, b):\n",
)


def _refuse_quantized_base(base: str) -> None:
    """A base stored quantized (e.g. a bnb-4bit checkpoint, local or a hub id) cannot take a faithful merge."""
    try:
        quant = getattr(AutoConfig.from_pretrained(base), "quantization_config", None)
    except OSError:
        return   # loading the base below reports it
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else type(quant).__name__
        raise UserError(f"{base}: the base model is stored quantized (quantization_config.quant_method="
                        f"{method}); merging into quantized weights would round the adapter away. Point the "
                        "run at the unquantized base (the run's manifest config.model) and merge again")


def load_unmerged(run: RunArtifact) -> LoadedRun:
    """The run's policy in float32 on the CPU, ready to merge: base + adapter as a PeftModel, or the
    full model. A QLoRA run's base is its 4-bit base dequantized (:func:`load_run_dequantized`)."""
    if run.lora:
        _refuse_quantized_base(run.base_model)
    if is_qlora(run):
        info(f"the run trained on a 4-bit base (QLoRA): merging into that 4-bit base dequantized (the weights "
             f"the adapter was trained on), not into the original weights of {run.base_model}")
        return load_run_dequantized(run)
    return load_run(run, dtype="fp32", device="cpu")


def is_qlora(run: RunArtifact) -> bool:
    return run.lora and bool(run.config.get("load_in_4bit"))


def compute_dtype_name(run: RunArtifact) -> str:
    """The dtype the run's model computes in when loaded here (its ``--dtype``, ``auto`` resolved)."""
    return DTYPE_NAMES[str(torch_dtype(run.config.get("dtype", "auto"))).replace("torch.", "")]


def base_weights(run: RunArtifact) -> dict | None:
    """What the manifest records as the base weights of the export (None for a full run: no base)."""
    if not run.lora:
        return None
    if not is_qlora(run):
        return {"source": "checkpoint", "path": run.base_model}
    return {"source": "dequantized-4bit", "path": run.base_model, "quant_type": "nf4", "double_quant": True,
            "quantized_in": compute_dtype_name(run),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def verify_tolerance(run: RunArtifact, dtype_name: str) -> float:
    """The default tolerance: the export dtype's; for a QLoRA run the looser of that and the dtype the
    run computes in, since its reference logits come from the 4-bit model as trained (a bf16 run's
    reference carries bf16 arithmetic that no float32 export reproduces)."""
    tolerance = VERIFY_TOLERANCE[dtype_name]
    if is_qlora(run):
        tolerance = max(tolerance, VERIFY_TOLERANCE[compute_dtype_name(run)])
    return tolerance


def reference_logits(run: RunArtifact, loaded: LoadedRun) -> list:
    """The logits the export must reproduce: of what was trained. For a QLoRA run that is the adapter
    on the 4-bit base (loaded for this and freed), not the dequantized model about to be merged."""
    if not is_qlora(run):
        return prompt_logits(loaded.policy, loaded.tokenizer)
    trained = load_run(run)
    return prompt_logits(trained.policy, trained.tokenizer)


def checkpoint_dtype(run: RunArtifact) -> str:
    """What ``--dtype auto`` means: the dtype in the base checkpoint's config, as bf16/fp16/fp32 (fp32
    when it names none: nothing is lost). A full run falls back to its saved model's config when its
    base cannot be read; its own weights may be wider than the base (fp32 master weights of bf16 training)."""
    candidates = [run.base_model] if run.lora else [run.base_model, run.weights_dir]
    for where in filter(None, candidates):
        try:
            config = AutoConfig.from_pretrained(where)
        except OSError as exc:
            error = f"cannot read the config of {where!r} ({str(exc).splitlines()[0]})"
            continue
        saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        name = DTYPE_NAMES.get(str(saved).replace("torch.", ""), "fp32")
        info(f"--dtype auto: {name} ({as_typed(where)} is saved in {saved or 'an unrecorded dtype'})")
        return name
    raise UserError(error)


def merge_adapter(model: Any) -> Any:
    """The plain transformers model with the LoRA deltas added to its weights (identity for a full run)."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def prompt_logits(model: Any, tokenizer: Any, prompts=VERIFY_PROMPTS) -> list:
    """Float32 logits of each prompt, one forward per prompt (no padding to get wrong)."""
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


def run(config: Config) -> dict:
    """Merge (or export), save, verify; returns the manifest written."""
    config.preflight()
    run_dir = RunArtifact.load(config.run)
    dtype_name = checkpoint_dtype(run_dir) if config.dtype == "auto" else config.dtype
    tolerance = (config.verify_tolerance if config.verify_tolerance is not None
                 else verify_tolerance(run_dir, dtype_name))

    info(f"loading {'base + adapter' if run_dir.lora else 'the trained full model'} of {run_dir.path}")
    loaded = load_unmerged(run_dir)
    model, tokenizer = loaded.policy, loaded.tokenizer
    reference = reference_logits(run_dir, loaded) if config.verify else None
    weights = base_weights(run_dir)
    merged = merge_adapter(model)
    _finish_generation_config(merged, tokenizer)
    merged = merged.to(getattr(torch, DTYPES[dtype_name]))
    n_params = sum(p.numel() for p in merged.parameters())

    inputs = [run_dir.path, run_dir.base_model, run_dir.init_adapter]
    with atomic_dir(config.output, overwrite=config.overwrite, inputs=inputs) as tmp:
        merged.save_pretrained(tmp, max_shard_size=config.max_shard_size)
        tokenizer.save_pretrained(tmp)
        del model, merged, loaded
        shards = sorted(p.name for p in tmp.glob("*.safetensors"))
        verify = _verify(config, tmp, tokenizer, reference, tolerance) if config.verify else None
        summary = {"source_run": str(run_dir.path.resolve()), "base_model": run_dir.base_model,
                   "adapter": run_dir.lora, "base_weights": weights, "dtype": dtype_name, "parameters": n_params,
                   "shards": shards, "verify": verify}
        manifest = write_manifest(tmp, kind="model", config=to_dict(config),
                                  inputs=[describe_input(run_dir.path)], summary=summary)

    what = (f"merged the run's adapter into its base {as_typed(run_dir.base_model)}" if run_dir.lora
            else "exported the run's trained weights")
    if is_qlora(run_dir):
        what += " (4-bit, dequantized)"
    line = f"{what} -> {config.output} ({dtype_name}, {len(shards)} shard(s))"
    if verify:
        line += f"; verify: max |logit diff| {verify['max_abs_diff']:.3g} (relative {verify['relative_diff']:.2g})"
    out_console.print(line, highlight=False, soft_wrap=True)
    model_dir = shlex.quote(str(config.output))
    weights = shards[0] if len(shards) == 1 else f"{len(shards)} safetensors shards with their index"
    info(f"wrote {config.output}: config.json, {weights}, the tokenizer (loads without peft in transformers, "
         "lm-eval and vLLM)")
    info(f"next: aot eval openllm {model_dir} --version v1 -o EVAL_DIR (or aot eval tasks {model_dir} --tasks "
         f"NAMES -o EVAL_DIR, aot eval alpaca {model_dir} -o EVAL_DIR)")
    return manifest


def _verify(config: Config, directory, tokenizer: Any, reference: list, tolerance: float) -> dict:
    """Reload the written model and compare its logits with the unmerged model's; fail above tolerance
    (NaN fails too: a comparison with NaN is false, so the check is written to pass only finite values)."""
    reloaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    verify = {**logits_difference(reference, prompt_logits(reloaded, tokenizer)),
              "tolerance": tolerance, "prompts": len(VERIFY_PROMPTS)}
    del reloaded
    if not verify["relative_diff"] <= tolerance:
        raise UserError(
            f"merge verify failed: logits of the merged model differ from the unmerged one by "
            f"{verify['max_abs_diff']:.3g} (relative {verify['relative_diff']:.3g} > tolerance "
            f"{tolerance:g}); nothing was written to {config.output}")
    return verify
