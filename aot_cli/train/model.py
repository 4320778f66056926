"""The trainable policy of a run (LoRA, QLoRA or full fine-tuning) and the recipe of its reference.

Loading the base and rebuilding a finished run's models are shared with merge and eval
(:mod:`aot_cli.artifacts.models`); what is particular to training lives here: making the weights
trainable (fresh LoRA adapters, an init adapter continued, or every weight), gradient
checkpointing, fp32 master weights for bf16 full fine-tuning, and SwiGLU MLPs that keep less for
their backward (:mod:`aot_cli.train.swiglu`).

QLoRA trains LoRA adapters on the 4-bit base as loaded, in the run's dtype. peft's
``prepare_model_for_kbit_training`` is not used: besides freezing the base (peft does that when it
adds the adapters) it widens every non-4-bit weight to float32, and bitsandbytes then computes the
4-bit layers in float32 too (a layer computes in its input's dtype), so a bf16 run would train in
float32 while merge and eval, which load the run in bf16, would compute something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from aot_cli.artifacts.models import ModelRecipe, attach_adapter, load_base, torch_dtype
from aot_cli.errors import UserError
from aot_cli.train.config import Config
from aot_cli.train.swiglu import recompute_silu


def master_weights_in_fp32(config: Config) -> bool:
    """Whether training keeps fp32 weights and computes under bf16 autocast (``--full`` with a bf16
    dtype). Why: pure-bf16 weights round away any update below their resolution (~0.4% of the
    weight), which is most of a small-LR step; LoRA adapters are fp32 already (peft)."""
    return not config.lora and torch_dtype(config.dtype) == torch.bfloat16


def reference_recipe(config: Config) -> ModelRecipe:
    """The starting point of training, as a recipe: what the reference log-probs are measured on."""
    return ModelRecipe(base_model=config.model, init_adapter=str(config.init_adapter) if config.init_adapter else None,
                       lora=config.lora, dtype=config.dtype, load_in_4bit=config.load_in_4bit,
                       attn_implementation=config.attn_implementation)


def _enable_checkpointing(base: Any) -> None:
    # Non-reentrant checkpointing needs no input-grad hook for LoRA; transformers >= 5.x renamed the API.
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_policy(config: Config) -> Any:
    """The trainable policy: LoRA on the base (fresh or from --init-adapter), or the full model with
    every weight trainable (in bf16: fp32 weights, forward under bf16 autocast)."""
    base = load_base(config.model, dtype="fp32" if master_weights_in_fp32(config) else config.dtype,
                     load_in_4bit=config.load_in_4bit, attn_implementation=config.attn_implementation)
    recompute_silu(base)  # a quarter less MLP activation memory, same arithmetic (aot_cli.train.swiglu)
    if config.gradient_checkpointing:
        _enable_checkpointing(base)
    base.config.use_cache = False
    if not config.lora:
        for param in base.parameters():
            param.requires_grad_(True)
        if master_weights_in_fp32(config):
            # Per instance, not accelerate's mixed_precision: that is process-wide state, fixed by the first run.
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
            base.forward = torch.autocast(device_type, dtype=torch.bfloat16)(base.forward)
        return base
    if config.init_adapter is not None:
        return attach_adapter(base, config.init_adapter, trainable=True)
    targets = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets), task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(base, lora)
    except ValueError as exc:
        raise UserError(f"--lora-target-modules {' '.join(targets)}: {exc}") from None


def save_trained(model: Any, tokenizer: Any, directory: Path, state_dict: dict | None = None) -> None:
    """Write the adapter (peft) or the full model as safetensors, with the tokenizer beside it; a sharded
    (FSDP) model's weights come gathered in `state_dict` (peft keeps the adapter's part of it)."""
    model.save_pretrained(str(directory), safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(str(directory))
