"""What MODEL names: a merged model directory, a training run, or a hub id.

Every suite needs the same three answers: which weights to load (``pretrained``), which LoRA
adapter to put on top (``peft``, for a LoRA run), and where the tokenizer with its chat template
lives (a run keeps it beside the adapter). Resolving once here keeps lm-eval, generation and
dominance loading the same model for the same MODEL. Nothing heavy is imported: the CLI resolves
MODEL before torch is loaded, so a wrong path is reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aot_cli.artifacts.kinds import ModelArtifact, RunArtifact, artifact_kind, damaged_file
from aot_cli.errors import UserError
from aot_cli.vocab import has_weights, is_local_path


@dataclass(frozen=True)
class ModelSource:
    spec: str                        # MODEL as given
    kind: str                        # "run" | "model" | "hub"
    pretrained: str                  # the weights lm-eval / transformers load
    peft: str | None              # LoRA adapter directory (a LoRA run), else None
    tokenizer: str                   # where the tokenizer and chat template are
    run: RunArtifact | None       # the run, when MODEL is one (dominance needs its reference)
    merged_from: Path | None = None  # a merged model's source run

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "pretrained": self.pretrained, "peft": self.peft}

    @property
    def load_in_4bit(self) -> bool:
        """A QLoRA run is evaluated as it was trained: the adapter on the 4-bit base."""
        return bool(self.run is not None and self.run.config.get("load_in_4bit"))


def resolve_model(spec: str) -> ModelSource:
    """Classify MODEL; a local directory that cannot be evaluated is a UserError naming the fix."""
    path = Path(spec).expanduser()
    if path.is_dir():
        kind = artifact_kind(path)
        if kind == "run":
            run = RunArtifact.load(path)
            if run.lora:
                return ModelSource(spec, "run", run.base_model, str(run.adapter_dir), str(run.adapter_dir), run)
            return ModelSource(spec, "run", str(run.weights_dir), None, str(run.weights_dir), run)
        if kind == "model":
            model = ModelArtifact.load(path)
            return ModelSource(spec, "model", str(path), None, str(path), None, model.source_run)
        if kind in ("dataset", "eval"):
            raise UserError(f"{spec}: is a {kind!r} artifact, expected a model directory, a run directory or a hub id")
        if not (path / "config.json").is_file() or not has_weights(path):
            raise UserError(f"{spec}: model directory without weights (expected config.json and *.safetensors; "
                            "make one with `aot merge RUN -o DIR`, or pass a run directory)")
        problem = damaged_file(path)
        if problem is not None:  # a cut-short download or copy: say so before lm-eval or torch chokes on it
            raise UserError(f"{problem}; copy or download the model again")
        return ModelSource(spec, "model", str(path), None, str(path), None)
    if path.exists():
        raise UserError(f"{spec}: is a file, expected a model directory, a run directory or a hub id")
    if is_local_path(spec):
        raise UserError(f"{spec}: no such directory (and not a hub id like org/name)")
    return ModelSource(spec, "hub", spec, None, spec, None)


def resolve_run(spec: str) -> RunArtifact:
    """MODEL as a run (for what needs its reference); a merged model names the run it came from."""
    source = resolve_model(spec)
    if source.run is not None:
        return source.run
    hint = f" (this model was merged from {source.merged_from}: pass that)" if source.merged_from else ""
    raise UserError(f"{spec}: `aot eval dominance` needs a run directory made by `aot train` "
                    f"(its manifest names the reference model){hint}")
