"""The GPU check: `aot train` (LoRA, full, QLoRA; micro and global sort scope) and TRL's
``DPOTrainer(loss_type="aot")`` on one large GPU, in under 8 minutes; samples/s, peak CUDA memory
and MFU of each, as JSON and a Markdown table.

    python benchmarks/gpu_check.py --out bench-out/gpu-check          # one CUDA GPU (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --cpu-dry-run --out bench-out/dry  # the same path: tiny model, CPU, fp32

Builds a random-init Llama (config ``0.5b``: hidden 1024, 24 layers, vocabulary 32000, 468 M
parameters; ``smoke`` in a dry run) with its tokenizer and a synthetic paired dataset locally (no
downloads), then runs each configuration in its own process, `aot train` through its command line
(benchmarks/run_aot.py: ``python -m aot_cli train`` with the step clock), so that an OOM or a
missing kernel is one failed row with its one-line reason and the other rows still run. A run is
killed after ``--run-timeout`` seconds; a run is not started when less than ``MIN_RUN_S`` of the
``--budget`` (the whole check, set-up included) is left. OUT/gpu_check.json and OUT/gpu_check.md
are rewritten after every run, so a check cut short still leaves every finished row.

MFU (model FLOPs utilization) = (pairs/s x model FLOPs per pair) / the device's peak dense bf16
FLOP/s. Model FLOPs of one sequence of ``s`` tokens (chosen and rejected each count as one):
``(6 N_trained + 4 N_frozen) s + 12 L d s^2``. ``N``: the parameters of the matrix weights but the
input embedding (a lookup), head included; trained weights cost 6 FLOPs per token (forward 2,
input and weight gradients 2 + 2), frozen ones 4 (no weight gradient: LoRA's base, QLoRA's
dequantized base); LoRA's adapters are ``r (in + out)`` trained parameters per adapted linear
layer. ``12 L d s^2``: attention scores and their weighted sum (``L`` layers, ``d`` = heads x head
dim), forward and backward, not halved for the causal mask (PaLM's convention). Not counted, so
they lower MFU as overhead: reference log-probs (TRL's online forward, our precomputed pass),
the global scope's first no-grad pass, recomputation under gradient checkpointing, padding.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
import transformers
from bench_setup import CONFIGS, BenchConfig, build_dataset, build_model, conversation_length
from datasets import load_from_disk
from safetensors import safe_open
from train_bench import aot_command, child_env, machine, run_process, summarize, trl_command
from transformers import AutoTokenizer

# In this order: each kind of weights with both sort scopes and TRL beside them, QLoRA (no TRL row) last.
RUNS = ("aot-lora-micro", "aot-lora-global", "trl-lora", "aot-full-micro", "aot-full-global", "trl-full",
        "aot-qlora-micro", "aot-qlora-global")
LORA = {"r": 16, "alpha": 32}
LR = {"full": 1e-6, "lora": 5e-5, "qlora": 5e-5}  # full fine-tuning wants a much smaller step (docs/train.md)
BETA = 0.01
MIN_RUN_S = 20
LOG_TAIL = 20  # last lines of a failed run's log kept in its row: the JSON alone explains a remote failure
FLOPS_FORMULA = ("(6 N_trained + 4 N_frozen) s + 12 L d s^2 per sequence of s tokens (chosen and rejected each); "
                 "N: matrix weights but the input embedding, LoRA adapters r (in + out) per adapted layer; "
                 "L d: layers x attention width")
# Peak dense (no 2:4 sparsity) bf16 tensor FLOP/s, in TFLOP/s, from NVIDIA's datasheets; matched
# against the words of torch.cuda.get_device_name() in this order. NVL and other variants with
# lower clocks are not listed: pass --peak-tflops.
PEAK_TFLOPS = ((("b200",), 2250.0), (("h100", "pcie"), 756.0), (("gh200",), 989.4), (("h200",), 989.4),
               (("h100",), 989.4), (("a100",), 312.0), (("l40s",), 362.1), (("l4",), 121.0))


@dataclass(frozen=True)
class Run:
    """One row of the check: ``tool-weights-scope`` (``trl-weights`` runs in TRL's micro scope)."""

    name: str

    @property
    def tool(self) -> str:
        return self.name.split("-")[0]

    @property
    def weights(self) -> str:
        return self.name.split("-")[1]

    @property
    def scope(self) -> str:
        return self.name.split("-")[2] if self.tool == "aot" else "micro"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/gpu-check"), help="Where gpu_check.json, "
                        "gpu_check.md and logs/ go.")
    parser.add_argument("--work", type=Path, help="Model, data and run directories (default: a temporary "
                        "directory, removed at the end; a given one is kept and its model reused).")
    parser.add_argument("--cpu-dry-run", action="store_true", help="The same runs on the tiny `smoke` model, "
                        "on CPU, in fp32 (QLoRA is skipped with aot's reason where aot refuses it).")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"Comma-separated subset of {', '.join(RUNS)}.")
    parser.add_argument("--steps", type=int, help="Optimizer steps of the micro-scope and TRL runs "
                        "(default 12; 3 in a dry run).")
    parser.add_argument("--global-steps", type=int, help="Optimizer steps of the global-scope runs "
                        "(default 6; 2 in a dry run).")
    parser.add_argument("--accum", type=int, help="Micro-batches per optimizer step in global scope: the "
                        "sort set is micro-batch x accum (default 4; 2 in a dry run).")
    parser.add_argument("--warmup", type=int, help="Leading optimizer steps left out of the timing "
                        "(default 2; 1 in a dry run).")
    parser.add_argument("--run-timeout", type=float, default=100.0, help="Seconds before a run is killed.")
    parser.add_argument("--budget", type=float, default=450.0, help="Seconds for the whole check; runs that "
                        f"would start with less than {MIN_RUN_S} s left are skipped.")
    parser.add_argument("--peak-tflops", type=float, help="The device's peak dense bf16 TFLOP/s for MFU "
                        "(default: looked up by device name; none on CPU).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dry = args.cpu_dry_run
    for key, gpu, cpu in (("steps", 12, 3), ("global_steps", 6, 2), ("accum", 4, 2), ("warmup", 2, 1)):
        if getattr(args, key) is None:
            setattr(args, key, cpu if dry else gpu)
    if args.warmup < 1 or args.warmup >= min(args.steps, args.global_steps):
        parser.error("--warmup must be >= 1 and below --steps and --global-steps (a timed step must remain)")
    if args.accum < 1 or not args.run_timeout > 0 or not args.budget > 0:  # NaN fails too
        parser.error("--accum, --run-timeout and --budget must be positive")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        parser.error(f"--peak-tflops {args.peak_tflops}: expected a positive number of TFLOP/s")
    names = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(names) - set(RUNS))
    if unknown or not names:
        parser.error(f"--runs {args.runs}: unknown {', '.join(unknown) or 'empty list'} "
                     f"(choose from {', '.join(RUNS)})")
    args.runs = [Run(name) for name in RUNS if name in names]
    if not dry and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible; use --cpu-dry-run to check the harness on CPU")
    return args


