"""The shared vocabulary: every name and rule that more than one module must agree on.

The CLI choices, the loss functions, the data layer and the loaders all read their lists from here,
so a new loss, format or dtype is added in one place and cannot drift between ``--help``, the
config check and the code that acts on it. Nothing here imports anything heavy: the CLI reads it
to build ``--help``.
"""

from __future__ import annotations

import re
from pathlib import Path

# --- objectives (aot_cli.losses) ----------------------------------------------------------------
LOSSES = ("aot", "aot_unpaired", "dpo", "ipo", "kto")
PAIRED_ONLY_LOSSES = ("aot", "dpo", "ipo")          # need (prompt, chosen, rejected) rows
AOT_LOSSES = ("aot", "aot_unpaired")                # the sorting losses: --surrogate, --sort, --dominance
# --beta when it is not given: the AOT paper's 0.01 for AOT, TRL's 0.1 (its DPOConfig/KTOConfig default,
# the DPO and KTO papers' value) for the baselines.
DEFAULT_BETA = {"aot": 0.01, "aot_unpaired": 0.01, "dpo": 0.1, "ipo": 0.1, "kto": 0.1}
SURROGATES = ("logistic", "squared_hinge", "least_squares")
SORTS = ("hard", "soft")
DOMINANCE = ("first", "second")                    # first- or second-order stochastic dominance
SORT_SCOPES = ("global", "micro")
REFERENCE_MODES = ("precompute", "online")
# --padding-free: pack each micro-batch's rows into one sequence; auto = on with these attention kernels
# (varlen: no work between rows), off with the others (a dense block-diagonal mask costs more than padding).
PADDING_FREE = ("auto", "on", "off")
PADDING_FREE_ATTENTION = ("flash_attention_2", "flash_attention_3")

# --- optimization -------------------------------------------------------------------------------
OPTIMIZERS = ("adamw", "sgd", "paged_adamw_8bit")
LR_SCHEDULERS = ("linear", "cosine", "constant")
TRACKERS = ("none", "tensorboard", "wandb")
# The accelerate launch configs shipped in aot_cli/configs/accelerate/NAME.yaml (docs/distributed.md).
ACCELERATE_CONFIGS = ("ddp", "fsdp", "zero2", "zero3")

# --- dtypes: the short names users type, and the torch attribute each one names -----------------
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DTYPE_CHOICES = ("auto", *DTYPES)
DTYPE_NAMES = {torch_name: short for short, torch_name in DTYPES.items()}

# --- data shapes (aot_cli.data.formats defines what each one means) ----------------------------
SHAPES = ("paired-strings", "paired-messages", "hh", "sharegpt", "ultrafeedback", "scored", "pku", "labelled")
FORMATS = ("auto", *SHAPES)
BINARIZE_METHODS = ("best-vs-worst", "best-vs-random")
PREFERENCES = ("better", "safer")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

# --- evaluation backends (aot_cli.eval.vllm_args maps a model onto vLLM) ----------------------------
# hf: transformers in-process (any device, the default); vllm: vLLM on CUDA GPUs (the optional
# `vllm` extra, pip install 'aot-cli[vllm]').
EVAL_BACKENDS = ("hf", "vllm")

# --- model directories ---------------------------------------------------------------------------
# Weight files a saved model directory may hold: safetensors (what aot writes and prefers) and the
# legacy pickled shards transformers still loads.
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")

# A hub id: ``name`` or ``org/name`` of letters, digits, '.', '_' and '-'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def is_local_path(spec: str | Path) -> bool:
    """Whether `spec` names a local file or directory rather than a Hugging Face hub id.

    The one rule every step uses: an existing path is local; so is anything a hub id cannot be
    (it starts with '.', '/' or '~', has more than one '/', '..', or ends in a data file suffix),
    so a mistyped local path is reported as missing instead of being sent to the hub.
    """
    text = str(spec)
    if Path(text).expanduser().exists():
        return True
    if text.startswith((".", "/", "~")) or ".." in text or not _HUB_ID.match(text):
        return True
    return Path(text).suffix.lower() in DATA_SUFFIXES


def has_weights(directory: Path) -> bool:
    """Whether a model directory holds at least one weight file (:data:`WEIGHT_PATTERNS`)."""
    return any(any(Path(directory).glob(pattern)) for pattern in WEIGHT_PATTERNS)
