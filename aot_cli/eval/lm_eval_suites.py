"""`aot eval openllm` and `aot eval tasks`: the Open LLM Leaderboard suites and any lm-eval task.

All three go through one code path, ``lm_eval.simple_evaluate`` in-process with the "hf" model, so
the offline tests on local tasks exercise exactly what the leaderboard suites run. ``--backend vllm``
swaps in lm-eval's "vllm" model on CUDA GPUs (the optional extra), with model_args built from the same
resolved MODEL (:mod:`aot_cli.eval.vllm_args`). What changes
scores is passed explicitly and recorded (lm-eval #1841, #1645, #2322 are all about silent
defaults): chat template on or off, few-shot as multi-turn, shots, batch size, dtype, device, limit.
Per-suite chat-template defaults follow the leaderboards: v1 scored raw prompts, v2 applies the
model's chat template with few-shot examples as turns; local tasks default to the chat template
because aot trains chat models.

lm-eval's TaskManager indexes every task YAML (~15 s), so it is built once per run.

A QLoRA run is evaluated as it was trained, the adapter on the 4-bit base, and that model is loaded
here (:func:`aot_cli.artifacts.models.load_run`) and handed to lm-eval as ``pretrained``: lm-eval's own
loader cannot make it with transformers 5 (``load_in_4bit=True`` is no longer a ``from_pretrained``
argument, and a ``quantization_config`` in model_args collides with the one lm-eval passes itself), and
ours is the one that keeps the 4-bit layers computing as in training (bitsandbytes' CPU repacking off).
Given the bare adapter, lm-eval would put it on the unquantized base: a model nobody trained.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import lm_eval
import yaml
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from aot_cli.artifacts.models import load_for_generation, resolve_device
from aot_cli.artifacts.store import atomic_dir
from aot_cli.console import info
from aot_cli.errors import UserError
from aot_cli.eval import leaderboard
from aot_cli.eval.config import OpenLLMConfig, TasksConfig
from aot_cli.eval.report import announce, write_eval
from aot_cli.eval.source import ModelSource, resolve_model
from aot_cli.eval.vllm_args import lm_eval_model_args
from aot_cli.vocab import DTYPES

TASKS_DIR = Path(__file__).parent / "tasks"
V1_GROUP_FILE = TASKS_DIR / "openllm_v1.yaml"
SUITE_TASKS = {"openllm-v1": ["aot_openllm_v1"], "openllm-v2": ["leaderboard"]}
CHAT_TEMPLATE_DEFAULT = {"openllm-v1": False, "openllm-v2": True, "lm-eval": True}


def group_shots(path: Path = V1_GROUP_FILE) -> dict[str, int]:
    """{task or group name: num_fewshot} of a group YAML's members (the v1 suite's shots)."""
    group = yaml.safe_load(path.read_text())
    return {entry.get("task") or entry["group"]: entry["num_fewshot"] for entry in group["task"]}


def split_task_names(values: list[str]) -> list[str]:
    """``--tasks a,b --tasks c`` -> [a, b, c]."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def task_manager(include_path: Path | None, tasks: list[str]) -> Any:
    """One TaskManager for the run: lm-eval's tasks + the suites shipped here + the user's directory.

    Indexing lm-eval's own ~10k task YAMLs takes ~15-20 s; when every task asked for is in the user's
    directory, that directory alone is indexed (instant)."""
    if include_path is not None:
        local = TaskManager(include_path=[str(include_path)], include_defaults=False)
        if all(name in local.all_tasks for name in tasks):
            return local
    info("indexing lm-eval tasks")
    return TaskManager(include_path=[str(TASKS_DIR)] + ([str(include_path)] if include_path else []))


def check_task_names(names: list[str], known: list[str]) -> None:
    """Unknown task names are a UserError suggesting the closest known ones."""
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise UserError(f"--tasks: unknown lm-eval task {name!r}{hint}; local tasks need "
                            "--include-path DIR (a directory of lm-eval task YAMLs)")


def _resolve_files(value: Any, yaml_dir: Path, task: str, yaml_path: Path) -> Any:
    """data_files (a path, a list, or a dict of them) with relative paths made absolute next to the YAML."""
    if isinstance(value, dict):
        return {k: _resolve_files(v, yaml_dir, task, yaml_path) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_files(v, yaml_dir, task, yaml_path) for v in value]
    path = Path(str(value)).expanduser()
    if path.is_absolute() or "://" in str(value):
        return value
    beside = yaml_dir / path
    if not beside.exists():
        raise UserError(f"task {task} ({yaml_path}): data file {value} not found (looked for {beside}: "
                        "data_files are relative to the task's YAML file)")
    return str(beside.resolve())


def local_task_specs(manager: Any, tasks: list[str], include_path: Path | None) -> list[str | dict]:
    """The tasks to run, with each task YAML of `include_path` given as its config with its data files
    found next to the YAML (lm-eval would look for them relative to the current directory, so a
    local task would only work from one directory). Other names are passed through."""
    if include_path is None:
        return list(tasks)
    root = Path(include_path).resolve()
    specs: list[str | dict] = []
    for name in tasks:
        entry = manager.task_index.get(name)
        yaml_path = Path(entry.yaml_path).resolve() if entry is not None and entry.yaml_path else None
        if yaml_path is None or root not in yaml_path.parents or "task" not in (config := load_yaml(yaml_path)):
            specs.append(name)
            continue
        files = (config.get("dataset_kwargs") or {}).get("data_files")
        if files is not None:
            config["dataset_kwargs"] = {**config["dataset_kwargs"],
                                        "data_files": _resolve_files(files, yaml_path.parent, name, yaml_path)}
        specs.append(config)
    return specs