def model_shape(model_dir: Path) -> dict:
    """Parameter counts for the FLOPs formula, from the saved weights' shapes and config.json."""
    config = json.loads((model_dir / "config.json").read_text())
    shapes = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            shapes.update({key: handle.get_slice(key).get_shape() for key in handle.keys()})
    matrices = {key: shape for key, shape in shapes.items() if len(shape) == 2 and "embed_tokens" not in key}
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return {
        "parameters": sum(_numel(shape) for shape in shapes.values()),
        "matmul_parameters": sum(_numel(shape) for shape in matrices.values()),
        # peft's all-linear: every linear layer of the blocks, not the head
        "lora_parameters_per_rank": sum(sum(shape) for key, shape in matrices.items() if ".layers." in key),
        "layers": config["num_hidden_layers"], "attention_width": heads * head_dim,
    }


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def sequence_flops(tokens: int, *, trained: int, frozen: int, layers: int, attention_width: int) -> int:
    """Model FLOPs of one training sequence of `tokens` tokens (forward and backward); the formula
    is in the module docstring."""
    return (6 * trained + 4 * frozen) * tokens + 12 * layers * attention_width * tokens ** 2


def parameter_split(shape: dict, weights: str) -> tuple[int, int]:
    """(trained, frozen) matrix parameters of a run: all trained (full), or LoRA adapters on a frozen base."""
    if weights == "full":
        return shape["matmul_parameters"], 0
    return LORA["r"] * shape["lora_parameters_per_rank"], shape["matmul_parameters"]


