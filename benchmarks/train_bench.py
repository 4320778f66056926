"""Benchmark `aot train` against TRL's ``DPOTrainer(loss_type="aot")``, side by side, in one command.

    python benchmarks/train_bench.py --config tiny|small [--steps N] [--out bench-out]

Builds a random-init Llama of the config's shape and a synthetic paired dataset locally (no
downloads), then runs, one after the other and each in its own process (so each peak RSS is its
own, read with ``os.wait4``):

1. ``trl``: TRL's DPOTrainer, loss_type "aot", full fine-tuning, TRL's defaults (online reference
   model, gradient checkpointing) but fp32 on CPU;
2. ``trl-nogc``: the same with gradient checkpointing off (faster, more memory);
3. ``micro``: ``aot train --full --sort-scope micro`` (TRL's sort set: one micro-batch);
4. ``global``: ``aot train --full --sort-scope global`` with the same micro-batch and enough
   accumulation for a sort set of ``--sort-set`` (64);
5. ``bare`` (run_bare.py): the limit, a plain loop doing one forward and backward of the policy
   over the micro run's non-padding tokens (a sum of log-probs) and the same optimizer step; every
   run's samples/s is also given as a fraction of it.

6. ``global-graphs``: ``global`` with ``--graph-memory`` (this script's ``--graph-memory`` GiB,
   default 16) and a sort set of ``--graphs-sort-set`` (default 16, so that the graphs of a whole
   step fit in the memory of a small machine): its pass-1 graphs are kept, not replayed.

Same model, micro-batch, max_length, learning rate, beta, dtype and number of samples per run
(each dataset is exactly one epoch of the run, so every run sees the same rows and tokens). Timed:
the steady-state optimizer steps, from the end of step ``--warmup`` to the end of the last step,
by one optimizer hook in both tools (step_clock.py). Prints a table with samples/s, peak memory and
the ratios; writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from bench_setup import CONFIGS, BenchConfig, bench_model, build_dataset

from aot_cli.console import info

HERE = Path(__file__).resolve().parent
DEFAULT_STEPS = {"smoke": 2, "tiny": 8, "small": 6}
TARGETS = {"speed_vs_trl": 2.5, "memory_vs_trl": 0.45, "global_time_vs_micro": 1.4,
           "global_graphs_time_vs_micro": 1.05, "micro_vs_bare": 0.85}
AT_LEAST = ("speed_vs_trl", "micro_vs_bare")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--steps", type=int, help="Optimizer steps of the TRL and micro-scope runs "
                        "(default: 8 tiny, 6 small).")
    parser.add_argument("--global-steps", type=int, default=2, help="Optimizer steps of the global-scope run.")
    parser.add_argument("--sort-set", type=int, default=64, help="Samples per optimizer step of the global-scope "
                        "run (a multiple of the micro-batch).")
    parser.add_argument("--warmup", type=int, default=1, help="Leading optimizer steps left out of the timing.")
    parser.add_argument("--runs", default="trl,trl-nogc,micro,global,global-graphs,bare",
                        help="Comma-separated subset of trl (TRL's defaults: gradient checkpointing on), "
                        "trl-nogc (checkpointing off), micro, micro-gc (with --gradient-checkpointing), micro-packed "
                        "(with --padding-free on), "
                        "global, global-graphs (global with --graph-memory), bare (the limit: one plain "
                        "forward + backward over the non-padding tokens and the optimizer step).")
    parser.add_argument("--graph-memory", type=float, default=16.0, help="GiB of --graph-memory of the "
                        "global-graphs run.")
    parser.add_argument("--graphs-sort-set", type=int, default=16, help="Samples per optimizer step of the "
                        "global-graphs run (a multiple of the micro-batch).")
    parser.add_argument("--graphs-steps", type=int, default=3, help="Optimizer steps of the global-graphs run.")
    parser.add_argument("--threads", type=int, help="Intra-op threads of every run (OMP_NUM_THREADS; default: "
                        "torch's, one per core). 1 is steadier on a machine that other jobs share.")
    parser.add_argument("--profile", action="store_true", help="Also write OUT/profile-RUN.txt, torch.profiler's "
                        "operator table of each run's second step (slower: such numbers are not the record).")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--beta", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    args.steps = args.steps or DEFAULT_STEPS[args.config]
    if args.warmup < 1 or args.warmup >= min(args.steps, args.global_steps, args.graphs_steps):
        parser.error("--warmup must be >= 1 and below --steps, --global-steps and --graphs-steps (a timed step "
                     "must remain)")
    for flag, value in (("--sort-set", args.sort_set), ("--graphs-sort-set", args.graphs_sort_set)):
        if value % CONFIGS[args.config].batch:
            parser.error(f"{flag} {value} is not a multiple of the micro-batch {CONFIGS[args.config].batch}")
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    return args


def child_env(cache: Path, profile: Path | None, threads: int | None) -> dict[str, str]:
    """The environment of a benchmark process: offline, its own aot cache, and this repository's
    benchmarks/ and aot_cli first on the path (whatever else is installed)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", AOT_CACHE_DIR=str(cache))
    env.pop("BENCH_PROFILE", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if profile is not None:
        env["BENCH_PROFILE"] = str(profile)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(HERE.parent), env.get("PYTHONPATH")) if p)
    return env


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def failure_reason(log: str, exit_code: int) -> str:
    """One line saying why a benchmark process failed, from its exit code and output: aot's (or
    typer's) ``error:`` line, else the exception line that ends a traceback (an OOM, a missing
    kernel), else the last line of output."""
    if exit_code < 0:
        return f"killed by {signal.Signals(-exit_code).name}"
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    line = (next((x for x in reversed(lines) if x.startswith("error:")), None)
            or next((x for x in reversed(lines) if _EXCEPTION_LINE.match(x)), None)
            or (lines[-1] if lines else "no output"))
    return f"exit {exit_code}: {line[:300]}"


