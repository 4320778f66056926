"""`aot train` options: one dataclass is the CLI, the ``--config`` YAML schema and the run's record,
and the checks that need neither torch nor the data's rows (``Config.preflight``).

Defaults are the paper's where it has one (Melnyk et al. 2024: logistic surrogate, beta 0.01, the
largest sort set you can afford, so ``--sort-scope global``). ``--beta`` defaults per loss
(:data:`aot_cli.vocab.DEFAULT_BETA`: 0.01 for AOT, TRL's 0.1 for DPO, IPO and KTO); the value used is
resolved when the config is built, so the run's manifest records it, and a given value is never
changed. This module imports nothing heavy: the CLI reads it for ``--help`` and for the early
checks; the work is in :mod:`aot_cli.train.run`.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from aot_cli.artifacts.kinds import DatasetArtifact, check_model_location
from aot_cli.artifacts.store import MANIFEST
from aot_cli.config import StepConfig, opt
from aot_cli.errors import UserError
from aot_cli.vocab import (AOT_LOSSES, DEFAULT_BETA, DOMINANCE, DTYPE_CHOICES, LOSSES, LR_SCHEDULERS, OPTIMIZERS,
                           PADDING_FREE, PAIRED_ONLY_LOSSES, REFERENCE_MODES, SORT_SCOPES, SORTS, SURROGATES, TRACKERS)

MAX_LENGTH, MAX_PROMPT_LENGTH = 1024, 512
CHECKPOINT_STATE = "state.json"
_TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}

OBJECTIVE, MODEL, DATA, OPTIMIZATION, OUTPUT = "Objective", "Model", "Data", "Optimization", "Output"


@dataclass
class Config(StepConfig):
    """Align a causal LM on a prepared preference dataset (AOT by default)."""

    # objective
    loss: str = opt("aot", "--loss", help="Objective: paired AOT, unpaired AOT, the DPO/IPO baselines, or KTO.",
                    choices=LOSSES, panel=OBJECTIVE)
    surrogate: str = opt("logistic", "--surrogate", help="Convex surrogate h of the dominance violation (AOT).",
                         choices=SURROGATES, panel=OBJECTIVE)
    dominance: str = opt("first", "--dominance", help="Order of stochastic dominance AOT asks for: first (quantile "
                         "by quantile) or second (lower-tail means).", choices=DOMINANCE, panel=OBJECTIVE)
    beta: float | None = opt(None, "--beta", help="Scale of the log-ratios (default per loss: 0.01 for aot and "
                             "aot_unpaired, the paper's; 0.1 for dpo, ipo and kto, TRL's).", gt=0, panel=OBJECTIVE)
    desirable_weight: float = opt(1.0, "--desirable-weight", help="KTO: weight of the desirable (positive, chosen) "
                                  "samples' losses.", gt=0, panel=OBJECTIVE)
    undesirable_weight: float = opt(1.0, "--undesirable-weight", help="KTO: weight of the undesirable (negative, "
                                    "rejected) samples' losses.", gt=0, panel=OBJECTIVE)
    label_smoothing: float = opt(0.0, "--label-smoothing", help="Label smoothing of the logistic loss.",
                                 ge=0, le=0.5, panel=OBJECTIVE)
    sort: str = opt("hard", "--sort", help="Hard sort, or the differentiable soft sort.", choices=SORTS,
                    panel=OBJECTIVE)
    soft_sort_eps: float | None = opt(None, "--soft-sort-eps", help="Soft-sort regularization (with --sort "
                                         "soft).", gt=0, panel=OBJECTIVE)
    sort_scope: str = opt("global", "--sort-scope", help="Sort set: the whole optimizer step's batch (global, "
                          "exact via two passes) or each micro-batch (micro, TRL's behaviour).",
                          choices=SORT_SCOPES, panel=OBJECTIVE)
    ref: str = opt("precompute", "--ref", help="Reference log-probs: one cached pass before training, or "
                   "computed every step.", choices=REFERENCE_MODES, panel=OBJECTIVE)
    # model
    model: str = opt(None, "--model", help="Base model: a local directory or a Hugging Face id.", required=True,
                     metavar="MODEL", panel=MODEL)
    lora: bool = opt(True, "--lora/--full", help="Train LoRA adapters (default) or every weight.", panel=MODEL)
    lora_r: int = opt(16, "--lora-r", help="LoRA rank.", ge=1, panel=MODEL)
    lora_alpha: int = opt(32, "--lora-alpha", help="LoRA alpha (scale = alpha / r).", ge=1, panel=MODEL)
    lora_dropout: float = opt(0.0, "--lora-dropout", help="LoRA dropout (0 keeps the sort set's rewards "
                              "noise-free).", ge=0, lt=1, panel=MODEL)
    lora_target_modules: list[str] = opt(["all-linear"], "--lora-target-modules",
                                         help="Module names to adapt (repeat the flag); 'all-linear' = every "
                                              "linear layer but the output head.", panel=MODEL)
    init_adapter: Path | None = opt(None, "--init-adapter", help="Start from this LoRA adapter (e.g. an SFT "
                                       "one); it is also the reference.", metavar="DIR", panel=MODEL)
    load_in_4bit: bool = opt(False, "--load-in-4bit", help="QLoRA: load the base in 4 bits (bitsandbytes).",
                             panel=MODEL)
    dtype: str = opt("auto", "--dtype", help="Weight dtype: auto = bf16 on a bf16-capable GPU, else fp32.",
                     choices=DTYPE_CHOICES, panel=MODEL)
    gradient_checkpointing: bool = opt(False, "--gradient-checkpointing", help="Recompute activations in "
                                       "backward.", panel=MODEL)
    attn_implementation: str | None = opt(None, "--attn-implementation",
                                             help="Attention kernel: eager, sdpa, flash_attention_2 (default: "
                                                  "transformers' choice).", metavar="NAME", panel=MODEL)
    chat_template: Path | None = opt(None, "--chat-template", help="Jinja chat template file, for tokenizers "
                                        "without one.", metavar="FILE", panel=MODEL)
    # data
    data: Path = opt(None, "--data", help="Dataset directory made by `aot prepare`.", required=True,
                     metavar="DIR", panel=DATA)
    max_length: int | None = opt(MAX_LENGTH, "--max-length", help="Max tokens of prompt + completion.", ge=2,
                                    panel=DATA)
    max_prompt_length: int | None = opt(MAX_PROMPT_LENGTH, "--max-prompt-length", help="Max prompt tokens (cut "
                                           "from the left).", ge=1, panel=DATA)
    seed: int = opt(42, "--seed", help="Seed for the data order and initialization.", panel=DATA)
    positive_fraction: float | None = opt(None, "--positive-fraction", help="Unpaired data: share of positives "
                                             "among each step's samples (default: the data's own share, so an "
                                             "epoch sees every sample once).", gt=0, lt=1, panel=DATA)
    # optimization
    batch_size: int = opt(2, "--batch-size", help="Pairs per device micro-batch (unpaired data: twice this many "
                          "samples).", ge=1, panel=OPTIMIZATION)
    grad_accum: int = opt(8, "--grad-accum", help="Micro-batches per optimizer step.", ge=1, panel=OPTIMIZATION)
    lr: float = opt(5e-5, "--lr", help="Peak learning rate.", gt=0, panel=OPTIMIZATION)
    lr_scheduler: str = opt("linear", "--lr-scheduler", help="Learning-rate schedule after warmup.",
                            choices=LR_SCHEDULERS, panel=OPTIMIZATION)
    warmup_ratio: float = opt(0.1, "--warmup-ratio", help="Fraction of the steps spent warming the LR up.",
                              ge=0, lt=1, panel=OPTIMIZATION)
    weight_decay: float = opt(0.0, "--weight-decay", help="Decoupled weight decay.", ge=0, panel=OPTIMIZATION)
    optim: str = opt("adamw", "--optim", help="Optimizer (paged_adamw_8bit needs bitsandbytes).",
                     choices=OPTIMIZERS, panel=OPTIMIZATION)
    max_grad_norm: float = opt(1.0, "--max-grad-norm", help="Clip the gradient norm (0 = no clipping).", ge=0,
                               panel=OPTIMIZATION)
    max_steps: int | None = opt(None, "--max-steps", help="Optimizer steps (overrides --epochs).", ge=1,
                                   panel=OPTIMIZATION)
    epochs: float = opt(1.0, "--epochs", help="Passes over the training data.", gt=0, panel=OPTIMIZATION)
    padding_free: str = opt("auto", "--padding-free", help="Pack each micro-batch's rows into one sequence "
                            "(no padding computed; same values). auto = on with flash attention (varlen kernels) "
                            "and with sdpa on the CPU, off otherwise (docs/train.md).",
                            choices=PADDING_FREE, panel=OPTIMIZATION)
    logps_chunk_size: int = opt(1024, "--logps-chunk-size", help="Tokens per chunk of the output head (memory); "
                                "0 = the model's own full-logits head.", ge=0, panel=OPTIMIZATION)
    graph_memory: float = opt(0.0, "--graph-memory", help="GiB of activations --sort-scope global may keep from "
                              "its first pass, so those micro-batches skip the second forward (0 = replay all but "
                              "the last).", ge=0, metavar="GIB", panel=OPTIMIZATION)
    # output
    output: Path = opt(None, "-o", "--output", help="Run directory to write.", required=True, metavar="DIR",
                       panel=OUTPUT)
    overwrite: bool = opt(False, "--overwrite", help="Replace an existing output directory.", panel=OUTPUT)
    resume: str | None = opt(None, "--resume", help="Continue a run: 'auto' (latest checkpoint in "
                                "--output, or start fresh) or a checkpoints/step-N directory.",
                                metavar="auto|DIR", panel=OUTPUT)
    save_steps: int = opt(100, "--save-steps", help="Write a resumable checkpoint every N steps (0 = only at the "
                          "end).", ge=0, panel=OUTPUT)
    save_total_limit: int | None = opt(None, "--save-total-limit", help="Keep only the newest N checkpoints "
                                          "(0 or unset = all); older ones are deleted once a newer one is "
                                          "complete.", ge=0, metavar="N", panel=OUTPUT)
    report_to: str = opt("none", "--report-to", help="Also log metrics to this tracker.", choices=TRACKERS,
                         panel=OUTPUT)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta is None:
            self.beta = DEFAULT_BETA[self.loss]

    def preflight(self) -> None:
        """Every check that needs neither torch nor the data's rows: option combinations, the dataset
        artifact against the loss, the model and adapter paths, the tracker package, the output."""
        self.check_options()
        self.check_output()
        dataset = DatasetArtifact.load(self.data)
        if not dataset.paired and self.loss in PAIRED_ONLY_LOSSES:
            raise UserError(
                f"{self.data}: unpaired data (prompt, completion, label) cannot train --loss {self.loss}, which "
                "compares a chosen and a rejected answer to the same prompt; use --loss aot_unpaired (it sorts "
                "positives against negatives from any prompts) or --loss kto, or prepare paired data")
        if dataset.paired and self.positive_fraction is not None:
            raise UserError(f"--positive-fraction applies to unpaired data; {self.data} is paired (each step draws "
                            "whole pairs, one chosen and one rejected answer each)")
        check_model_location(self.model, "--model")
        if self.init_adapter is not None and not (Path(self.init_adapter) / "adapter_config.json").is_file():
            raise UserError(f"--init-adapter {self.init_adapter}: no adapter_config.json (expected a peft LoRA "
                            "adapter directory)")
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            raise UserError(f"--chat-template {self.chat_template}: file not found")
        if self.report_to in _TRACKER_PACKAGES and importlib.util.find_spec(_TRACKER_PACKAGES[self.report_to]) is None:
            raise UserError(f"--report-to {self.report_to} needs the {self.report_to} package: "
                            f"pip install 'aot-cli[{self.report_to}]'")

    def check_options(self) -> None:
        """Option combinations that are wrong whatever the data and the machine."""
        if self.sort == "soft" and self.soft_sort_eps is None:
            raise UserError("--sort soft needs --soft-sort-eps (the regularization, > 0)")
        if self.loss not in AOT_LOSSES:
            for flag, value, default in (("--surrogate", self.surrogate, "logistic"), ("--sort", self.sort, "hard"),
                                         ("--dominance", self.dominance, "first")):
                if value != default:
                    raise UserError(f"{flag} {value} applies to the aot losses only, not --loss {self.loss}")
        if self.loss != "kto":
            for flag, value in (("--desirable-weight", self.desirable_weight),
                                ("--undesirable-weight", self.undesirable_weight)):
                if value != 1.0:
                    raise UserError(f"{flag} {value:g} applies to --loss kto only, not --loss {self.loss}")
        if self.loss in ("ipo", "kto") and self.label_smoothing:
            raise UserError(f"--label-smoothing is not defined for --loss {self.loss}")
        if self.label_smoothing and self.surrogate != "logistic":
            raise UserError(f"--label-smoothing applies to --surrogate logistic only, not {self.surrogate}")
        if self.load_in_4bit and not self.lora:
            raise UserError("--load-in-4bit trains LoRA adapters on a frozen 4-bit base; it cannot be combined "
                            "with --full")
        if self.init_adapter is not None and not self.lora:
            raise UserError("--init-adapter continues a LoRA adapter; it cannot be combined with --full")
        if not self.lora and self.dtype == "fp16":
            # No fp32 master weights or loss scaling: AdamW's eps is 0 in fp16 and the first update writes -inf.
            raise UserError("--full with --dtype fp16 would train fp16 weights without loss scaling and break at "
                            "the first update; use --dtype bf16 or fp32 (or LoRA, whose adapters stay fp32)")
        if self.resume is not None and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other: choose one")

    def check_output(self) -> None:
        """The run directory: new, replaced (--overwrite), or an unfinished run to continue (--resume)."""
        out = Path(self.output)
        for item in (self.data, self.model, self.init_adapter, self.chat_template):
            if item is not None and Path(item).exists():
                inside = Path(item).resolve()
                if out.resolve() == inside or inside in out.resolve().parents or out.resolve() in inside.parents:
                    raise UserError(f"{out}: the run directory would overwrite or sit inside the input {item}; "
                                    "write to another directory")
        if self.resume is None:
            if out.exists() and not self.overwrite:
                raise UserError(f"{out} already exists (pass --overwrite to replace it, or --resume auto to "
                                "continue it)")
            return
        if (out / MANIFEST).is_file():
            raise UserError(f"{out} is a finished run (it has {MANIFEST}); nothing to resume "
                            "(use another -o, or --overwrite to train again)")
        if self.resume != "auto":
            state = Path(self.resume) / CHECKPOINT_STATE
            if not state.is_file():
                raise UserError(f"--resume {self.resume}: not a checkpoint (no {CHECKPOINT_STATE}; expected "
                                "OUT/checkpoints/step-N)")
            try:
                json.loads(state.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise UserError(f"--resume {self.resume}: {CHECKPOINT_STATE} is damaged") from None