def pair_costs(shape: dict, weights: str, pairs: list[tuple[int, int]]) -> dict:
    """Mean model FLOPs and tokens of one pair (both sequences) of a dataset, for a run's weights."""
    trained, frozen = parameter_split(shape, weights)
    flops = sum(sequence_flops(tokens, trained=trained, frozen=frozen, layers=shape["layers"],
                               attention_width=shape["attention_width"]) for pair in pairs for tokens in pair)
    return {"flops_per_pair": flops / len(pairs), "tokens_per_pair": sum(map(sum, pairs)) / len(pairs)}


def pair_lengths(model_dir: Path, data_dir: Path) -> list[tuple[int, int]]:
    """Templated token counts (prompt + chosen, prompt + rejected) of each training pair."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [(conversation_length(tokenizer, row["prompt"] + row["chosen"]),
             conversation_length(tokenizer, row["prompt"] + row["rejected"]))
            for row in load_from_disk(str(data_dir))["train"]]


def peak_tflops(device: str) -> float | None:
    """The table's peak for a CUDA device name (None for CPU, NVL variants and unknown devices)."""
    words = set(re.split(r"[\s\-_]+", device.lower()))
    if "nvl" in words:
        return None
    return next((value for keys, value in PEAK_TFLOPS if set(keys) <= words), None)


def measure(marks: dict, proc: dict, *, samples_per_step: int, warmup: int, flops_per_pair: float,
            tokens_per_pair: float, peak_override: float | None) -> dict:
    """A finished run's row: throughput after warm-up, memory, and MFU against the device's peak."""
    timing = summarize(marks, samples_per_step, warmup)
    peak = peak_override if peak_override is not None else peak_tflops(marks["device"])
    achieved = timing["samples_per_s"] * flops_per_pair / 1e12
    return {
        "status": "ok", "reason": None, "device": marks["device"], "timed_steps": timing["timed_steps"],
        "samples_per_s": timing["samples_per_s"], "median_samples_per_s": timing["median_samples_per_s"],
        "tokens_per_s": timing["samples_per_s"] * tokens_per_pair, "achieved_tflops": achieved,
        "peak_tflops": peak, "mfu": achieved / peak if peak else None,
        "cuda_peak_bytes": marks["cuda_peak_bytes"], "cuda_peak_reserved_bytes": marks["cuda_peak_reserved_bytes"],
        "peak_rss_bytes": proc["peak_rss_bytes"], "wall_s": proc["wall_s"],
    }


def command_for(run: Run, args: argparse.Namespace, cfg: BenchConfig, model: Path, data: Path,
                work: Path) -> tuple[list[str], Path]:
    dtype = "fp32" if args.cpu_dry_run else "bf16"
    if run.tool == "trl":
        cmd, _, result = trl_command(work, run.name, cfg, model, data, steps=args.steps, dtype=dtype, seed=args.seed,
                                     beta=BETA, lr=LR[run.weights], gradient_checkpointing=True,
                                     lora=LORA if run.weights == "lora" else None)
        return cmd, result
    extra = (["--full"] if run.weights == "full" else
             ["--lora", "--lora-r", str(LORA["r"]), "--lora-alpha", str(LORA["alpha"])]
             + (["--load-in-4bit"] if run.weights == "qlora" else []))
    glob = run.scope == "global"
    cmd, _, result = aot_command(work, run.name, cfg, model, data, scope=run.scope, accum=args.accum if glob else 1,
                                 steps=args.global_steps if glob else args.steps, dtype=dtype, seed=args.seed,
                                 beta=BETA, lr=LR[run.weights], extra=extra)
    return cmd, result


