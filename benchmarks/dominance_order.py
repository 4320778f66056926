"""First- or second-order dominance: which one lifts the lower tail of held-out rewards? A reproducible toy
experiment through the real CLI.

    python benchmarks/dominance_order.py [--quick] [--seeds 42 7 1] [--out bench-out/dominance-order]

The task, built on the spot (no downloads): a prompt asks for a one-line answer in lowercase letters.
Most pairs are *easy*: the rejected answer is the chosen sentence in capitals, so chosen and rejected
differ at every token and the summed log-ratio margin can grow fast. A minority (``--hard-share``,
20%) is *hard*: the rejected answer is the same lowercase sentence with its last word and full stop
replaced (``... for a little while.`` -> ``... for a little bit!``), so the two differ in two tokens
only and their margin grows slowly. The hard pairs are the lower tail of the reward distributions.

First-order AOT matches sorted values one by one (each quantile level weighs the same); the
second-order loss compares lower-tail means, so its gradient weighs the lowest sorted values most
(value ``l`` of ``n`` gets ``1/n sum_{i >= l} 1/i``: docs/aot.md). Every run trains with the same
data, steps, batch (16 per step, global sort scope), lr, beta and seed; only ``--dominance`` changes.
Each run is scored on the held-out test split (same mix of easy and hard pairs) by
``aot eval dominance RUN --data DATA`` (its per-example ``logps.jsonl``):

- ``margin_q05``: the 5% quantile of held-out reward margins ``beta * (log-ratio chosen - log-ratio
  rejected)`` (the lower tail of what paired AOT pushes up);
- ``chosen_q05``: the 5% quantile of held-out chosen rewards ``beta * log-ratio chosen`` (the lower
  tail of the positives, what unpaired AOT pushes up);
- ``margin_mean`` and ``accuracy`` (share of pairs with a positive margin), to see what the tail costs.

Commands run in this process through the real ``aot`` typer app. Writes a table and ``--json``
(every number and command).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from in_process import aot, begin

ADJECTIVES = ["quiet", "bright", "small", "heavy", "warm", "old", "green", "sharp", "soft", "round",
              "tall", "empty", "golden", "narrow", "calm", "wild", "clever", "dusty", "frozen", "gentle"]
NOUNS = ["apple", "river", "stone", "cloud", "paper", "garden", "window", "music", "forest", "candle",
         "bridge", "silver", "planet", "coffee", "market", "winter", "engine", "letter", "island", "pencil"]
RELATIONS = ["close to", "far from", "under", "above", "next to", "behind", "inside", "around"]
METRICS = ("margin_q05", "chosen_q05", "margin_mean", "accuracy")
LOSS_DATA = {"aot": "data-paired", "aot_unpaired": "data-unpaired"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One seed, paired AOT only, 8 steps, 256 training "
                        "pairs: checks that the script runs (the numbers mean nothing).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1], help="Training seeds.")
    parser.add_argument("--losses", nargs="+", default=["aot", "aot_unpaired"], choices=list(LOSS_DATA))
    parser.add_argument("--steps", type=int, default=64, help="Optimizer steps of every run (16 samples each).")
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate.")
    parser.add_argument("--beta", type=float, default=0.5, help="AOT beta.")
    parser.add_argument("--hard-share", type=float, default=0.2, help="Share of hard pairs (train and test).")
    parser.add_argument("--train-pairs", type=int, default=1024)
    parser.add_argument("--test-pairs", type=int, default=400)
    parser.add_argument("--out", type=Path, help="Work directory: model, data, runs (default: "
                        "bench-out/dominance-order, bench-out/dominance-order-quick with --quick).")
    parser.add_argument("--json", type=Path, help="Default: OUT/dominance_order.json.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared).")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.losses, args.steps = args.seeds[:1], ["aot"], min(args.steps, 8)
        args.train_pairs, args.test_pairs = min(args.train_pairs, 256), min(args.test_pairs, 64)
    args.out = args.out or Path("bench-out/dominance-order-quick" if args.quick else "bench-out/dominance-order")
    args.json = args.json or args.out / "dominance_order.json"
    return args


def make_pairs(n: int, hard_share: float, rng: random.Random, taken: set[str]) -> list[dict]:
    """`n` pairs with prompts not in `taken`; about `hard_share` of them hard (module docstring)."""
    rows = []
    while len(rows) < n:
        adj, noun, other = rng.choice(ADJECTIVES), *rng.sample(NOUNS, 2)
        prompt = f"In lowercase letters, tell me where the {adj} {noun} is. Mention the {other}."
        if prompt in taken:
            continue
        taken.add(prompt)
        answer = f"the {adj} {noun} is {rng.choice(RELATIONS)} the {other}, for a little while."
        hard = rng.random() < hard_share
        rejected = answer.replace("while.", "bit!") if hard else answer.upper()
        rows.append({"prompt": prompt, "chosen": answer, "rejected": rejected})
    return rows


def tail_metrics(rows: list[dict], beta: float) -> dict:
    """The held-out numbers of one run from `aot eval dominance`'s logps.jsonl rows (module docstring)."""
    def get(key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=np.float64)

    chosen = beta * (get("policy_chosen") - get("ref_chosen"))
    rejected = beta * (get("policy_rejected") - get("ref_rejected"))
    margin = chosen - rejected
    return {"margin_q05": float(np.quantile(margin, 0.05)), "chosen_q05": float(np.quantile(chosen, 0.05)),
            "margin_mean": float(margin.mean()), "accuracy": float((margin > 0).mean())}


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and (sample) standard deviation over seeds, per loss and dominance order."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["loss"], r["dominance"]), []).append(r)
    rows = []
    for (loss, order), members in groups.items():
        row = {"loss": loss, "dominance": order, "seeds": [m["seed"] for m in members]}
        for m in METRICS:
            values = [r[m] for r in members]
            row[m] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        rows.append(row)
    return rows


