"""Generate a small preference set that a tiny model can learn, made by the project (no downloads).

``python -m aot_cli.tiny_data OUT.jsonl --rows N --seed S [--unpaired]`` writes plain-string rows
``{"prompt", "chosen", "rejected"}`` (or, with ``--unpaired``, ``{"prompt", "completion", "label"}``),
the same bytes for the same arguments. ``make demo`` trains on it, and the tiny model
(``aot_cli.tiny_model``) learns its tokenizer from it.

The rule: every prompt asks for a sentence about a thing in one of two moods, cheerful or gloomy;
the chosen answer is written in the mood asked for, the rejected one in the other mood. Why this rule:

- it is about the prompt's content: half the prompts ask for each mood, so no answer word is
  preferred on its own and a model has to read the prompt to tell chosen from rejected;
- held-out prompts share it (other things, adjectives and wordings, the same two moods), so the
  held-out reward accuracy measures what training taught;
- both moods are built from parallel phrase lists of similar lengths, and each answer has one to
  three clauses drawn independently, so the chosen answer is longer in about a third of the pairs
  and shorter in another third: length says nothing about which answer is preferred.

The unpaired variant keeps one answer per prompt (half chosen, label true; half rejected, label
false): the shape of KTO-style data, with prompts that never appear twice.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

from aot_cli.errors import UserError

MOODS = ("cheerful", "gloomy")
THINGS = ["garden", "river", "lantern", "kitchen", "harbor", "meadow", "library", "bicycle", "window",
          "forest", "market", "violin", "candle", "bridge", "orchard", "island", "castle", "kettle",
          "tunnel", "village", "beach", "attic", "train", "chair"]
ADJECTIVES = ["old", "small", "tall", "quiet", "wooden", "narrow", "distant", "round", "painted", "stone",
              "little", "long", "blue", "hidden"]
PROMPTS = ["Write a {mood} sentence about the {thing}.",
           "Describe the {thing} in a {mood} tone.",
           "Give me one {mood} line about the {thing}.",
           "Tell me about the {thing}, and keep it {mood}."]
# Parallel lists: the i-th cheerful and gloomy phrases have about the same length.
MAIN = {"cheerful": ["glows in the warm sunshine", "is full of laughter and music", "makes everyone smile",
                     "sparkles like a happy song", "welcomes friends with bright colours",
                     "hums a sweet and joyful tune", "shines with a golden light"],
        "gloomy": ["sits alone in the cold rain", "is full of dust and silence", "makes everyone sigh",
                   "fades like a sad old song", "hides from friends in grey shadows",
                   "creaks with a bitter and lonely sound", "sinks into a heavy darkness"]}
MORE = {"cheerful": ["and children laugh", "and birds sing", "and the sky is clear", "and everyone is glad",
                     "and flowers bloom"],
        "gloomy": ["and nobody visits", "and crows cry", "and the sky is grey", "and everyone is sad",
                   "and weeds grow"]}


def _answer(thing: str, mood: str, clauses: int, rng: random.Random) -> str:
    """'The {thing} {main phrase}[, {more phrases}].' in one mood, with 1-3 clauses."""
    parts = [f"The {thing} {rng.choice(MAIN[mood])}"] + rng.sample(MORE[mood], clauses - 1)
    return ", ".join(parts) + "."


def preference_pairs(rows: int, seed: int = 0) -> list[dict[str, str]]:
    """`rows` pairs with distinct prompts (deterministic for a seed): chosen in the asked mood."""
    combos = list(itertools.product(PROMPTS, MOODS, ADJECTIVES, THINGS))
    if not 1 <= rows <= len(combos):
        raise UserError(f"--rows {rows}: the generator has {len(combos)} distinct prompts; "
                        f"ask for 1 to {len(combos)} rows")
    rng = random.Random(seed)
    pairs = []
    for template, mood, adjective, thing in rng.sample(combos, rows):
        other = MOODS[1 - MOODS.index(mood)]
        thing = f"{adjective} {thing}"
        pairs.append({"prompt": template.format(mood=mood, thing=thing),
                      "chosen": _answer(thing, mood, rng.randint(1, 3), rng),
                      "rejected": _answer(thing, other, rng.randint(1, 3), rng)})
    return pairs


def labelled_rows(rows: int, seed: int = 0) -> list[dict]:
    """The unpaired variant: one answer per prompt, alternately the chosen (label true) and the
    rejected one (label false), so the labels are balanced and no prompt repeats."""
    return [{"prompt": pair["prompt"], "completion": pair["chosen" if i % 2 == 0 else "rejected"],
             "label": i % 2 == 0}
            for i, pair in enumerate(preference_pairs(rows, seed))]


def corpus(rows: int = 640, seed: int = 0) -> list[str]:
    """Every prompt and answer of a generated set: the tiny model's tokenizer corpus when no files
    are given (the test suite's tiny model learns its tokenizer from it)."""
    return [text for pair in preference_pairs(rows, seed) for text in pair.values()]


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSONL file to write")
    parser.add_argument("--rows", type=int, default=640, help="number of prompts (default 640)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unpaired", action="store_true",
                        help="write prompt/completion/label rows, one answer per prompt")
    args = parser.parse_args(argv)
    try:
        rows = (labelled_rows if args.unpaired else preference_pairs)(args.rows, args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(write_jsonl(args.out, rows))


if __name__ == "__main__":
    main()