def check_run(run: Run, args: argparse.Namespace, cfg: BenchConfig, model: Path, data: Path, work: Path,
              out: Path, timeout: float, *, flops_per_pair: float, tokens_per_pair: float) -> dict:
    """Run one configuration in its own process and return its row (ok, failed or skipped)."""
    cmd, result = command_for(run, args, cfg, model, data, work)
    result.unlink(missing_ok=True)
    env = child_env(work / "cache" / run.name, None, None)
    if args.cpu_dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = run_process(run.name, cmd, out, env, timeout=timeout)
    row = {"command": " ".join(cmd), "log": str(Path(proc["log"]).relative_to(out)), "wall_s": proc["wall_s"],
           "peak_rss_bytes": proc["peak_rss_bytes"]}
    if proc["reason"] is not None:
        if args.cpu_dry_run and run.weights == "qlora" and proc["exit_code"] == 2:  # aot refused it
            return {**row, "status": "skipped", "reason": proc["reason"].split(": ", 1)[1]}
        tail = Path(proc["log"]).read_text(errors="replace").splitlines()[-LOG_TAIL:]
        return {**row, "status": "failed", "reason": proc["reason"], "log_tail": tail}
    samples_per_step = cfg.batch * (args.accum if run.scope == "global" else 1)
    return {**row, **measure(json.loads(result.read_text()), proc, samples_per_step=samples_per_step,
                             warmup=args.warmup, flops_per_pair=flops_per_pair, tokens_per_pair=tokens_per_pair,
                             peak_override=args.peak_tflops)}


COLUMNS = ("run", "status", "sort set", "samples/s", "tokens/s", "peak CUDA alloc.", "peak CUDA reserved",
           "peak RSS", "TFLOP/s", "MFU", "wall", "note")


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def _cells(row: dict) -> list[str]:
    ok = row["status"] == "ok"

    def number(key: str, spec: str) -> str:
        return format(row[key], spec) if ok and row[key] is not None else "-"

    return [row["name"], row["status"], str(row["sort_set"]), number("samples_per_s", ".2f"),
            number("tokens_per_s", ".0f"), _gib(row.get("cuda_peak_bytes")), _gib(row.get("cuda_peak_reserved_bytes")),
            _gib(row.get("peak_rss_bytes")), number("achieved_tflops", ".3g"),
            f"{100 * row['mfu']:.1f}%" if ok and row["mfu"] is not None else "-",
            f"{row['wall_s']:.0f} s" if "wall_s" in row else "-", (row["reason"] or "").replace("|", "/")]


def _peaks(report: dict) -> str:
    source = "--peak-tflops" if report["options"]["peak_tflops"] is not None else "datasheet table"
    found = sorted({(row["device"], row["peak_tflops"]) for row in report["rows"] if row["status"] == "ok"},
                   key=str)
    if not found:
        return "peak: no finished run yet"
    return "peak " + ", ".join(f"{peak} TFLOP/s ({device}, {source})" if peak else f"unknown for {device} "
                               "(--peak-tflops sets it)" for device, peak in found)


def markdown(report: dict) -> str:
    """OUT/gpu_check.md: what was run, then one table row per run (failed and skipped ones with their reason)."""
    cfg, shape = report["config"], report["model"]
    header = (f"GPU check, config {cfg['name']} ({shape['parameters'] / 1e6:.3g} M parameters, {cfg['layers']} "
              f"layers, hidden {cfg['hidden']}, vocabulary {cfg['vocab']}), micro-batch {cfg['batch']} pairs, "
              f"max_length {cfg['max_length']}, {report['dtype']}; {report['options']['warmup']} warm-up step(s) "
              f"untimed. MFU: {report['flops_formula']}; {_peaks(report)}.")
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in report["rows"]]
    return "\n".join(lines) + "\n"


