"""Padding-free micro-batches (``aot train --padding-free``) against padded ones, in one command.

    python benchmarks/packing_bench.py --config tiny|small [--steps N] [--threads 1] [--out bench-out/packing]

Builds the benchmark model and synthetic paired data of benchmarks/train_bench.py (chosen and
rejected lengths drawn independently, so a micro-batch's rows differ in length as on real data),
then runs ``aot train --full --sort-scope micro`` twice, each in its own process (peak RSS its
own): ``padded`` (``--padding-free off``) and ``packed`` (``--padding-free on``). Timed like
train_bench.py: the steady-state optimizer steps after ``--warmup``, by the optimizer hook of
step_clock.py. Also counts, over the run's micro-batches (drawn by aot's own sampler), the
useful-position fraction: tokens over the positions the forwards compute, padded (one forward per
micro-batch, or two when that saves a fifth of the positions, as ``rows_logps`` does) and packed
(every position is a token). Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from bench_setup import CONFIGS, bench_model, build_dataset
from train_bench import aot_command, machine, run_child, summarize

from aot_cli.console import info
from aot_cli.data.dataset import load_prepared
from aot_cli.data.tokenize import TokenizeSettings, load_tokenizer, tokenize_split
from aot_cli.train.batching import StepSampler, make_sides, split_micro_batches

RUNS = {"padded": "off", "packed": "on"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps of each run.")
    parser.add_argument("--warmup", type=int, default=1, help="Leading optimizer steps left out of the timing.")
    parser.add_argument("--threads", type=int, help="Intra-op threads of every run (OMP_NUM_THREADS).")
    parser.add_argument("--attn", default="sdpa", help="--attn-implementation of both runs.")
    parser.add_argument("--dtype", default="fp32", help="--dtype of both runs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out/packing"))
    args = parser.parse_args(argv)
    args.profile = False  # what train_bench.run_child reads
    if not 1 <= args.warmup < args.steps:
        parser.error("--warmup must be >= 1 and below --steps (a timed step must remain)")
    return args


def padded_positions(lengths: np.ndarray) -> int:
    """Positions the padded path computes for one micro-batch of rows of these lengths: one forward
    to the longest row, or the shorter and the longer half each to its own longest when that saves
    at least a fifth (aot_cli.train.step.rows_logps, one process)."""
    order = np.argsort(lengths, kind="stable")
    halves = [lengths[h] for h in np.array_split(order, 2) if len(h)]
    split = sum(len(h) * int(h.max()) for h in halves)
    whole = len(lengths) * int(lengths.max())
    return whole if split > 0.8 * whole else split


def useful_fractions(model: Path, data: Path, cfg, steps: int, seed: int) -> dict:
    """Tokens over computed positions over the run's micro-batches (the run's own draw)."""
    dataset, splits = load_prepared(data)
    tokenizer = load_tokenizer(str(model))
    tokenized = tokenize_split(splits["train"], tokenizer, TokenizeSettings(cfg.max_length, cfg.max_length),
                               paired=True, fingerprint=f"{dataset.fingerprint}:train")
    sides = make_sides(tokenized, paired=True)
    sampler = StepSampler(len(sides[0]), len(sides[1]), cfg.batch, seed, paired=True)
    tokens = padded = one_forward = 0
    for k in range(steps):
        idx_a, idx_b = sampler.step(k)
        for a, b in split_micro_batches(idx_a, idx_b, sides[0].lengths, sides[1].lengths, micro_batch=cfg.batch):
            lengths = np.concatenate([sides[0].lengths[a], sides[1].lengths[b]])
            tokens += int(lengths.sum())
            padded += padded_positions(lengths)
            one_forward += len(lengths) * int(lengths.max())
    return {"tokens": tokens, "padded_positions": padded, "padded_one_forward_positions": one_forward,
            "useful_fraction_padded": tokens / padded, "useful_fraction_padded_one_forward": tokens / one_forward,
            "useful_fraction_packed": 1.0}


def run_one(args, cfg, model: Path, data: Path, out: Path, name: str) -> dict:
    extra = ["--full", "--padding-free", RUNS[name], "--attn-implementation", args.attn]
    cmd, train_args, result = aot_command(out, f"aot-{name}", cfg, model, data, scope="micro", accum=1,
                                          steps=args.steps, dtype=args.dtype, seed=args.seed, beta=0.01, lr=1e-6,
                                          extra=extra)
    proc = run_child(f"aot-{name}", cmd, out, args)
    marks = json.loads(result.read_text())
    return {"settings": {"aot_train_args": train_args}, **proc, **summarize(marks, cfg.batch, args.warmup)}


def markdown(runs: dict, fractions: dict) -> str:
    lines = ["| run | useful positions | samples/s | median samples/s | CPU s/sample | peak RSS | speed vs padded | "
             "RSS vs padded |", "|---|---|---|---|---|---|---|---|"]
    base = runs["padded"]
    for name, run in runs.items():
        fraction = fractions["useful_fraction_packed" if name == "packed" else "useful_fraction_padded"]
        lines.append(f"| {name} | {fraction:.3f} | {run['samples_per_s']:.3f} | {run['median_samples_per_s']:.3f} | "
                     f"{run['cpu_s_per_sample']:.3g} | {run['peak_rss_bytes'] / 2**30:.2f} GiB | "
                     f"{run['samples_per_s'] / base['samples_per_s']:.2f}x | "
                     f"{run['peak_rss_bytes'] / base['peak_rss_bytes']:.2f}x |")
    lines.append(f"\nuseful-position fraction with one padded forward per micro-batch: "
                 f"{fractions['useful_fraction_padded_one_forward']:.3f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = CONFIGS[args.config]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = bench_model(out, cfg, seed=args.seed)
    data = out / "data"
    shutil.rmtree(data, ignore_errors=True)
    build_dataset(data, model, cfg, args.steps * cfg.batch, seed=args.seed)
    info(f"counting useful positions over {args.steps} steps")
    fractions = useful_fractions(model, data, cfg, args.steps, args.seed)
    runs = {name: run_one(args, cfg, model, data, out, name) for name in RUNS}
    report = {
        "config": asdict(cfg), "command": " ".join(["benchmarks/packing_bench.py", *(sys.argv[1:] if argv is None
                                                                                      else argv)]),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(), "load_1min_after": os.getloadavg()[0], "fractions": fractions, "runs": runs,
        "speed_packed_vs_padded": runs["packed"]["samples_per_s"] / runs["padded"]["samples_per_s"],
        "rss_packed_vs_padded": runs["packed"]["peak_rss_bytes"] / runs["padded"]["peak_rss_bytes"],
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(runs, fractions))
    print(markdown(runs, fractions))
    return report


if __name__ == "__main__":
    main()
