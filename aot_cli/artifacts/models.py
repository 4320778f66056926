"""Build a run's models from what it records: the policy it trained and the reference it was
measured against. One loader for train (the reference, and the starting point of a resume),
merge, eval and dominance, so they cannot disagree about what "the run's model" is.

A :class:`ModelRecipe` says how to rebuild them: the base model (a hub id or a directory), the
adapter training started from (``--init-adapter``, also part of the reference), the trained
weights (a LoRA adapter or a full model directory), and how the base is loaded (dtype, 4-bit,
attention kernel). The reference is the starting point of training: the base, or the base with
its init adapter. A LoRA run without an init adapter needs no second model for it: the policy
with its adapters disabled *is* the reference (:func:`reference_of`).

A QLoRA run's base is rebuilt in 4 bits as training loaded it (the same quantization of the same
weights, in the run's dtype), on the GPU when there is one, else on the CPU; merge alone turns it
back into plain weights (:func:`load_run_dequantized`).
"""

from __future__ import annotations

import importlib.util
import logging
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
    """4-bit loading needs the bitsandbytes package (the `qlora` extra); it runs on CUDA and on the CPU."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("--load-in-4bit needs bitsandbytes: pip install 'aot-cli[qlora]'")


def quantization_config(dtype: torch.dtype) -> BitsAndBytesConfig:
    """QLoRA's 4-bit base: NF4 with double quantization, computing in the run's dtype (bf16 on a GPU,
    float32 on the CPU), so the 4-bit layers multiply in the dtype the rest of the model uses."""
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def keep_4bit_differentiable(model: Any) -> None:
    """Turn off bitsandbytes' CPU repacking on every 4-bit layer.

    Why: on CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a layer's 4-bit weights in place on
    its first forward in eval mode without grad (the reference pass does exactly that), and from then
    on the layer computes through a bf16 kernel that has no backward: gradients silently stop at every
    base layer, so the LoRA matrices before the last ones get zero gradients. With the flag off, the
    layer keeps dequantizing and multiplying (exact, differentiable) in every mode."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_base(model: str, *, dtype: str = "auto", load_in_4bit: bool = False,
              attn_implementation: str | None = None, flag: str = "--model") -> Any:
    """The base causal LM from a directory or hub id (never runs remote code; safetensors first).

    In 4 bits (QLoRA) transformers places it itself: on the current CUDA device when there is one,
    else on the CPU; its 4-bit layers stay differentiable (:func:`keep_4bit_differentiable`)."""
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        kwargs["quantization_config"] = quantization_config(kwargs["dtype"])
    try:
        loaded = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    # missing or damaged files, a bad config, an absent attention kernel
    except (OSError, ValueError, ImportError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{flag} {model}: cannot load it ({first})") from None
    if load_in_4bit:
        keep_4bit_differentiable(loaded)
    return loaded


def dequantize_4bit(model: Any, dtype: torch.dtype) -> Any:
    """A 4-bit model turned back into plain Linear layers, on the CPU in `dtype`.

    The weights are the 4-bit ones a QLoRA run trained on, dequantized where they live (the same
    kernel as training) in the dtype they were quantized from; only then are they moved and widened,
    which is exact. Merging an adapter into these weights gives what was trained; merging it into the
    original base would add the base's quantization error to the export."""
    quiet = logging.getLogger("transformers.integrations.bitsandbytes")  # "dequantized in X and casted to X"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        model = model.dequantize(dtype=model.dtype)
    finally:
        quiet.setLevel(level)
    return model.to(device="cpu", dtype=dtype)


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


def load_policy(recipe: ModelRecipe, *, dequantize_to: torch.dtype | None = None) -> Any:
    """The trained policy in eval mode: the base with the trained adapter, or the full model.
    `dequantize_to`: a QLoRA base is loaded in 4 bits as trained, then dequantized to that dtype on
    the CPU before the adapter goes on (:func:`dequantize_4bit`)."""
    if recipe.trained is None:
        raise ValueError("the recipe names no trained weights")
    if not recipe.lora:
        return load_base(str(recipe.trained), dtype=recipe.dtype, attn_implementation=recipe.attn_implementation,
                         flag="the run's model").eval()
    base = load_base(recipe.base_model, dtype=recipe.dtype, load_in_4bit=recipe.load_in_4bit,
                     attn_implementation=recipe.attn_implementation)
    if recipe.load_in_4bit and dequantize_to is not None:
        base = dequantize_4bit(base, dequantize_to)
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


def load_run(run: RunArtifact, *, device: str = "cpu", dtype: str | None = None) -> LoadedRun:
    """The policy of a finished run and its tokenizer (with the chat template it trained with).

    `dtype` overrides the run's dtype. A QLoRA run is loaded as it trained: the adapter on the 4-bit
    base, which transformers places itself (`device` applies to the other runs)."""
    recipe = ModelRecipe.of_run(run)
    if dtype is not None:
        recipe = replace(recipe, dtype=dtype)
    policy = load_policy(recipe)
    if not recipe.load_in_4bit:  # a quantized model is placed on its device when loaded
        policy = policy.to(device)
    return LoadedRun(policy, load_tokenizer(run.trained_dir), recipe)


def load_run_dequantized(run: RunArtifact) -> LoadedRun:
    """A QLoRA run's policy for export, in float32 on the CPU: the adapter on its 4-bit base loaded
    as trained (the run's dtype) and dequantized (:func:`dequantize_4bit`)."""
    recipe = ModelRecipe.of_run(run)
    policy = load_policy(recipe, dequantize_to=torch.float32)
    return LoadedRun(policy, load_tokenizer(run.trained_dir), replace(recipe, load_in_4bit=False, dtype="fp32"))


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
