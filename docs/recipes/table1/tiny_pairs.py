"""Write a small paired preference set (JSONL: prompt, chosen, rejected) for `make smoke`.

Short, deterministic rows from a few templates (sums, capitals, opposites, polite replies), so the
smoke run trains, merges and evaluates every method in seconds on a CPU with the tiny model; the
rows carry no real preference signal worth reporting. ``python tiny_pairs.py OUT.jsonl [--rows N]``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CAPITALS = [("France", "Paris", "Lyon"), ("Italy", "Rome", "Milan"), ("Japan", "Tokyo", "Osaka"),
            ("Spain", "Madrid", "Seville"), ("Canada", "Ottawa", "Toronto"), ("Kenya", "Nairobi", "Mombasa")]
OPPOSITES = [("hot", "cold"), ("up", "down"), ("early", "late"), ("light", "dark"), ("open", "closed")]
REQUESTS = [("Thank me for the help.", "Thank you very much for your help!"),
            ("Say good morning.", "Good morning to you!"),
            ("Apologise for the delay.", "I am sorry for the delay."),
            ("Wish me luck.", "Good luck, you will do well!")]


def row(i: int, rng: random.Random) -> dict:
    """The i-th pair: a template chosen by i, its blanks drawn from rng."""
    kind = i % 4
    if kind == 0:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        return {"prompt": f"What is {a} plus {b}?", "chosen": f"{a} plus {b} is {a + b}.",
                "rejected": f"{a} plus {b} is {a + b + rng.randint(1, 9)}."}
    if kind == 1:
        country, right, wrong = rng.choice(CAPITALS)
        return {"prompt": f"What is the capital of {country}? (question {i})",
                "chosen": f"The capital of {country} is {right}.",
                "rejected": f"It is {wrong}."}
    if kind == 2:
        word, opposite = rng.choice(OPPOSITES)
        return {"prompt": f"Give the opposite of '{word}' (example {i}).",
                "chosen": f"The opposite of {word} is {opposite}.", "rejected": f"The opposite of {word} is {word}."}
    request, reply = rng.choice(REQUESTS)
    return {"prompt": f"{request} (note {i})", "chosen": reply, "rejected": "No."}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(row(i, rng)) + "\n" for i in range(args.rows)))
    print(args.out)


if __name__ == "__main__":
    main()
