"""The `aot train` side of the benchmark, in its own process: ``python benchmarks/run_aot.py RESULT.json
-- TRAIN ARGS...`` is ``python -m aot_cli train TRAIN ARGS...`` with a :class:`StepClock` installed;
it writes the clock's marks to RESULT.json. The parent measures the process's peak RSS.

Why ``runpy`` rather than importing the CLI object: the command line is the stable interface of
`aot train` (its flags, exit codes and ``error:`` lines), while the package's modules may move.
"""

from __future__ import annotations

import runpy
import sys

from step_clock import StepClock


def main() -> None:
    result, args = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    clock = StepClock().install()
    sys.argv = ["aot", "train", *args]
    try:
        runpy.run_module("aot_cli", run_name="__main__", alter_sys=True)  # exits with the command's code
    finally:
        clock.dump(result)


if __name__ == "__main__":
    main()
