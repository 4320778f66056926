"""Build a run's models from what it records: the policy it trained and the reference it was
measured against. One loader for train (the reference, and the starting point of a resume),
merge, eval and dominance, so they cannot disagree about what "the run's model" is.

A :class:`ModelRecipe` says how to rebuild them: the base model (a hub id or a directory), the
adapter training started from (``--init-adapter``, also part of the reference), the trained
weights (a LoRA adapter or a full model directory), and how the base is loaded (dtype, 4-bit,
attention kernel). The reference is the starting point of training: the base, or the base with
its init adapter. A LoRA run without an init adapter needs no second model for it: the policy
with its adapters disabled *is* the reference (:func:`reference_of`).
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import torch
from peft import PeftModel
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from aot_cli.artifacts.kinds import RunArtifact, adapter_config_problem
from aot_cli.data.tokenize import load_tokenizer
from aot_cli.errors import UserError
from aot_cli.vocab import DTYPES


def torch_dtype(name: str) -> torch.dtype:
    """``auto`` means bf16 on a GPU that supports it, else float32 (CPU training is float32)."""
    if name == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return getattr(torch, DTYPES[name])


def check_4bit() -> None:
    """4-bit loading needs CUDA and the bitsandbytes package (the `qlora` extra)."""
    if not torch.cuda.is_available():
        raise UserError("--load-in-4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); none is available here. "
                        "Drop --load-in-4bit to train in full precision")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("--load-in-4bit needs bitsandbytes: pip install 'aot-cli[qlora]'")


def load_base(model: str, *, dtype: str = "auto", load_in_4bit: bool = False,
              attn_implementation: str | None = None, flag: str = "--model") -> Any:
    """The base causal LM from a directory or hub id (never runs remote code; safetensors first)."""
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
    try:
        return AutoModelForCausalLM.from_pretrained(model, **kwargs)
    # missing or damaged files, a bad config, an absent attention kernel
    except (OSError, ValueError, ImportError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{flag} {model}: cannot load it ({first})") from None


def attach_adapter(model: Any, adapter: str | Path, *, trainable: bool = False) -> Any:
    """`model` with the peft adapter at `adapter`; a damaged adapter is a UserError naming it.

    The cheap checks (:func:`adapter_config_problem`: the config is a peft config, every weight file
    is whole) run first, so a truncated or edited adapter never reaches peft; what peft itself
    refuses (a shape mismatch with this base, a file damaged inside) is reported the same way."""
    problem = adapter_config_problem(adapter)
    if problem is not None:
        raise UserError(f"cannot load the LoRA adapter {adapter}: {problem}; is it damaged? train the run "
                        "again or resume it from a checkpoint")
    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{adapter}: cannot load the LoRA adapter ({first}); is it damaged? "
                        "train the run again or resume it from a checkpoint") from None


@dataclass(frozen=True)
class ModelRecipe:
    """How to rebuild a run's policy and reference (see the module docstring)."""

    base_model: str
    init_adapter: str | None = None
    trained: Path | None = None        # the trained adapter (lora) or full model directory
    lora: bool = True
    dtype: str = "auto"
    load_in_4bit: bool = False
    attn_implementation: str | None = None

    @classmethod
    def of_run(cls, run: RunArtifact) -> ModelRecipe:
        config = run.config
        return cls(base_model=run.base_model, init_adapter=run.init_adapter, trained=run.trained_dir,
                   lora=run.lora, dtype=config.get("dtype", "auto"),
                   load_in_4bit=bool(config.get("load_in_4bit")),
                   attn_implementation=config.get("attn_implementation"))

    @property
    def reference_is_policy_without_adapter(self) -> bool:
        """A LoRA run from the bare base: disabling the adapters gives the reference exactly."""
        return self.lora and self.init_adapter is None


def load_reference(recipe: ModelRecipe) -> Any:
    """A frozen copy of the starting point (the base, or the base with its init adapter), eval mode."""
    model = load_base(recipe.base_model, dtype=recipe.dtype, load_in_4bit=recipe.load_in_4bit,
                      attn_implementation=recipe.attn_implementation)
    if recipe.init_adapter is not None:
        model = attach_adapter(model, recipe.init_adapter)
    model.requires_grad_(False)
    return model.eval()


def load_policy(recipe: ModelRecipe) -> Any:
    """The trained policy in eval mode: the base with the trained adapter, or the full model."""
    if recipe.trained is None:
        raise ValueError("the recipe names no trained weights")
    if not recipe.lora:
        return load_base(str(recipe.trained), dtype=recipe.dtype, attn_implementation=recipe.attn_implementation,
                         flag="the run's model").eval()
    base = load_base(recipe.base_model, dtype=recipe.dtype, load_in_4bit=recipe.load_in_4bit,
                     attn_implementation=recipe.attn_implementation)
    return attach_adapter(base, recipe.trained).eval()


@contextmanager
def reference_of(policy: Any, recipe: ModelRecipe) -> Iterator[Any]:
    """The reference model while the context is open: `policy` with its adapters disabled when that
    is the reference, else a frozen copy loaded next to it (freed on exit)."""
    if recipe.reference_is_policy_without_adapter and isinstance(policy, PeftModel):
        with policy.disable_adapter():
            yield policy
        return
    reference = load_reference(recipe).to(next(policy.parameters()).device)
    try:
        yield reference
    finally:
        del reference


@dataclass
class LoadedRun:
    """A finished run's policy (eval mode, on its device), its tokenizer and how it was built."""

    policy: Any
    tokenizer: Any
    recipe: ModelRecipe

    def reference(self):
        """Context manager: the run's reference model (see :func:`reference_of`)."""
        return reference_of(self.policy, self.recipe)


def load_run(run: RunArtifact, *, device: str = "cpu", dtype: str | None = None,
             quantized: bool | None = None) -> LoadedRun:
    """The policy of a finished run and its tokenizer (with the chat template it trained with).

    `dtype` overrides the run's dtype (merge computes in fp32); `quantized=False` loads a QLoRA
    run's base unquantized (merge folds the adapter into full-precision weights).
    """
    recipe = ModelRecipe.of_run(run)
    if dtype is not None:
        recipe = replace(recipe, dtype=dtype)
    if quantized is not None:
        recipe = replace(recipe, load_in_4bit=quantized and recipe.load_in_4bit)
    policy = load_policy(recipe)
    if not recipe.load_in_4bit:  # a quantized model is placed on its device when loaded
        policy = policy.to(device)
    return LoadedRun(policy, load_tokenizer(run.trained_dir), recipe)


def resolve_device(device: str | None) -> str:
    """The device every evaluation uses: the one asked for, else CUDA when there is one, else CPU."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_generation(source: Any, dtype: str, device: str) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer with its chat template) of a resolved MODEL
    (:class:`aot_cli.eval.source.ModelSource`): a run through :func:`load_run`, a model directory
    or hub id as saved."""
    if source.run is not None:
        loaded = load_run(source.run, device=device, dtype=None if dtype == "auto" else dtype)
        return loaded.policy, loaded.tokenizer
    tokenizer = load_tokenizer(source.tokenizer)
    torch_type = "auto" if dtype == "auto" else getattr(torch, DTYPES[dtype])
    try:
        model = AutoModelForCausalLM.from_pretrained(source.pretrained, dtype=torch_type)
    except (OSError, SafetensorError) as exc:
        raise UserError(f"cannot load model {source.pretrained!r} ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), tokenizer