def save(report: dict, out: Path) -> None:
    """Rewrite OUT/gpu_check.json and .md whole (written aside, then renamed: never half a file)."""
    for name, text in (("gpu_check.json", json.dumps(report, indent=2) + "\n"), ("gpu_check.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def say(message: str) -> None:
    """A plain progress line on stderr, flushed at once (the check is followed from a remote log)."""
    print(message, file=sys.stderr, flush=True)


def prepare(args: argparse.Namespace, cfg: BenchConfig, work: Path) -> tuple[Path, dict, dict, dict]:
    """Build (or reuse) the model and build both datasets; return the model, the datasets by sort
    scope, the model's shape and the pairs' token counts by sort scope."""
    model = work / f"model-{cfg.name}"
    say(f"gpu_check: building the {cfg.name} model and data in {work}")
    if not (model / "config.json").is_file():
        model.mkdir(exist_ok=True)
        build_model(model, cfg, seed=args.seed)
    data = {"micro": work / "data-micro", "global": work / "data-global"}
    for scope, rows in (("micro", args.steps * cfg.batch), ("global", args.global_steps * cfg.batch * args.accum)):
        shutil.rmtree(data[scope], ignore_errors=True)
        build_dataset(data[scope], model, cfg, rows, seed=args.seed)
    return model, data, model_shape(model), {scope: pair_lengths(model, path) for scope, path in data.items()}


def new_report(args: argparse.Namespace, argv: list[str] | None, cfg: BenchConfig, shape: dict) -> dict:
    return {
        "check": "benchmarks/gpu_check.py",
        "command": " ".join(["benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "options": {k: (str(v) if isinstance(v, Path) else [r.name for r in v] if k == "runs" else v)
                    for k, v in vars(args).items()},
        "config": asdict(cfg), "dtype": "fp32" if args.cpu_dry_run else "bf16", "model": shape,
        "flops_formula": FLOPS_FORMULA,
        "rows": [{"name": run.name, "tool": run.tool, "weights": run.weights, "sort_scope": run.scope,
                  "sort_set": cfg.batch * (args.accum if run.scope == "global" else 1),
                  "status": "pending", "reason": None} for run in args.runs],
        "setup_s": None, "elapsed_s": None, "machine": None,
    }


def main(argv: list[str] | None = None) -> dict:
    started = time.monotonic()
    args = parse_args(argv)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    cfg = CONFIGS["smoke" if args.cpu_dry_run else "0.5b"]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model, data, shape, lengths = prepare(args, cfg, work)
        report = new_report(args, argv, cfg, shape)
        report["setup_s"] = time.monotonic() - started
        save(report, out)
        for i, (run, row) in enumerate(zip(args.runs, report["rows"])):
            label = f"[{i + 1}/{len(args.runs)}] {run.name}"
            left = args.budget - (time.monotonic() - started)
            if run.tool == "trl" and importlib.util.find_spec("trl") is None:
                row.update(status="skipped", reason="trl is not installed (the bench extra: pip install -e '.[bench]')")
            elif left < MIN_RUN_S:
                row.update(status="skipped", reason=f"not started: {left:.0f} s of the {args.budget:.0f} s budget left")
            else:
                timeout = min(args.run_timeout, left)
                say(f"{label}: running (timeout {timeout:.0f} s), log: {out / 'logs' / run.name}.log")
                row.update(check_run(run, args, cfg, model, data[run.scope], work, out, timeout,
                                     **pair_costs(shape, run.weights, lengths[run.scope])))
            say(f"{label}: {_summary(row)}")
            report["elapsed_s"] = time.monotonic() - started
            save(report, out)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["machine"] = machine()
    report["elapsed_s"] = time.monotonic() - started
    save(report, out)
    print(markdown(report), flush=True)
    say(f"gpu_check: {report['elapsed_s']:.0f} s; wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return report


def _summary(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    mfu = f"MFU {100 * row['mfu']:.1f}%" if row["mfu"] is not None else "MFU - (peak unknown: --peak-tflops)"
    memory = _gib(row["cuda_peak_bytes"]) + " peak CUDA" if row["cuda_peak_bytes"] is not None else \
        _gib(row["peak_rss_bytes"]) + " peak RSS"
    return f"ok in {row['wall_s']:.0f} s: {row['samples_per_s']:.2f} samples/s, {memory}, {mfu}"


if __name__ == "__main__":
    main()
