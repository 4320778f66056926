"""The four artifact kinds as typed readers: the one way a step reads what another step wrote.

``DatasetArtifact.load(path)`` (and the others) reads the manifest, checks its kind, checks that
the files the kind promises are there, and exposes what callers need as attributes, so no caller
digs through manifest dictionaries or guesses defaults. docs/architecture.md lists every file and
manifest field of each kind and who reads it.

Loading the *contents* (the Arrow splits, the model weights) is left to the modules that need the
heavy libraries: :mod:`aot_cli.data.dataset` and :mod:`aot_cli.artifacts.models`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

from aot_cli.artifacts.store import MANIFEST, json_problem, read_manifest, safetensors_problem, sha256_file
from aot_cli.errors import UserError
from aot_cli.vocab import has_weights, is_local_path

A = TypeVar("A", bound="Artifact")

RESULTS = "results.json"
ADAPTER, FULL_MODEL = "adapter", "model"


@dataclass(frozen=True)
class Artifact:
    """A finished artifact directory: its path and its manifest."""

    path: Path
    manifest: dict

    kind: ClassVar[str] = ""
    hint: ClassVar[str] = ""  # how to make one, for error messages
    remake: ClassVar[str] = ""  # how to make a damaged one again

    @classmethod
    def load(cls: type[A], path: str | Path) -> A:
        """Read and check the artifact at `path`; a UserError says what is wrong and how to fix it."""
        path = Path(path).expanduser()
        if path.is_file():
            raise UserError(f"{path}: a file, not an aot {cls.kind} directory; {cls.hint}")
        artifact = cls.read(path)
        artifact.check_complete()
        return artifact

    @classmethod
    def read(cls: type[A], path: str | Path) -> A:
        """The record only (kind checked, files not): for callers that need the manifest, not the
        contents, e.g. to label a table row by the run a model was merged from."""
        path = Path(path).expanduser()
        if path.is_file():
            raise UserError(f"{path}: a file, not an aot {cls.kind} directory; {cls.hint}")
        return cls(path, read_manifest(path, kind=cls.kind))

    def check_complete(self) -> None:
        """Raise UserError when a file this kind promises is missing (subclasses list them)."""

    def _require(self, *names: str) -> None:
        for name in names:
            if not (self.path / name).exists():
                raise UserError(f"{self.path}: {name} is missing, so the {self.kind} artifact is damaged or was "
                                f"edited; {self.hint}")

    def _refuse_damaged(self, problem: str | None) -> None:
        """Raise the one-line error for a damaged file (`problem` from :func:`damaged_file`): a file cut
        short by a kill or a full disk is reported here, not as a loader's traceback later."""
        if problem is not None:
            raise UserError(f"{problem}: the {self.kind} artifact {self.path} is damaged; {self.remake}")

    @property
    def config(self) -> dict:
        """The resolved config of the step that made it."""
        return self.manifest.get("config", {})

    @property
    def summary(self) -> dict:
        return self.manifest.get("summary", {})

    @property
    def fingerprint(self) -> str:
        """A content fingerprint: the one the step recorded, else the manifest's own hash."""
        return self.summary.get("fingerprint") or sha256_file(self.path / MANIFEST)[:16]


@dataclass(frozen=True)
class DatasetArtifact(Artifact):
    """``aot prepare``'s output: a DatasetDict (train, test) saved with ``save_to_disk``."""

    kind: ClassVar[str] = "dataset"
    hint: ClassVar[str] = "make one with `aot prepare SOURCE -o DIR`"
    remake: ClassVar[str] = "prepare it again (`aot prepare ... --overwrite`)"

    def check_complete(self) -> None:
        self._require("dataset_dict.json", "train", "test")
        if "paired" not in self.summary:
            raise UserError(f"{self.path}/{MANIFEST}: summary.paired is missing; {self.hint}")

    @property
    def paired(self) -> bool:
        """Rows are (prompt, chosen, rejected); otherwise (prompt, completion, label)."""
        return bool(self.summary["paired"])

    @property
    def counts(self) -> dict[str, int]:
        return self.summary.get("counts", {})


@dataclass(frozen=True)
class RunArtifact(Artifact):
    """``aot train``'s output: the trained LoRA adapter (``adapter/``) or full model (``model/``),
    each with its tokenizer, plus metrics and the base model and dataset it was made from."""

    kind: ClassVar[str] = "run"
    hint: ClassVar[str] = "train one with `aot train ... -o DIR` (a run in progress has no manifest yet)"
    remake: ClassVar[str] = "train it again (`aot train ... --overwrite`)"

    def check_complete(self) -> None:
        if (self.path / ADAPTER).is_dir():
            self._require(f"{ADAPTER}/adapter_config.json")
            if not has_weights(self.path / ADAPTER):
                self._require(f"{ADAPTER}/adapter_model.safetensors")
        elif (self.path / FULL_MODEL).is_dir():
            self._require(f"{FULL_MODEL}/config.json")
            if not has_weights(self.path / FULL_MODEL):
                self._require(f"{FULL_MODEL}/model.safetensors")
        else:
            raise UserError(f"{self.path}: neither {ADAPTER}/ nor {FULL_MODEL}/ found; {self.hint}")
        if not self.config.get("model"):
            raise UserError(f"{self.path}/{MANIFEST}: config.model (the base model) is missing; {self.hint}")
        self._refuse_damaged(adapter_config_problem(self.trained_dir) if self.lora else damaged_file(self.trained_dir))
        try:  # every reader of a run loads its base too (a LoRA run is base + adapter; eval, its reference)
            check_model_location(self.base_model, "the base model")
        except UserError as exc:
            raise UserError(f"{self.path}: {exc}; the run was trained on it (config.model in its {MANIFEST}): "
                            "put it back there") from None

    @property
    def lora(self) -> bool:
        return (self.path / ADAPTER).is_dir()

    @property
    def adapter_dir(self) -> Path | None:
        """The trained LoRA adapter (a LoRA run), else None."""
        return self.path / ADAPTER if self.lora else None

    @property
    def weights_dir(self) -> Path | None:
        """The trained full model (a full fine-tuning run), else None."""
        return None if self.lora else self.path / FULL_MODEL

    @property
    def trained_dir(self) -> Path:
        """Where the trained weights and the tokenizer (with its chat template) are."""
        return self.path / (ADAPTER if self.lora else FULL_MODEL)

    @property
    def base_model(self) -> str:
        """The model training started from: a hub id or an absolute local path."""
        return str(self.config["model"])

    @property
    def init_adapter(self) -> str | None:
        value = self.config.get("init_adapter")
        return str(value) if value else None

    @property
    def dataset(self) -> Path | None:
        """The dataset artifact the run trained on."""
        value = self.config.get("data")
        return Path(value) if value else None

    @property
    def paired(self) -> bool:
        return bool(self.summary.get("paired_data", True))

    @property
    def beta(self) -> float:
        return float(self.config.get("beta", 0.01))


