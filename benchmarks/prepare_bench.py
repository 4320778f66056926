"""Benchmark `aot prepare` on a generated 60k-row UltraFeedback-shaped set.

    python benchmarks/prepare_bench.py [--rows 60000] [--shape binarized|raw] [--unpair] [--out bench-out]

``binarized`` writes rows shaped like HuggingFaceH4/ultrafeedback_binarized (``prompt``,
``prompt_id``, ``chosen``/``rejected`` as full [user, assistant] message lists, ``messages``,
``score_chosen``, ``score_rejected``); ``raw`` writes openbmb/UltraFeedback rows (``instruction``
and four ``completions`` with ``overall_score`` and annotation ratings), which prepare binarizes.
Texts are random words with UltraFeedback-like lengths (prompt ~40 words, answers ~120), about 4%
of the rows repeat an earlier one, so hygiene has duplicates to find.

Times one in-process ``aot prepare`` run (read, recognize, normalize, binarize, hygiene, split,
optional unpair, fingerprint, save), not the generation; prints wall and CPU seconds (CPU time is
the steadier number on a shared machine) and rows/s, and writes ``OUT/prepare_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

WORDS = ("the model answer question data token value train loss reward prompt user assistant helpful "
         "honest safe code python function return list string number result example test paper "
         "optimal transport alignment distribution quantile sort batch gradient step").split()


def _text(rng: random.Random, mean_words: int) -> str:
    return " ".join(rng.choices(WORDS, k=max(1, int(rng.expovariate(1 / mean_words)) + 3)))


def _binarized_row(rng: random.Random, i: int) -> dict:
    prompt = _text(rng, 40)
    chosen, rejected = _text(rng, 120), _text(rng, 120)
    user = {"role": "user", "content": prompt}
    return {"prompt": prompt, "prompt_id": f"{i:08x}",
            "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}],
            "messages": [user, {"role": "assistant", "content": chosen}],
            "score_chosen": float(rng.randint(6, 10)), "score_rejected": float(rng.randint(1, 6))}


def _raw_row(rng: random.Random, i: int) -> dict:
    def completion() -> dict:
        ratings = {a: {"Rating": str(rng.randint(1, 5)), "Rationale": _text(rng, 10)}
                   for a in ("helpfulness", "honesty", "instruction_following", "truthfulness")}
        return {"model": "m", "principle": "helpfulness", "response": _text(rng, 120),
                "overall_score": float(rng.randint(1, 10)), "annotations": ratings, "critique": _text(rng, 15)}

    return {"source": "bench", "instruction": _text(rng, 40), "models": ["m"] * 4,
            "completions": [completion() for _ in range(4)]}


def generate(path: Path, rows: int, shape: str, seed: int = 0) -> None:
    """Write `rows` JSONL rows of `shape`; ~4% repeat an earlier row."""
    rng = random.Random(seed)
    make = _binarized_row if shape == "binarized" else _raw_row
    made: list[str] = []
    with path.open("w") as handle:
        for i in range(rows):
            line = rng.choice(made) if made and rng.random() < 0.04 else json.dumps(make(rng, i))
            if len(made) < 5000:
                made.append(line)
            handle.write(line + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--shape", choices=("binarized", "raw"), default="binarized")
    parser.add_argument("--unpair", action="store_true", help="also unpair (--unpair --disjoint-prompts)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()

    from aot_cli.config import resolve
    from aot_cli.prepare.config import Config as PrepareConfig
    from aot_cli.prepare.run import run

    args.out.mkdir(parents=True, exist_ok=True)
    source = args.out / f"uf_{args.shape}_{args.rows}.jsonl"
    if not source.exists():
        generate(source, args.rows, args.shape)
    target = args.out / f"prepared_{args.shape}"
    shutil.rmtree(target, ignore_errors=True)
    flags = {"source": str(source), "output": target}
    if args.unpair:
        flags.update(unpair=True, disjoint_prompts=True)
    config = resolve(PrepareConfig, {}, flags)
    start, cpu_start = time.perf_counter(), time.process_time()
    manifest = run(config)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    summary = manifest["summary"]
    result = {"rows": args.rows, "shape": args.shape, "unpair": args.unpair, "seconds": round(seconds, 2),
              "cpu_seconds": round(cpu, 2), "rows_per_s": round(args.rows / seconds),
              "source_mb": round(source.stat().st_size / 2**20, 1),
              "counts": summary["counts"], "dropped": summary["dropped"]}
    (args.out / "prepare_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