def run_process(name: str, cmd: list[str], out: Path, env: dict[str, str], timeout: float | None = None) -> dict:
    """Run one benchmark process (output to OUT/logs/NAME.log) until it exits or `timeout` seconds
    pass, then kill it (SIGKILL). Returns its wall time, peak RSS (``wait4``: this child
    only), exit code and, when it failed, a one-line ``reason``."""
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(" ".join(cmd) + "\n")
        handle.flush()
        # No new session or process group: a supervisor that ends this benchmark's group ends its runs.
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended on its own meanwhile
                pass

        timer = threading.Timer(timeout, kill) if timeout is not None else None
        if timer is not None:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        if timer is not None:
            timer.cancel()
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    reason = None
    if expired.is_set() and code == -signal.SIGKILL:  # not a run that ended just as the timer fired
        reason = f"timed out after {timeout:.0f} s (killed)"
    elif code != 0:
        reason = failure_reason(log.read_text(errors="replace"), code)
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "load_1min_before": load_before,
            "command": cmd, "exit_code": code, "reason": reason, "log": str(log)}


def run_child(name: str, cmd: list[str], out: Path, args: argparse.Namespace) -> dict:
    """Run one benchmark process to completion; stop the benchmark with its last lines if it failed."""
    cache = out / "cache" / name
    shutil.rmtree(cache, ignore_errors=True)  # a fresh reference-log-prob cache: the pass is measured
    info(f"running {name} (1-minute load {os.getloadavg()[0]:.2f}), log: logs/{name}.log")
    env = child_env(cache, out / f"profile-{name}.txt" if args.profile else None, args.threads)
    result = run_process(name, cmd, out, env)
    if result["reason"] is not None:
        log = Path(result["log"])
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{name} failed ({result['reason']}); last lines of {log}:\n{tail}")
    return {key: result[key] for key in ("wall_s", "peak_rss_bytes", "load_1min_before", "command")}


