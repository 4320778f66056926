"""The `aot train` side of the benchmark, in its own process: ``python benchmarks/run_aot.py RESULT.json
-- TRAIN ARGS...`` runs the real `aot train` entry point with a :class:`StepClock` installed and
writes its marks to RESULT.json. The parent measures the process's peak RSS."""

from __future__ import annotations

import sys

from step_clock import StepClock


def main() -> None:
    result, args = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    clock = StepClock().install()
    from aot_cli.cli import app

    try:
        app(["train", *args])  # exits through SystemExit with the command's code
    finally:
        clock.dump(result)


if __name__ == "__main__":
    main()
