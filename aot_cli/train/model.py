"""Load the policy (LoRA, QLoRA or full fine-tuning) and its reference, for training and for later steps.

Checks that can fail on user input (a model path without weights, 4-bit without CUDA or
bitsandbytes, an init adapter that is not one) live in :func:`check_model_inputs` so `aot train`
can run them before it creates its output directory. ``load_run_policy`` and
``load_run_reference`` rebuild a finished run's models from its manifest (used by eval and merge).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aot_cli.errors import UserError

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def torch_dtype(name: str):
    """``auto`` means bf16 on a GPU that supports it, else float32 (CPU training is float32)."""
    import torch

    if name == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def master_weights_in_fp32(config) -> bool:
    """Whether training keeps fp32 weights and computes under bf16 autocast (``--full`` with a bf16
    dtype). Why: pure-bf16 weights round away any update below their resolution (~0.4% of the
    weight), which is most of a small-LR step; LoRA adapters are fp32 already (peft)."""
    import torch

    return not config.lora and torch_dtype(config.dtype) == torch.bfloat16


def check_model_inputs(model: str, *, load_in_4bit: bool = False, init_adapter: Path | None = None,
                       lora: bool = True) -> None:
    """Raise UserError for inputs that would fail only after minutes of loading."""
    path = Path(model)
    if path.exists() or model.startswith((".", "/", "~")):
        if not path.is_dir():
            raise UserError(f"--model {model}: no such model directory")
        if not (path / "config.json").is_file():
            raise UserError(f"--model {model}: no config.json (expected a save_pretrained model directory)")
        if not any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
            raise UserError(f"--model {model}: no weights found (*.safetensors or *.bin); "
                            "is the download or save complete?")
    if load_in_4bit:
        check_4bit()
    if init_adapter is not None:
        if not lora:
            raise UserError("--init-adapter continues a LoRA adapter; it cannot be combined with --full")
        if not (Path(init_adapter) / "adapter_config.json").is_file():
            raise UserError(f"--init-adapter {init_adapter}: no adapter_config.json (expected a peft LoRA "
                            "adapter directory)")


def check_4bit() -> None:
    """4-bit loading needs CUDA and the bitsandbytes package (the `qlora` extra)."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise UserError("--load-in-4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); none is available here. "
                        "Drop --load-in-4bit to train in full precision")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("--load-in-4bit needs bitsandbytes: pip install 'aot-cli[qlora]'")


def load_base(model: str, *, dtype: str = "auto", load_in_4bit: bool = False,
              attn_implementation: str | None = None):
    """The base causal LM from a directory or hub id (never runs remote code)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
    try:
        return AutoModelForCausalLM.from_pretrained(model, **kwargs)
    except (OSError, ValueError, ImportError) as exc:  # missing files, bad config, absent attention kernel
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--model {model}: cannot load it ({first})") from None


def build_policy(config) -> Any:
    """The trainable policy of a TrainConfig: LoRA on the base (fresh or from --init-adapter), or
    the full model with every weight trainable (in bf16: fp32 weights, forward under bf16 autocast)."""
    import torch

    base = load_base(config.model, dtype="fp32" if master_weights_in_fp32(config) else config.dtype,
                     load_in_4bit=config.load_in_4bit, attn_implementation=config.attn_implementation)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input-grad hook for LoRA; transformers >= 5.x renamed the API.
        enable = getattr(base, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False
    if not config.lora:
        for param in base.parameters():
            param.requires_grad_(True)
        if master_weights_in_fp32(config):
            # Per instance, not accelerate's mixed_precision: that is process-wide state, fixed by the first run.
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
            base.forward = torch.autocast(device_type, dtype=torch.bfloat16)(base.forward)
        return base
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.init_adapter is not None:
        return PeftModel.from_pretrained(base, str(config.init_adapter), is_trainable=True)
    targets = config.lora_target_modules
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets), task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(base, lora)
    except ValueError as exc:
        raise UserError(f"--lora-target-modules {' '.join(targets)}: {exc}") from None


def build_reference(config) -> Any:
    """A frozen copy of the starting point (the base, or the base with --init-adapter), in eval mode.

    Needed only when the policy itself cannot serve: ``--ref online`` with full fine-tuning or an
    init adapter, or re-computing precomputed log-probs after a resume. LoRA without an init
    adapter uses the policy with its adapters disabled instead (no second copy).
    """
    model = load_base(config.model, dtype=config.dtype, load_in_4bit=config.load_in_4bit,
                      attn_implementation=config.attn_implementation)
    if config.init_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(config.init_adapter), is_trainable=False)
    model.requires_grad_(False)
    return model.eval()


def save_trained(model, tokenizer, directory: Path) -> None:
    """Write the adapter (peft) or the full model as safetensors, with the tokenizer beside it."""
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))


def _run_config(run_dir: Path) -> dict:
    from aot_cli.artifacts import read_manifest

    return read_manifest(run_dir, kind="run")["config"]


def load_run_policy(run_dir: str | Path):
    """``(model, tokenizer)`` of a finished run: base + ``adapter/``, or the full ``model/``; eval mode."""
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    config = _run_config(run_dir)
    if (run_dir / "adapter").is_dir():
        from peft import PeftModel

        base = load_base(config["model"], dtype=config.get("dtype", "auto"),
                         attn_implementation=config.get("attn_implementation"))
        model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "adapter"))
    elif (run_dir / "model").is_dir():
        model = load_base(str(run_dir / "model"), dtype=config.get("dtype", "auto"),
                          attn_implementation=config.get("attn_implementation"))
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "model"))
    else:
        raise UserError(f"{run_dir}: neither adapter/ nor model/ found (is the run complete?)")
    return model.eval(), tokenizer


def load_run_reference(run_dir: str | Path):
    """``(model, tokenizer)`` the run was measured against: the base, or base + its init adapter."""
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    config = _run_config(run_dir)
    model = load_base(config["model"], dtype=config.get("dtype", "auto"),
                      attn_implementation=config.get("attn_implementation"))
    if config.get("init_adapter"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, config["init_adapter"])
    saved = run_dir / ("adapter" if (run_dir / "adapter").is_dir() else "model")
    tokenizer = AutoTokenizer.from_pretrained(str(saved))
    return model.eval(), tokenizer