def summarize(marks: dict, samples_per_step: int, warmup: int) -> dict:
    """Steady-state throughput from the optimizer-step end times: the whole timed window (what
    the user waits), its median step (robust to other processes' bursts) and CPU seconds."""
    ends, cpu = marks["step_ends"], marks["step_cpu"]
    timed_steps = len(ends) - warmup
    if timed_steps < 1:
        raise SystemExit(f"only {len(ends)} optimizer steps were recorded; need more than --warmup {warmup}")
    timed_s = ends[-1] - ends[warmup - 1]
    samples = timed_steps * samples_per_step
    median = statistics.median(b - a for a, b in zip(ends[warmup - 1:], ends[warmup:]))
    return {
        "steps": len(ends), "timed_steps": timed_steps, "timed_s": timed_s, "samples_per_step": samples_per_step,
        "samples_per_s": samples / timed_s, "s_per_sample": timed_s / samples,
        "median_step_s": median, "median_samples_per_s": samples_per_step / median,
        "cpu_s_per_sample": (cpu[-1] - cpu[warmup - 1]) / samples,
        "first_step_end_s": ends[0], "cuda_peak_bytes": marks["cuda_peak_bytes"], "threads": marks["threads"],
    }


def trl_command(out: Path, name: str, cfg: BenchConfig, model: Path, data: Path, *, steps: int, dtype: str,
                seed: int, beta: float, lr: float, gradient_checkpointing: bool,
                lora: dict | None = None) -> tuple[list[str], dict, Path]:
    """TRL's run NAME (micro-batch ``cfg.batch``, no accumulation, online reference): writes its
    spec to OUT/NAME-spec.json; returns the command, the spec and the path of the clock's marks."""
    result = out / f"{name}.json"
    spec = {
        "model": str(model), "data": str(data), "out": str(out / f"{name}-run"), "result": str(result),
        "dtype": dtype, "seed": seed, "beta": beta, "lr": lr, "batch": cfg.batch, "grad_accum": 1,
        "steps": steps, "max_length": cfg.max_length,
        "gradient_checkpointing": gradient_checkpointing, "precompute_ref": False, "lora": lora,
    }
    (out / f"{name}-spec.json").write_text(json.dumps(spec, indent=1))
    return [sys.executable, str(HERE / "run_trl.py"), str(out / f"{name}-spec.json")], spec, result


def aot_command(out: Path, name: str, cfg: BenchConfig, model: Path, data: Path, *, scope: str, accum: int,
                steps: int, dtype: str, seed: int, beta: float, lr: float,
                extra: list[str]) -> tuple[list[str], list[str], Path]:
    """`aot train` run NAME (micro-batch ``cfg.batch``, into OUT/NAME-run; `extra`: --full, LoRA or
    QLoRA flags...); returns the command, its `aot train` arguments and the path of the clock's marks."""
    result = out / f"{name}.json"
    train_args = [
        "--model", str(model), "--data", str(data), "-o", str(out / f"{name}-run"), "--overwrite",
        "--loss", "aot", *extra, "--sort-scope", scope, "--batch-size", str(cfg.batch),
        "--grad-accum", str(accum), "--max-steps", str(steps), "--max-length", str(cfg.max_length),
        "--max-prompt-length", str(cfg.max_length), "--lr", str(lr), "--beta", str(beta),
        "--warmup-ratio", "0", "--dtype", dtype, "--seed", str(seed), "--save-steps", "0",
    ]
    return [sys.executable, str(HERE / "run_aot.py"), str(result), "--", *train_args], train_args, result


def run_trl(args, cfg: BenchConfig, model: Path, data: Path, out: Path, name: str) -> dict:
    cmd, spec, result = trl_command(out, name, cfg, model, data, steps=args.steps, dtype="fp32", seed=args.seed,
                                    beta=args.beta, lr=args.lr, gradient_checkpointing=name == "trl")
    proc = run_child(name, cmd, out, args)
    marks = json.loads(result.read_text())
    return {"settings": spec, **proc, **summarize(marks, cfg.batch, args.warmup)}


