"""`aot train` options: one dataclass is the CLI, the ``--config`` YAML schema and the run's record.

Defaults are the paper's where it has one (Melnyk et al. 2024: logistic surrogate, beta 0.01, the
largest sort set you can afford, so ``--sort-scope global``). This module imports nothing heavy so
``aot --help`` stays instant; the work happens in :mod:`aot_cli.train.run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from aot_cli.config import opt

LOSS_CHOICES = ("aot", "aot_unpaired", "dpo", "ipo")


@dataclass
class TrainConfig:
    """Align a causal LM on a prepared preference dataset (AOT by default)."""

    model: str = opt(None, "--model", help="Base model: a local directory or a Hugging Face id.", required=True)
    data: Path = opt(None, "--data", help="Dataset directory made by `aot prepare`.", required=True)
    output: Path = opt(None, "-o", "--output", help="Run directory to write.", required=True)
    overwrite: bool = opt(False, "--overwrite", help="Replace an existing output directory.")
    resume: Optional[str] = opt(None, "--resume", help="Continue a run: 'auto' (latest checkpoint in "
                                "--output, or start fresh) or a checkpoints/step-N directory.")
    seed: int = opt(42, "--seed", help="Seed for the data order and initialization.")
    # objective
    loss: str = opt("aot", "--loss", help="Objective: paired AOT, unpaired AOT, or the DPO/IPO baselines.",
                    choices=LOSS_CHOICES)
    surrogate: str = opt("logistic", "--surrogate", help="Convex surrogate h of the dominance violation (AOT).",
                         choices=("logistic", "squared_hinge", "least_squares"))
    beta: float = opt(0.01, "--beta", help="Scale of the log-ratios (the paper's 0.01 for AOT).")
    label_smoothing: float = opt(0.0, "--label-smoothing", help="Label smoothing of the logistic loss.")
    sort: str = opt("hard", "--sort", help="Hard sort, or the differentiable soft sort.", choices=("hard", "soft"))
    soft_sort_eps: Optional[float] = opt(None, "--soft-sort-eps", help="Soft-sort regularization (with --sort soft).")
    sort_scope: str = opt("global", "--sort-scope", help="Sort set: the whole optimizer step's batch (global, "
                          "exact via two passes) or each micro-batch (micro, TRL's behaviour).",
                          choices=("global", "micro"))
    # model
    lora: bool = opt(True, "--lora/--full", help="Train LoRA adapters (default) or every weight.")
    lora_r: int = opt(16, "--lora-r", help="LoRA rank.")
    lora_alpha: int = opt(32, "--lora-alpha", help="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = opt(0.0, "--lora-dropout", help="LoRA dropout (0 keeps the sort set's rewards noise-free).")
    lora_target_modules: list[str] = opt(["all-linear"], "--lora-target-modules",
                                         help="Module names to adapt (repeat the flag); 'all-linear' = every "
                                              "linear layer but the output head.")
    init_adapter: Optional[Path] = opt(None, "--init-adapter", help="Start from this LoRA adapter (e.g. an SFT "
                                       "one); it is also the reference.")
    load_in_4bit: bool = opt(False, "--load-in-4bit", help="QLoRA: load the base in 4 bits (CUDA + bitsandbytes).")
    dtype: str = opt("auto", "--dtype", help="Weight dtype: auto = bf16 on a bf16-capable GPU, else fp32.",
                     choices=("auto", "bf16", "fp16", "fp32"))
    gradient_checkpointing: bool = opt(False, "--gradient-checkpointing", help="Recompute activations in backward.")
    attn_implementation: Optional[str] = opt(None, "--attn-implementation",
                                             help="Attention kernel: eager, sdpa, flash_attention_2 (default: "
                                                  "transformers' choice).")
    chat_template: Optional[Path] = opt(None, "--chat-template", help="Jinja chat template file, for tokenizers "
                                        "without one.")
    # data
    max_length: Optional[int] = opt(1024, "--max-length", help="Max tokens of prompt + completion.")
    max_prompt_length: Optional[int] = opt(512, "--max-prompt-length", help="Max prompt tokens (cut from the left).")
    # optimization
    batch_size: int = opt(2, "--batch-size", help="Pairs (or positive/negative couples) per device micro-batch.")
    grad_accum: int = opt(8, "--grad-accum", help="Micro-batches per optimizer step.")
    lr: float = opt(5e-5, "--lr", help="Peak learning rate.")
    lr_scheduler: str = opt("linear", "--lr-scheduler", help="Learning-rate schedule after warmup.",
                            choices=("linear", "cosine", "constant"))
    warmup_ratio: float = opt(0.1, "--warmup-ratio", help="Fraction of the steps spent warming the LR up.")
    weight_decay: float = opt(0.0, "--weight-decay", help="Decoupled weight decay.")
    optim: str = opt("adamw", "--optim", help="Optimizer (paged_adamw_8bit needs bitsandbytes and CUDA).",
                     choices=("adamw", "sgd", "paged_adamw_8bit"))
    max_grad_norm: float = opt(1.0, "--max-grad-norm", help="Clip the gradient norm (0 = no clipping).")
    max_steps: Optional[int] = opt(None, "--max-steps", help="Optimizer steps (overrides --epochs).")
    epochs: float = opt(1.0, "--epochs", help="Passes over the training data.")
    ref: str = opt("precompute", "--ref", help="Reference log-probs: one cached pass before training, or "
                   "computed every step.", choices=("precompute", "online"))
    logps_chunk_size: int = opt(1024, "--logps-chunk-size", help="Tokens per chunk of the output head (memory); "
                                "0 = the model's own full-logits head.")
    # output
    save_steps: int = opt(100, "--save-steps", help="Write a resumable checkpoint every N steps (0 = only at the end).")
    report_to: str = opt("none", "--report-to", help="Also log metrics to this tracker.",
                         choices=("none", "tensorboard", "wandb"))


def run(config: TrainConfig) -> None:
    """CLI entry point: the heavy work lives in :func:`aot_cli.train.run.train`."""
    from aot_cli.train.run import train

    train(config)
