"""Does the size of the sort set matter for AOT? A reproducible toy experiment, through the real CLI.

    python benchmarks/sort_set_effect.py [--quick] [--seeds 42 7 1] [--out bench-out/sort-set]

The task, built on the spot (no downloads): a prompt asks for a one-line answer in lowercase
letters; the chosen answer is lowercase, the rejected one is the same sentence in capitals. 45% of
the training pairs are flipped (label noise); the test split is clean. A tiny random-init Llama
(``aot_cli.tiny_model``) with a tokenizer trained on these texts is the base model.

The data goes through ``aot prepare`` (paired for ``--loss aot``; ``--unpair --disjoint-prompts`` for
``--loss aot_unpaired``, the paper's unpaired setting). Every run then trains with 16 samples per
optimizer step, the same steps, lr, beta and seed, and only the sort set changes:

- ``micro-2``:  ``--sort-scope micro --batch-size 2 --grad-accum 8`` (sorts 2 together: TRL's
  behaviour on a GPU that fits 2 pairs);
- ``micro-4``, ``micro-8``: the same with micro-batches of 4 and 8 (sort sets 4 and 8);
- ``global-16``: ``--sort-scope global --batch-size 2 --grad-accum 8`` (sorts 16, same memory as micro-2);
- ``micro-16``: ``--batch-size 16 --grad-accum 1`` (sorts 16 in one micro-batch: must match
  ``global-16`` up to float noise).

Each run is scored on the clean held-out split by ``aot eval dominance RUN --data DATA``
(its ``results.json``: implicit-reward accuracy, mean reward margin, violation fraction). Commands
run in this process through the real ``aot`` typer app (``aot ARGS``), so the libraries are
imported once. Writes a table, ``--json`` (every number and command) and ``--figure``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from in_process import aot, begin

ADJECTIVES = ["quiet", "bright", "small", "heavy", "warm", "old", "green", "sharp", "soft", "round",
              "tall", "empty", "golden", "narrow", "calm", "wild", "clever", "dusty", "frozen", "gentle"]
NOUNS = ["apple", "river", "stone", "cloud", "paper", "garden", "window", "music", "forest", "candle",
         "bridge", "silver", "planet", "coffee", "market", "winter", "engine", "letter", "island", "pencil",
         "harbor", "lantern", "meadow", "rocket", "tunnel", "violin", "basket", "castle", "desert", "feather"]
RELATIONS = ["close to", "far from", "under", "above", "next to", "behind", "inside", "around"]
TAILS = ["as it was yesterday", "in the early morning", "when the wind is calm", "after the long rain",
         "like a small song", "for a little while"]

# (name, --sort-scope, --batch-size, --grad-accum, sort-set size): 16 samples per step for all.
CONFIGS = [
    ("micro-2", "micro", 2, 8, 2),
    ("micro-4", "micro", 4, 4, 4),
    ("micro-8", "micro", 8, 2, 8),
    ("global-16", "global", 2, 8, 16),
    ("micro-16", "micro", 16, 1, 16),
]
QUICK_CONFIGS = ("micro-2", "global-16")
METRICS = ("accuracy", "mean_difference", "violation_fraction")
PAIR_METRICS = ("pair_margin_std", "pair_margin_ref_corr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One seed, unpaired only, micro-2 vs global-16, "
                        "fewer steps (about a minute).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1],
                        help="Training seeds (data order, LoRA init).")
    parser.add_argument("--losses", nargs="+", default=["aot_unpaired", "aot"], choices=["aot_unpaired", "aot"])
    parser.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS], choices=[c[0] for c in CONFIGS])
    parser.add_argument("--steps", type=int, default=48, help="Optimizer steps of every run (16 samples each).")
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate.")
    parser.add_argument("--beta", type=float, default=1.0, help="AOT beta (see docs/sort-set.md for why not 0.01).")
    parser.add_argument("--noise", type=float, default=0.45, help="Fraction of training pairs flipped.")
    parser.add_argument("--train-pairs", type=int, default=1024)
    parser.add_argument("--test-pairs", type=int, default=128)
    parser.add_argument("--out", type=Path, help="Work directory: model, data, runs (default: bench-out/sort-set, "
                        "bench-out/sort-set-quick with --quick).")
    parser.add_argument("--json", type=Path, help="Default: bench-out/sort_set_effect.json "
                        "(bench-out/sort_set_effect_quick.json with --quick).")
    parser.add_argument("--figure", type=Path, help="Default: docs/img/sort_set_effect.png, the figure of "
                        "docs/sort-set.md (bench-out/sort_set_effect_quick.png with --quick).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared).")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.losses, args.configs = args.seeds[:1], ["aot_unpaired"], list(QUICK_CONFIGS)
        args.steps = min(args.steps, 32)
    suffix = "_quick" if args.quick else ""
    args.out = args.out or Path("bench-out/sort-set-quick" if args.quick else "bench-out/sort-set")
    args.json = args.json or Path(f"bench-out/sort_set_effect{suffix}.json")
    args.figure = args.figure or (Path("bench-out/sort_set_effect_quick.png") if args.quick
                                  else Path("docs/img/sort_set_effect.png"))
    return args


def make_pairs(n: int, rng: random.Random, taken: set[str]) -> list[dict]:
    """`n` clean pairs with prompts not in `taken`: the chosen answer is lowercase, the rejected the
    same sentence in capitals (the only difference between them is the property to learn)."""
    rows = []
    while len(rows) < n:
        adj, noun, other = rng.choice(ADJECTIVES), *rng.sample(NOUNS, 2)
        prompt = f"In lowercase letters, tell me where the {adj} {noun} is."
        prompt += f" Mention the {other}."
        if prompt in taken:
            continue
        taken.add(prompt)
        answer = f"the {adj} {noun} is {rng.choice(RELATIONS)} the {other}, {rng.choice(TAILS)}."
        rows.append({"prompt": prompt, "chosen": answer, "rejected": answer.upper()})
    return rows


def flip(rows: list[dict], fraction: float, rng: random.Random) -> int:
    """Swap chosen and rejected in about `fraction` of the rows (label noise); returns how many."""
    flipped = 0
    for row in rows:
        if rng.random() < fraction:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            flipped += 1
    return flipped


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def build_inputs(args: argparse.Namespace) -> dict:
    """Model, JSONL sources and both prepared datasets under args.out; their commands and counts."""
    from aot_cli.tiny_model import build_tiny_model

    rng = random.Random(0)
    taken: set[str] = set()
    test = make_pairs(args.test_pairs, rng, taken)
    train = make_pairs(args.train_pairs, rng, taken)
    flipped = flip(train, args.noise, rng)
    src = args.out / "source"
    write_jsonl(src / "train.jsonl", train)
    write_jsonl(src / "test.jsonl", test)
    model = args.out / "tiny-model"
    if not (model / "config.json").is_file():
        build_tiny_model(model, corpus=[t for r in train + test for t in r.values()])
    commands = {
        "aot": aot("prepare", src, "-o", args.out / "data-paired", "--overwrite"),
        "aot_unpaired": aot("prepare", src, "-o", args.out / "data-unpaired", "--unpair", "--disjoint-prompts",
                            "--overwrite"),
    }
    counts = {}
    for loss, name in (("aot", "data-paired"), ("aot_unpaired", "data-unpaired")):
        summary = json.loads((args.out / name / "manifest.json").read_text())["summary"]
        counts[loss] = {k: summary.get(k) for k in ("counts", "dropped", "label_balance")}
    return {"model": str(model), "train_pairs": len(train), "test_pairs": len(test), "flipped": flipped,
            "prepare": commands, "datasets": counts}


def train_and_score(args: argparse.Namespace, loss: str, config: tuple, seed: int) -> dict:
    """One `aot train` run and its `aot eval dominance` on the clean test split."""
    name, scope, batch, accum, sort_set = config
    data = args.out / ("data-unpaired" if loss == "aot_unpaired" else "data-paired")
    run = args.out / "runs" / f"{loss}-{name}-seed{seed}"
    start = time.perf_counter()
    train_cmd = aot("train", "--model", args.out / "tiny-model", "--data", data, "-o", run, "--overwrite",
                    "--loss", loss, "--beta", args.beta, "--sort-scope", scope, "--batch-size", batch,
                    "--grad-accum", accum, "--max-steps", args.steps, "--lr", args.lr, "--warmup-ratio", 0,
                    "--seed", seed, "--max-length", 64, "--max-prompt-length", 32, "--save-steps", 0)
    train_s = time.perf_counter() - start
    evaluation = args.out / "evals" / run.name  # an output may not sit inside its input run
    eval_cmd = aot("eval", "dominance", run, "--data", data, "-o", evaluation, "--overwrite")
    scores = json.loads((evaluation / "results.json").read_text())["scores"]["implicit_rewards"]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    spread = pair_spread(evaluation / "logps.jsonl", args.beta) if loss == "aot" else {}
    return {"loss": loss, "config": name, "sort_scope": scope, "batch_size": batch, "grad_accum": accum,
            "sort_set": sort_set, "seed": seed, **{m: scores[m] for m in METRICS}, **spread,
            "train_loss_last": log[-1]["loss"], "train_wall_s": round(train_s, 1),
            "wall_s": round(time.perf_counter() - start, 1), "commands": [train_cmd, eval_cmd]}


def pair_spread(logps_file: Path, beta: float) -> dict:
    """Paired runs: how the held-out reward margins ``beta * (log-ratio chosen - log-ratio rejected)``
    spread over the test pairs, and their correlation with the reference's own margin (from the
    per-example log-probs that `aot eval dominance` writes)."""
    import numpy as np

    rows = [json.loads(line) for line in logps_file.read_text().splitlines() if line.strip()]
    get = lambda key: np.array([r[key] for r in rows])
    ref_margin = get("ref_chosen") - get("ref_rejected")
    margin = beta * (get("policy_chosen") - get("policy_rejected") - ref_margin)
    return {"pair_margin_std": float(margin.std()),
            "pair_margin_ref_corr": float(np.corrcoef(margin, ref_margin)[0, 1])}


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and (sample) standard deviation over seeds, per loss and config."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["loss"], r["config"]), []).append(r)
    rows = []
    for (loss, name), members in groups.items():
        row = {"loss": loss, "config": name, "sort_set": members[0]["sort_set"],
               "sort_scope": members[0]["sort_scope"], "batch_size": members[0]["batch_size"],
               "grad_accum": members[0]["grad_accum"], "seeds": [m["seed"] for m in members]}
        for m in METRICS + tuple(k for k in PAIR_METRICS if k in members[0]):
            values = [r[m] for r in members]
            row[m] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        rows.append(row)
    return rows


def equivalence(runs: list[dict]) -> dict:
    """Largest |global-16 - micro-16| per metric over losses and seeds: the global scope with
    micro-batch 2 must give the update of one micro-batch of 16, so this is float noise."""
    by_key = {(r["loss"], r["seed"], r["config"]): r for r in runs}
    gaps = {m: 0.0 for m in METRICS}
    pairs = 0
    for (loss, seed, name), r in by_key.items():
        twin = by_key.get((loss, seed, "micro-16"))
        if name == "global-16" and twin:
            pairs += 1
            for m in METRICS:
                gaps[m] = max(gaps[m], abs(r[m] - twin[m]))
    return {"pairs": pairs, "max_abs_diff": gaps} if pairs else {}


def print_table(rows: list[dict], beta: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=110, highlight=False)  # wide enough for every column, also when piped
    table = Table(title="held-out (clean test split) implicit rewards, mean ± std over seeds")
    for col in ("loss", "run", "sort set", "accuracy", f"margin (beta {beta:g})", "violation frac.", "pair-margin sd"):
        table.add_column(col, justify="left" if col in ("loss", "run") else "right", no_wrap=True)
    for r in rows:
        one = len(r["seeds"]) == 1

        def cell(m, f, r=r, one=one):
            return f"{r[m]['mean']:{f}}" + ("" if one else f" ± {r[m]['std']:{f}}")
        table.add_row(r["loss"], r["config"], str(r["sort_set"]), cell("accuracy", ".3f"),
                      cell("mean_difference", ".3f"), cell("violation_fraction", ".3f"),
                      cell("pair_margin_std", ".3f") if "pair_margin_std" in r else "-")
    console.print(table)
    for name, scope, batch, accum, _ in (c for c in CONFIGS if c[0] in {r["config"] for r in rows}):
        console.print(f"  {name}: --sort-scope {scope} --batch-size {batch} --grad-accum {accum}")


def plot(rows: list[dict], path: Path, *, beta: float, steps: int, noise: float) -> None:
    """Held-out margin and accuracy against the sort-set size, one line per loss (micro scope),
    the global-scope runs (micro-batch 2) as separate markers at 16."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in ((axes[0], "mean_difference", f"held-out mean reward margin (beta {beta:g})"),
                              (axes[1], "accuracy", "held-out implicit-reward accuracy")):
        for color, loss in zip(("C0", "C1"), ("aot_unpaired", "aot")):
            micro = sorted((r for r in rows if r["loss"] == loss and r["sort_scope"] == "micro"),
                           key=lambda r: r["sort_set"])
            if micro:
                ax.errorbar([r["sort_set"] for r in micro], [r[metric]["mean"] for r in micro],
                            yerr=[r[metric]["std"] for r in micro], color=color, marker="o", capsize=3,
                            label=f"{loss}: --sort-scope micro (micro-batch = sort set)")
            for r in rows:
                if r["loss"] == loss and r["sort_scope"] == "global":
                    ax.errorbar([r["sort_set"] * 1.06], [r[metric]["mean"]], yerr=[r[metric]["std"]], color=color,
                                marker="*", markersize=14, capsize=3, linestyle="none",
                                label=f"{loss}: --sort-scope global, micro-batch {r['batch_size']}")
        ax.set_xscale("log", base=2)
        ax.set_xticks([2, 4, 8, 16], labels=["2", "4", "8", "16"])
        ax.set_xlabel("sort set (samples sorted together; 16 per optimizer step in every run)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Sort-set size vs held-out reward dominance (tiny Llama, {steps} steps, "
                 f"{noise:.0%} of training pairs flipped)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start, cpu_start = begin(args.out, args.threads)
    from aot_cli.artifacts.store import library_versions
    from aot_cli.console import info

    inputs = build_inputs(args)
    configs = [c for c in CONFIGS if c[0] in args.configs]
    runs = []
    for loss in args.losses:
        for seed in args.seeds:
            for config in configs:
                runs.append(train_and_score(args, loss, config, seed))
                r = runs[-1]
                info(f"{loss} {r['config']} seed {seed}: accuracy {r['accuracy']:.3f}, margin "
                     f"{r['mean_difference']:.3f}, violations {r['violation_fraction']:.3f} ({r['wall_s']} s)")
    rows = summarize(runs)
    print_table(rows, args.beta)
    check = equivalence(runs)
    if check:
        info(f"global-16 vs micro-16 (should be equal): largest difference over {check['pairs']} seed/loss pairs "
             + ", ".join(f"{m} {v:.2e}" for m, v in check["max_abs_diff"].items()))
    plot(rows, args.figure, beta=args.beta, steps=args.steps, noise=args.noise)
    record = {"command": " ".join(["python benchmarks/sort_set_effect.py", *(sys.argv[1:] if argv is None else argv)]),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "inputs": inputs, "summary": rows, "global_vs_micro_16": check, "runs": runs,
              "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu_start, 1),
              "versions": library_versions()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    info(f"wrote {args.json} and {args.figure} ({record['wall_s']} s wall, {record['cpu_s']} s CPU)")


if __name__ == "__main__":
    main()