def paired_differences(runs: list[dict]) -> dict:
    """Per loss: second-order minus first-order value of each metric, seed by seed (same seed = same data
    order and initialization), as mean ± std."""
    by_key = {(r["loss"], r["seed"], r["dominance"]): r for r in runs}
    out = {}
    for loss in sorted({r["loss"] for r in runs}):
        seeds = sorted({r["seed"] for r in runs if r["loss"] == loss})
        both = [s for s in seeds if (loss, s, "first") in by_key and (loss, s, "second") in by_key]
        if not both:
            continue
        out[loss] = {}
        for m in METRICS:
            diffs = [by_key[loss, s, "second"][m] - by_key[loss, s, "first"][m] for s in both]
            out[loss][m] = {"mean": statistics.fmean(diffs), "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                            "per_seed": diffs}
    return out


def build_inputs(args: argparse.Namespace) -> dict:
    """Model, JSONL sources and the prepared datasets under args.out; their commands and counts."""
    from aot_cli.tiny_model import build_tiny_model

    rng = random.Random(0)
    taken: set[str] = set()
    test = make_pairs(args.test_pairs, args.hard_share, rng, taken)
    train = make_pairs(args.train_pairs, args.hard_share, rng, taken)
    src = args.out / "source"
    src.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (src / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    model = args.out / "tiny-model"
    if not (model / "config.json").is_file():
        build_tiny_model(model, corpus=[t for r in train + test for t in r.values()])
    commands = {"aot": aot("prepare", src, "-o", args.out / LOSS_DATA["aot"], "--overwrite")}
    if "aot_unpaired" in args.losses:
        commands["aot_unpaired"] = aot("prepare", src, "-o", args.out / LOSS_DATA["aot_unpaired"], "--unpair",
                                       "--disjoint-prompts", "--overwrite")
    hard = sum(r["rejected"] != r["chosen"].upper() for r in train)
    return {"model": str(model), "train_pairs": len(train), "test_pairs": len(test), "hard_train_pairs": hard,
            "prepare": commands}


def train_and_score(args: argparse.Namespace, loss: str, order: str, seed: int) -> dict:
    """One `aot train` run and its `aot eval dominance` on the held-out (paired) test split."""
    run = args.out / "runs" / f"{loss}-{order}-seed{seed}"
    start = time.perf_counter()
    train_cmd = aot("train", "--model", args.out / "tiny-model", "--data", args.out / LOSS_DATA[loss], "-o", run,
                    "--overwrite", "--loss", loss, "--dominance", order, "--beta", args.beta, "--batch-size", 2,
                    "--grad-accum", 8, "--max-steps", args.steps, "--lr", args.lr, "--warmup-ratio", 0, "--seed", seed,
                    "--max-length", 64, "--max-prompt-length", 32, "--save-steps", 0)
    evaluation = args.out / "evals" / run.name
    eval_cmd = aot("eval", "dominance", run, "--data", args.out / LOSS_DATA["aot"], "-o", evaluation, "--overwrite")
    rows = [json.loads(line) for line in (evaluation / "logps.jsonl").read_text().splitlines() if line.strip()]
    return {"loss": loss, "dominance": order, "seed": seed, **tail_metrics(rows, args.beta),
            "wall_s": round(time.perf_counter() - start, 1), "commands": [train_cmd, eval_cmd]}


def print_table(rows: list[dict], differences: dict, beta: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120, highlight=False)
    table = Table(title=f"held-out implicit rewards (beta {beta:g}), mean ± std over seeds")
    for col in ("loss", "dominance", "margin 5% quantile", "chosen 5% quantile", "mean margin", "accuracy"):
        table.add_column(col, justify="left" if col in ("loss", "dominance") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["loss"], r["dominance"], *(f"{r[m]['mean']:.3f} ± {r[m]['std']:.3f}" for m in METRICS))
    for loss, diff in differences.items():
        table.add_row(loss, "second - first", *(f"{diff[m]['mean']:+.3f} ± {diff[m]['std']:.3f}" for m in METRICS))
    console.print(table)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start, cpu_start = begin(args.out, args.threads)
    from aot_cli.artifacts.store import library_versions
    from aot_cli.console import info

    inputs = build_inputs(args)
    runs = []
    for loss in args.losses:
        for seed in args.seeds:
            for order in ("first", "second"):
                runs.append(train_and_score(args, loss, order, seed))
                r = runs[-1]
                info(f"{loss} {order} seed {seed}: margin q05 {r['margin_q05']:.3f}, chosen q05 "
                     f"{r['chosen_q05']:.3f}, mean margin {r['margin_mean']:.3f}, accuracy {r['accuracy']:.3f} "
                     f"({r['wall_s']} s)")
    rows, differences = summarize(runs), paired_differences(runs)
    print_table(rows, differences, args.beta)
    record = {"command": " ".join(["python benchmarks/dominance_order.py", *(sys.argv[1:] if argv is None else argv)]),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "inputs": inputs, "summary": rows, "second_minus_first": differences, "runs": runs,
              "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu_start, 1),
              "versions": library_versions()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    info(f"wrote {args.json} ({record['wall_s']} s wall, {record['cpu_s']} s CPU)")
    return record


if __name__ == "__main__":
    main()
