"""Options of the ``aot eval`` sub-commands: one config per suite, so ``--help`` shows what applies.

Every suite shares :class:`EvalOptions` (what to evaluate, where to write, on which device and
dtype, how many examples); each sub-command adds its own. ``preflight`` checks the model, the
input files and the output before torch or lm-eval is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aot_cli.artifacts.kinds import DatasetArtifact
from aot_cli.artifacts.store import check_output
from aot_cli.config import StepConfig, arg, opt
from aot_cli.errors import UserError
from aot_cli.eval.source import resolve_model, resolve_run
from aot_cli.eval.vllm_args import check_vllm
from aot_cli.vocab import DTYPE_CHOICES, EVAL_BACKENDS

OPENLLM_VERSIONS = ("v1", "v2")
DEFAULT_JUDGE = "weighted_alpaca_eval_gpt4_turbo"
# --help panels; the main "Options" panel holds what to evaluate and where to write.
LM_EVAL, HARDWARE, JUDGE, GENERATION = "lm-eval options", "Device and precision", "Judge", "Generation"
STATISTICS = "Statistics"


def check_backend(backend: str, model: str, device: str | None) -> None:
    """``--backend vllm``: installed, on CUDA, and a model it can load (before torch is imported)."""
    if backend == "vllm":
        check_vllm(resolve_model(model), device)


@dataclass
class EvalOptions(StepConfig):
    """What every suite takes."""

    model: str = arg(help="A merged model directory (`aot merge`), a run directory (`aot train`; a LoRA run "
                          "is evaluated as base + adapter), or a hub id.", metavar="MODEL")
    output: Path = opt(None, "-o", "--output", help="Eval directory to write.", required=True, metavar="DIR")
    overwrite: bool = opt(False, "--overwrite", help="Replace an existing output directory.")
    seed: int = opt(0, "--seed", help="Seed of lm-eval's few-shot sampling and of sampled generations.",
                    panel=LM_EVAL)
    dtype: str = opt("auto", "--dtype", help="Weight dtype for evaluation (auto = the dtype the weights are "
                     "saved in).", choices=DTYPE_CHOICES, panel=HARDWARE)
    device: str | None = opt(None, "--device", help="torch device, e.g. cuda:1 or cpu (default: cuda when "
                                "available, else cpu).", metavar="DEVICE", panel=HARDWARE)
    batch_size: int = opt(8, "--batch-size", help="Examples per forward pass.", ge=1, panel=HARDWARE)
    limit: int | None = opt(None, "--limit", help="Evaluate only the first N examples of each task "
                               "(quick checks; scores are then not comparable).", ge=1)

    def input_paths(self) -> list:
        """Local files and directories this eval reads (the output may not overlap them)."""
        return [self.model]

    def preflight(self) -> None:
        resolve_model(self.model)
        check_output(self.output, self.overwrite, inputs=self.input_paths())


@dataclass
class _LmEvalOptions:
    """Options that change lm-eval scores (recorded in results.json)."""

    num_fewshot: int | None = opt(None, "--num-fewshot", help="Override every task's number of shots.", ge=0,
                                     panel=LM_EVAL)
    apply_chat_template: bool | None = opt(None, "--apply-chat-template/--no-apply-chat-template",
                                              help="Format prompts with the model's chat template (default: "
                                                   "off for openllm v1, on for v2 and for eval tasks).",
                                              panel=LM_EVAL)
    fewshot_as_multiturn: bool | None = opt(None, "--fewshot-as-multiturn/--no-fewshot-as-multiturn",
                                               help="Few-shot examples as chat turns (default: with the "
                                                    "chat template).", panel=LM_EVAL)
    backend: str = opt("hf", "--backend", help="lm-eval's model: hf (transformers, any device) or vllm (CUDA "
                       "GPUs; the vllm extra; a LoRA run as base + adapter, a QLoRA run must be merged first).",
                       choices=EVAL_BACKENDS, panel=HARDWARE)

    def check_chat_settings(self) -> None:
        if self.fewshot_as_multiturn and self.apply_chat_template is False:
            raise UserError("--fewshot-as-multiturn needs the chat template (drop --no-apply-chat-template)")


@dataclass
class OpenLLMConfig(EvalOptions, _LmEvalOptions):
    """The Open LLM Leaderboard suite through lm-eval."""

    version: str = opt("v1", "--version", help="Leaderboard version: v1 (the paper's six tasks: ARC, HellaSwag, "
                       "MMLU, TruthfulQA, Winogrande, GSM8K) or v2 (IFEval, BBH, MATH, GPQA, MuSR, MMLU-Pro).",
                       choices=OPENLLM_VERSIONS)

    def preflight(self) -> None:
        self.check_chat_settings()
        super().preflight()
        check_backend(self.backend, self.model, self.device)


@dataclass
class TasksConfig(EvalOptions, _LmEvalOptions):
    """Any lm-eval tasks."""

    tasks: list[str] = opt([], "--tasks", help="lm-eval task or group names, comma separated (arc_easy,piqa) "
                           "or the flag repeated.", required=True)
    include_path: Path | None = opt(None, "--include-path", help="Directory of extra lm-eval task YAMLs "
                                       "(their data files are found relative to each YAML).", metavar="DIR")

    def input_paths(self) -> list:
        return [self.model, self.include_path]

    def preflight(self) -> None:
        self.check_chat_settings()
        if not any(name.strip() for value in self.tasks for name in value.split(",")):
            raise UserError("--tasks needs at least one task name")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise UserError(f"--include-path {self.include_path}: no such directory")
        super().preflight()
        check_backend(self.backend, self.model, self.device)


@dataclass
class AlpacaConfig(EvalOptions):
    """AlpacaEval: generation, then a pairwise judge."""

    seed: int = opt(0, "--seed", help="Seed of the sampled answers (hf: batch i of the length-sorted batches "
                    "under seed + i; vllm: instruction k under seed + k) and of the judge.", panel=GENERATION)
    batch_size: int = opt(8, "--batch-size", help="Instructions answered per generate call.", ge=1,
                          panel=HARDWARE)
    limit: int | None = opt(None, "--limit", help="Answer only the first N instructions (quick checks; win "
                               "rates are then not comparable).", ge=1)
    instructions: Path | None = opt(None, "--instructions", help="JSON/JSONL list of {instruction[, dataset, "
                                       "output]} instead of the 805 AlpacaEval instructions.", metavar="FILE")
    reference: Path | None = opt(None, "--reference", help="Baseline answers {instruction, output} "
                                    "(default: the set's GPT-4 Turbo outputs, or the instructions' 'output').",
                                    metavar="FILE")
    judge: str = opt(DEFAULT_JUDGE, "--judge", help="alpaca-eval annotator name or its configs.yaml (with the "
                     "alpaca extra; without it only the built-in stand-in for the default).", metavar="NAME",
                     panel=JUDGE)
    judge_base_url: str | None = opt(None, "--judge-base-url", help="OpenAI-compatible endpoint the annotator asks, "
                                        "e.g. a vLLM at http://127.0.0.1:8000/v1 (key: $OPENAI_API_KEY, never "
                                        "written).", metavar="URL", panel=JUDGE)
    judge_model: str | None = opt(None, "--judge-model", help="Judge model name at that endpoint (default: the "
                                     "annotator's own, gpt-4-1106-preview).", metavar="NAME", panel=JUDGE)
    max_new_tokens: int = opt(2048, "--max-new-tokens", help="Longest generated answer, in tokens.", ge=1,
                              panel=GENERATION)
    temperature: float = opt(0.7, "--temperature", help="Sampling temperature (0 = greedy).", ge=0,
                             panel=GENERATION)
    backend: str = opt("hf", "--backend", help="Generation engine: hf (transformers, any device) or vllm (CUDA "
                       "GPUs, the vllm extra; raise --batch-size, e.g. 256, to keep it busy).",
                       choices=EVAL_BACKENDS, panel=GENERATION)

    def input_paths(self) -> list:
        return [self.model, self.instructions, self.reference]

    def preflight(self) -> None:
        for flag, path in (("--instructions", self.instructions), ("--reference", self.reference)):
            if path is not None and not Path(path).is_file():
                raise UserError(f"{flag} {path}: file not found")
        resolve_model(self.model)
        check_backend(self.backend, self.model, self.device)
        # An unfinished eval directory (no manifest) is resumed: its outputs are kept.
        out = Path(self.output)
        if out.exists() and not self.overwrite and (not out.is_dir() or (out / "manifest.json").is_file()):
            raise UserError(f"{out} already exists (pass --overwrite to replace it)")
        check_output(self.output, True, inputs=self.input_paths())


@dataclass
class DominanceConfig(EvalOptions):
    """Reward dominance of a run on held-out preference data."""

    model: str = arg(help="A run directory made by `aot train` (its manifest names the reference model).",
                     metavar="RUN")
    limit: int | None = opt(None, "--limit", help="Score only the first N rows of the test split (quick "
                               "checks).", ge=1)
    data: Path | None = opt(None, "--data", help="Prepared dataset (`aot prepare`) whose test split is scored "
                               "(default: the dataset the run trained on).", metavar="DIR")
    beta: float | None = opt(None, "--beta", help="Reward scale beta (default: the run's).", gt=0)
    seed: int = opt(0, "--seed", help="Seed of the bootstrap resamples (bands and tests).", panel=STATISTICS)
    bootstrap: int = opt(1000, "--bootstrap", help="Bootstrap resamples for the confidence bands and the "
                         "dominance tests.", ge=100, le=100_000, panel=STATISTICS)
    confidence: float = opt(0.95, "--confidence", help="Confidence level of the bands and of the one-sided "
                            "upper bound on the violation ratio (the tests' level is 1 minus it).", gt=0.5, lt=1,
                            panel=STATISTICS)
    epsilon: float = opt(0.2, "--epsilon", help="Threshold eps0 of the almost-dominance test H0: violation "
                         "ratio >= eps0 (0.5 = the positives merely dominate more than they are dominated).",
                         gt=0, le=0.5, panel=STATISTICS)

    def input_paths(self) -> list:
        return [self.model, self.data]

    def preflight(self) -> None:
        resolve_run(self.model)
        check_output(self.output, self.overwrite, inputs=self.input_paths())
        if self.data is not None:  # not a dataset, or a damaged one: one line before torch is imported
            DatasetArtifact.load(self.data)
