"""AlpacaEval generation throughput: batches in instruction order against batches sorted by prompt
length (what `aot eval alpaca` does), greedy, on the tiny random-init model.

Both orders answer the same instructions with the same model, batch size and max_new_tokens; greedy
decoding makes the answers identical (checked), so both generate exactly the same tokens and only
the padding differs. The two orders alternate, `--repeats` times each, in one process (one thread
by default); the table gives each run's generated tokens/s (wall time of the generate calls, model
loading and one warm-up pass excluded), the median per order, and the share of prompt positions that are real tokens.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/generation_bench.py --out bench-out/generation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

WORDS = ("please explain why the quick brown fox jumps over the lazy dog and what it means for a short answer "
         "here is a long answer it depends on the details of the question you asked").split()


def instructions(n: int, seed: int, shortest: int, longest: int) -> list[dict]:
    """`n` instructions whose word counts are log-uniform in [shortest, longest] (many short, a few
    long: AlpacaEval's shape), in random order."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = round(shortest * (longest / shortest) ** rng.random())
        rows.append({"instruction": f"{i}. " + " ".join(rng.choice(WORDS) for _ in range(words)), "dataset": "bench"})
    return rows


def useful_fraction(lengths: list[int], plan: list[list[int]]) -> float:
    """Real prompt tokens over the padded prompt positions of a batch plan."""
    padded = sum(max(lengths[k] for k in batch) * len(batch) for batch in plan)
    return sum(lengths) / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=48, help="instructions")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--shortest", type=int, default=3, help="fewest words in an instruction")
    parser.add_argument("--longest", type=int, default=300, help="most words in an instruction")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from aot_cli.data.tokenize import load_tokenizer
    from aot_cli.eval.generate import batch_plan, generate_outputs, prompt_ids
    from aot_cli.tiny_model import build_tiny_model

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", hidden=args.hidden, layers=args.layers)
        tokenizer = load_tokenizer(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        rows = instructions(args.n, args.seed, args.shortest, args.longest)
        lengths = [len(prompt_ids(tokenizer, r["instruction"])) for r in rows]
        useful = {order: useful_fraction(lengths, batch_plan(lengths, args.batch_size, order == "sorted"))
                  for order in ("plain", "sorted")}
        generate_outputs(model, tokenizer, rows[:args.batch_size], Path(tmp) / "warm-up.json", generator="bench",
                         batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, temperature=0.0,
                         seed=args.seed)   # first calls are slower (allocator, kernels): not timed
        runs, answers = [], {}
        for repeat in range(args.repeats):
            for order in ("plain", "sorted"):
                path = Path(tmp) / f"{order}-{repeat}.json"
                outputs, speed = generate_outputs(model, tokenizer, rows, path, generator="bench",
                                                  batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                                  temperature=0.0, seed=args.seed, by_length=order == "sorted")
                answers.setdefault(order, outputs)
                runs.append({"order": order, "repeat": repeat, **speed.record()})
                print(f"{order:6s} run {repeat}: {speed.tokens} tokens in {speed.seconds:.2f} s = "
                      f"{speed.tokens_per_s:.1f} tokens/s", flush=True)
    if answers["plain"] != answers["sorted"]:
        raise SystemExit("greedy answers differ between the two orders: the comparison is not like for like")

    median = {o: statistics.median(r["tokens_per_s"] for r in runs if r["order"] == o) for o in ("plain", "sorted")}
    result = {
        "started": started, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_at_start": load,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "prompt_tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths),
                          "total": sum(lengths)},
        "generated_tokens": runs[0]["generated_tokens"], "useful_prompt_fraction": useful,
        "median_tokens_per_s": median, "speedup": median["sorted"] / median["plain"], "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"prompt tokens {min(lengths)}-{max(lengths)} (median {statistics.median(lengths)}), "
          f"{result['generated_tokens']} generated per run")
    print("| order | useful prompt positions | median tokens/s |\n|---|---|---|")
    for order in ("plain", "sorted"):
        print(f"| {order} | {useful[order]:.2f} | {median[order]:.1f} |")
    print(f"sorted / plain: {result['speedup']:.2f}x; wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