def run_aot(args, cfg: BenchConfig, model: Path, data: Path, out: Path, name: str) -> dict:
    """``name``: micro, micro-gc (with --gradient-checkpointing, as TRL's default), micro-packed (with
    --padding-free on), global or global-graphs (global keeping its pass-1 graphs in ``--graph-memory`` GiB)."""
    scope = "global" if name.startswith("global") else "micro"
    accum = 1 if scope == "micro" else (args.graphs_sort_set if name == "global-graphs" else args.sort_set) // cfg.batch
    steps = args.steps if scope == "micro" else args.graphs_steps if name == "global-graphs" else args.global_steps
    extra = ["--full", *(["--gradient-checkpointing"] if name == "micro-gc" else []),
             *(["--padding-free", "on"] if name == "micro-packed" else []),
             *(["--graph-memory", str(args.graph_memory)] if name == "global-graphs" else [])]
    cmd, train_args, result = aot_command(
        out, f"aot-{name}", cfg, model, data, scope=scope, accum=accum, steps=steps, dtype="fp32", seed=args.seed,
        beta=args.beta, lr=args.lr, extra=extra)
    proc = run_child(f"aot-{name}", cmd, out, args)
    marks = json.loads(result.read_text())
    return {"settings": {"aot_train_args": train_args}, **proc, **summarize(marks, cfg.batch * accum, args.warmup)}


def run_bare(args, cfg: BenchConfig, model: Path, data: Path, out: Path) -> dict:
    """The limit (run_bare.py) on the micro run's data, micro-batch and number of steps."""
    result = out / "bare.json"
    spec = {"model": str(model), "data": str(data), "result": str(result), "batch": cfg.batch, "steps": args.steps,
            "max_length": cfg.max_length, "lr": args.lr, "seed": args.seed}
    (out / "bare-spec.json").write_text(json.dumps(spec, indent=1))
    proc = run_child("bare", [sys.executable, str(HERE / "run_bare.py"), str(out / "bare-spec.json")], out, args)
    marks = json.loads(result.read_text())
    return {"settings": spec, **proc, **summarize(marks, cfg.batch, args.warmup)}


def machine() -> dict:
    import torch

    from aot_cli.artifacts.store import library_versions

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "platform": platform.platform(), "versions": library_versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def ratios(runs: dict) -> dict:
    """The issue's targets as measured (wall window, the number of record), and the same ratios
    from median steps and from CPU seconds, which other processes on the machine disturb less."""
    found = {}
    trl, micro, glob = runs.get("trl"), runs.get("micro"), runs.get("global")
    if trl and micro:
        found["speed_vs_trl"] = micro["samples_per_s"] / trl["samples_per_s"]
        found["memory_vs_trl"] = micro["peak_rss_bytes"] / trl["peak_rss_bytes"]
        found["speed_vs_trl_median"] = micro["median_samples_per_s"] / trl["median_samples_per_s"]
        found["speed_vs_trl_cpu"] = trl["cpu_s_per_sample"] / micro["cpu_s_per_sample"]
    if runs.get("trl-nogc") and micro:
        found["speed_vs_trl_nogc"] = micro["samples_per_s"] / runs["trl-nogc"]["samples_per_s"]
        found["memory_vs_trl_nogc"] = micro["peak_rss_bytes"] / runs["trl-nogc"]["peak_rss_bytes"]
    if trl and glob:
        found["global_speed_vs_trl"] = glob["samples_per_s"] / trl["samples_per_s"]
        found["global_memory_vs_trl"] = glob["peak_rss_bytes"] / trl["peak_rss_bytes"]
    if micro and glob:
        found["global_time_vs_micro"] = glob["s_per_sample"] / micro["s_per_sample"]
        found["global_time_vs_micro_cpu"] = glob["cpu_s_per_sample"] / micro["cpu_s_per_sample"]
    if micro and runs.get("global-graphs"):
        found["global_graphs_time_vs_micro"] = runs["global-graphs"]["s_per_sample"] / micro["s_per_sample"]
        found["global_graphs_time_vs_micro_cpu"] = (runs["global-graphs"]["cpu_s_per_sample"]
                                                    / micro["cpu_s_per_sample"])
    if micro and runs.get("bare"):
        found["micro_vs_bare"] = micro["samples_per_s"] / runs["bare"]["samples_per_s"]
        found["micro_vs_bare_cpu"] = runs["bare"]["cpu_s_per_sample"] / micro["cpu_s_per_sample"]
    return found