@dataclass(frozen=True)
class ModelArtifact(Artifact):
    """``aot merge``'s output: a plain ``save_pretrained`` directory (safetensors, tokenizer)."""

    kind: ClassVar[str] = "model"
    hint: ClassVar[str] = "make one with `aot merge RUN -o DIR`"
    remake: ClassVar[str] = "merge it again (`aot merge RUN -o DIR --overwrite`)"

    def check_complete(self) -> None:
        self._require("config.json", *self.summary.get("shards", []))
        self._refuse_damaged(damaged_file(self.path))

    @property
    def weights_dir(self) -> Path:
        return self.path

    @property
    def source_run(self) -> Path | None:
        value = self.summary.get("source_run")
        return Path(value) if value else None

    @property
    def base_model(self) -> str | None:
        return self.summary.get("base_model")


@dataclass(frozen=True)
class EvalArtifact(Artifact):
    """An ``aot eval`` sub-command's output: ``results.json``, ``report.md`` and raw outputs."""

    kind: ClassVar[str] = "eval"
    hint: ClassVar[str] = "make one with `aot eval SUITE MODEL -o DIR`"
    remake: ClassVar[str] = "run the eval again (`aot eval SUITE MODEL -o DIR --overwrite`)"

    def check_complete(self) -> None:
        self._require(RESULTS)

    @property
    def results(self) -> dict:
        """results.json: {suite, model, scores, settings, versions, notes}."""
        path = self.path / RESULTS
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}: not valid JSON; the eval artifact is damaged: run the eval again") from None
        if not isinstance(results, dict) or not isinstance(results.get("scores"), dict):
            raise UserError(f"{path}: no 'scores' mapping; the eval artifact is damaged: run the eval again")
        return results

    @property
    def suite(self) -> str:
        return str(self.summary.get("suite", ""))


ARTIFACT_TYPES: dict[str, type[Artifact]] = {
    cls.kind: cls for cls in (DatasetArtifact, RunArtifact, ModelArtifact, EvalArtifact)}


def load_artifact(path: str | Path) -> Artifact:
    """Whatever artifact `path` is, as its typed reader."""
    manifest = read_manifest(path)
    return ARTIFACT_TYPES[manifest["kind"]].load(path)


def artifact_kind(path: str | Path) -> str | None:
    """The kind of the artifact at `path`, or None when it is not an artifact directory."""
    path = Path(path).expanduser()
    if not (path / MANIFEST).is_file():
        return None
    return read_manifest(path)["kind"]


def check_model_location(spec: str, flag: str) -> None:
    """Fail fast (before any heavy import) when a local model directory cannot be loaded: missing,
    a file, no config.json, or no weights. Hub ids pass: loading them reports what is wrong."""
    path = Path(spec).expanduser()
    if not is_local_path(spec):
        return
    if not path.exists():
        raise UserError(f"{flag} {spec}: no such model directory (give a model directory or a hub id like org/name)")
    if not path.is_dir():
        raise UserError(f"{flag} {spec}: a file, not a model directory")
    if not (path / "config.json").is_file():
        raise UserError(f"{flag} {spec}: no config.json (expected a save_pretrained model directory)")
    if not has_weights(path):
        raise UserError(f"{flag} {spec}: no weights found (*.safetensors or *.bin); is the download or save complete?")
    problem = damaged_file(path)
    if problem is not None:
        raise UserError(f"{flag} {spec}: {problem}; the model directory is damaged (download or save it again)")


def damaged_file(directory: str | Path) -> str | None:
    """``FILE: what is wrong`` for the first JSON or safetensors file directly in `directory` that does
    not parse or is not whole, else None. Cheap: safetensors files are checked by their header."""
    for path in sorted(Path(directory).iterdir()):
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
        elif path.suffix == ".json":
            problem = json_problem(path)
        else:
            continue
        if problem is not None:
            return f"{path}: {problem}"
    return None


def adapter_config_problem(directory: str | Path) -> str | None:
    """``FILE: what is wrong`` when `directory` is not a readable peft adapter: no adapter_config.json,
    a damaged one, one that is not a config object naming its ``peft_type``, or a damaged weight or
    JSON file beside it; None when it looks loadable."""
    config = Path(directory) / "adapter_config.json"
    if not config.is_file():
        return f"{config}: missing"
    problem = damaged_file(directory)
    if problem is not None:
        return problem
    data = json.loads(config.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("peft_type"), str):
        return f"{config}: not a peft adapter config (no 'peft_type')"
    return None