def resolve_chat_settings(suite: str, apply_chat_template: bool | None,
                          fewshot_as_multiturn: bool | None) -> tuple[bool, bool]:
    """(apply_chat_template, fewshot_as_multiturn) after the suite's defaults; multi-turn needs the template."""
    chat = CHAT_TEMPLATE_DEFAULT[suite] if apply_chat_template is None else apply_chat_template
    multiturn = chat if fewshot_as_multiturn is None else fewshot_as_multiturn
    if multiturn and not chat:
        raise UserError("--fewshot-as-multiturn needs the chat template (drop --no-apply-chat-template)")
    return chat, multiturn


def run_openllm(config: OpenLLMConfig) -> dict:
    """`aot eval openllm`: the leaderboard's fixed tasks and scores."""
    suite = f"openllm-{config.version}"
    return _run(config, suite, SUITE_TASKS[suite], include_path=None)


def run_tasks(config: TasksConfig) -> dict:
    """`aot eval tasks`: any lm-eval tasks, every metric they report."""
    return _run(config, "lm-eval", split_task_names(config.tasks), include_path=config.include_path)


def _run(config: Any, suite: str, tasks: list[str], include_path: Path | None) -> dict:
    config.preflight()
    source = resolve_model(config.model)
    device = resolve_device(config.device)
    with atomic_dir(config.output, overwrite=config.overwrite, inputs=config.input_paths()) as tmp:
        scores, settings = evaluate(config, suite, tasks, include_path, source, device, tmp)
        results = write_eval(tmp, config, suite, source, scores, settings)
    announce(results, Path(config.output), ("lm_eval_results.json", "samples/"))
    return results


def _write_samples(samples: dict, out: Path) -> None:
    """lm-eval's per-example records, one JSONL file per task, under OUT/samples/."""
    folder = out / "samples"
    folder.mkdir()
    for task, rows in samples.items():
        with open(folder / f"{task}.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")


def hf_model_args(source: ModelSource, dtype: str) -> dict:
    """model_args of lm-eval's ``hf`` model as recorded: the weights, the tokenizer, the dtype, a LoRA
    run's adapter (``peft``), and ``load_in_4bit`` for a QLoRA run (whose model is loaded here instead:
    module docstring)."""
    args = {"pretrained": source.pretrained, "tokenizer": source.tokenizer, "dtype": DTYPES.get(dtype, "auto")}
    if source.peft:
        args["peft"] = source.peft
    if source.load_in_4bit:
        args["load_in_4bit"] = True
    return args


def evaluate(config: Any, suite: str, tasks: list[str], include_path: Path | None, source: ModelSource,
             device: str, out: Path) -> tuple[dict, dict]:
    """Run lm-eval on `tasks`; write raw results and samples into `out`; return (scores, settings)."""
    chat, multiturn = resolve_chat_settings(suite, config.apply_chat_template, config.fewshot_as_multiturn)
    manager = task_manager(include_path, tasks)
    check_task_names(tasks, manager.all_tasks)
    specs = local_task_specs(manager, tasks, include_path)

    vllm = config.backend == "vllm"
    model_args = lm_eval_model_args(source, config.dtype, config.seed) if vllm else hf_model_args(source, config.dtype)
    lm_eval_args = model_args
    if source.load_in_4bit:  # the run's model as trained (module docstring); model_args stays its description
        lm_eval_args = {"pretrained": load_for_generation(source, config.dtype, device)[0],
                        "tokenizer": source.tokenizer}
    try:
        results = lm_eval.simple_evaluate(   # vLLM takes its GPUs from CUDA_VISIBLE_DEVICES, not a device
            model=config.backend, model_args=lm_eval_args, tasks=specs, num_fewshot=config.num_fewshot,
            batch_size=config.batch_size, device=None if vllm else device, limit=config.limit,
            apply_chat_template=chat, fewshot_as_multiturn=multiturn, task_manager=manager,
            log_samples=True, random_seed=config.seed, numpy_random_seed=config.seed,
            torch_random_seed=config.seed, fewshot_random_seed=config.seed,
        )
    except OSError as exc:  # model or task data neither reachable nor in the HF cache
        raise UserError(f"lm-eval could not load the model or a task's data ({str(exc).splitlines()[0]}); "
                        "hub models and datasets must be reachable or already in the Hugging Face cache") from None
    _write_samples(results.pop("samples", {}), out)
    results["config"]["model_args"] = model_args
    (out / "lm_eval_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    raw = results["results"]
    if suite == "openllm-v1":
        scores = leaderboard.v1_scores(raw)
    elif suite == "openllm-v2":
        scores = leaderboard.v2_scores(raw)
    else:
        scores = leaderboard.task_scores(raw)
    settings = {
        "lm_eval_version": lm_eval.__version__,
        "tasks": tasks, "include_path": str(include_path) if include_path else None,
        "apply_chat_template": chat, "fewshot_as_multiturn": multiturn,
        "num_fewshot": config.num_fewshot, "n_shot": results.get("n-shot", {}),
        "limit": config.limit, "batch_size": config.batch_size, "dtype": config.dtype, "device": device,
        "seed": config.seed, "backend": config.backend, "model_args": model_args,
    }
    return scores, settings
