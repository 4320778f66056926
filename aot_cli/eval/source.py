"""What MODEL names: a merged model directory, a training run, or a hub id.

Every suite needs the same three answers: which weights to load (``pretrained``), which LoRA
adapter to put on top (``peft``, for a LoRA run), and where the tokenizer with its chat template
lives (a run keeps it beside the adapter). Resolving once here keeps lm-eval, generation and
dominance loading the same model for the same MODEL.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from aot_cli.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


@dataclass(frozen=True)
class ModelSource:
    spec: str                 # MODEL as given
    kind: str                 # "run" | "model" | "hub"
    pretrained: str           # the weights lm-eval / transformers load
    peft: Optional[str]       # LoRA adapter directory (a LoRA run), else None
    tokenizer: str            # where the tokenizer and chat template are
    run_dir: Optional[Path]   # the run, when MODEL is one (dominance needs its reference)

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "pretrained": self.pretrained, "peft": self.peft}


def _has_weights(directory: Path) -> bool:
    return any(any(directory.glob(pattern)) for pattern in _WEIGHT_GLOBS)


def resolve_model(spec: str) -> ModelSource:
    """Classify MODEL; a local directory that cannot be evaluated is a UserError naming the fix."""
    from aot_cli.merge import inspect_run

    path = Path(spec).expanduser()
    if path.is_dir():
        manifest_file = path / "manifest.json"
        kind = json.loads(manifest_file.read_text()).get("kind") if manifest_file.is_file() else None
        if kind == "run":
            run = inspect_run(path)
            if run.adapter:
                return ModelSource(spec, "run", run.base_model, str(run.weights_dir), str(run.weights_dir), path)
            return ModelSource(spec, "run", str(run.weights_dir), None, str(run.weights_dir), path)
        if kind in ("dataset", "eval"):
            raise UserError(f"{spec}: is a {kind!r} artifact, expected a model directory, a run directory or a hub id")
        if not (path / "config.json").is_file() or not _has_weights(path):
            raise UserError(f"{spec}: model directory without weights (expected config.json and *.safetensors; "
                            "make one with `aot merge RUN -o DIR`, or pass a run directory)")
        return ModelSource(spec, "model", str(path), None, str(path), None)
    if path.exists():
        raise UserError(f"{spec}: is a file, expected a model directory, a run directory or a hub id")
    if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise UserError(f"{spec}: no such directory (and not a hub id like org/name)")
    return ModelSource(spec, "hub", spec, None, spec, None)


def resolve_device(device: Optional[str]) -> str:
    """The device every suite uses: the one asked for, else CUDA when there is one, else CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


TORCH_DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def load_model(source: ModelSource, dtype: str, device: str) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer with its chat template) for generation/scoring."""
    import torch
    from transformers import AutoModelForCausalLM

    from aot_cli.data.tokenize import load_tokenizer

    tokenizer = load_tokenizer(source.tokenizer)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, TORCH_DTYPES[dtype])
    try:
        model = AutoModelForCausalLM.from_pretrained(source.pretrained, dtype=torch_dtype)
    except OSError as exc:
        raise UserError(f"cannot load model {source.pretrained!r} ({str(exc).splitlines()[0]})") from None
    if source.peft:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.peft)
    return model.to(device).eval(), tokenizer