def print_table(cfg: BenchConfig, runs: dict, found: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from aot_cli.console import out_console

    # Piped into a file or CI log, rich assumes 80 columns; the table needs about 130.
    console = out_console if out_console.is_terminal else Console(file=sys.stdout, width=140)
    table = Table(title=f"aot train vs TRL DPOTrainer(loss_type='aot'), config {cfg.name}, micro-batch {cfg.batch}")
    for column in ("run", "sort set", "timed steps", "samples/s", "median samples/s", "CPU s/sample", "peak RSS",
                   "speed/TRL", "RSS/TRL", "speed/bare"):
        table.add_column(column, justify="left" if column == "run" else "right")
    trl, bare = runs.get("trl"), runs.get("bare")
    for name, run in runs.items():
        table.add_row(
            name, str(run["samples_per_step"]), str(run["timed_steps"]),
            f"{run['samples_per_s']:.3f}", f"{run['median_samples_per_s']:.3f}", f"{run['cpu_s_per_sample']:.3g}",
            f"{run['peak_rss_bytes'] / 2**30:.2f} GiB",
            f"{run['samples_per_s'] / trl['samples_per_s']:.2f}x" if trl else "-",
            f"{run['peak_rss_bytes'] / trl['peak_rss_bytes']:.2f}x" if trl else "-",
            f"{run['samples_per_s'] / bare['samples_per_s']:.2f}x" if bare else "-",
        )
    console.print(table)
    for key, target in TARGETS.items():
        if key in found:
            ok = found[key] >= target if key in AT_LEAST else found[key] <= target
            sign = ">=" if key in AT_LEAST else "<="
            console.print(f"{key}: {found[key]:.2f} (target {sign} {target}) {'met' if ok else 'NOT met'}")


def markdown(cfg: BenchConfig, runs: dict, found: dict) -> str:
    """The table as Markdown (OUT/results.md), for docs/performance.md."""
    trl, bare = runs.get("trl"), runs.get("bare")
    lines = ["| run | sort set | timed steps | samples/s | median samples/s | CPU s/sample | peak RSS | "
             "speed vs trl | RSS vs trl | speed vs bare |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        lines.append(
            f"| {name} | {run['samples_per_step']} | {run['timed_steps']} | "
            f"{run['samples_per_s']:.3f} | {run['median_samples_per_s']:.3f} | {run['cpu_s_per_sample']:.3g} | "
            f"{run['peak_rss_bytes'] / 2**30:.2f} GiB | "
            + (f"{run['samples_per_s'] / trl['samples_per_s']:.2f}x | "
               f"{run['peak_rss_bytes'] / trl['peak_rss_bytes']:.2f}x | " if trl else "- | - | ")
            + (f"{run['samples_per_s'] / bare['samples_per_s']:.2f}x |" if bare else "- |"))
    lines.append("")
    lines += [f"- {key}: {value:.2f}" for key, value in found.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = CONFIGS[args.config]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    info(f"building the {cfg.name} model and data in {out}")
    model = bench_model(out, cfg, seed=args.seed)
    data_micro = out / "data-micro"
    data_global = out / "data-global"
    data_graphs = out / "data-graphs"
    for path, rows in ((data_micro, args.steps * cfg.batch), (data_global, args.global_steps * args.sort_set),
                       (data_graphs, args.graphs_steps * args.graphs_sort_set)):
        shutil.rmtree(path, ignore_errors=True)
        build_dataset(path, model, cfg, rows, seed=args.seed)

    runs = {}
    for name in ("trl", "trl-nogc"):
        if name in args.runs:
            runs[name] = run_trl(args, cfg, model, data_micro, out, name)
    for name in ("micro", "micro-gc", "micro-packed"):
        if name in args.runs:
            runs[name] = run_aot(args, cfg, model, data_micro, out, name)
    for name, data in (("global", data_global), ("global-graphs", data_graphs)):
        if name in args.runs:
            runs[name] = run_aot(args, cfg, model, data, out, name)
    if "bare" in args.runs:
        runs["bare"] = run_bare(args, cfg, model, data_micro, out)
    found = ratios(runs)
    report = {
        "config": asdict(cfg),
        "command": " ".join(["benchmarks/train_bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "warmup_steps": args.warmup, "profiled": args.profile, "machine": machine(),
        "load_1min_after": os.getloadavg()[0],
        "runs": runs, "ratios": found, "targets": TARGETS,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(cfg, runs, found))
    print_table(cfg, runs, found)
    return report


if __name__ == "__main__":
    main()
