"""Running ``aot`` commands inside a benchmark's own process: the libraries load once for dozens of
runs, and nothing reaches the network.

Both experiment scripts (``dominance_order.py``, ``sort_set_effect.py``) call :func:`offline` before
they import torch, then :func:`aot` for every command, which fails loudly on a non-zero exit so a
broken command never turns into a table of stale numbers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def offline(out: Path) -> None:
    """Hub access off and the aot cache under OUT (unless the caller set them), for reproducible runs."""
    os.environ.setdefault("AOT_CACHE_DIR", str((out / "cache").resolve()))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def begin(out: Path, threads: int) -> tuple[float, float]:
    """Set up an experiment writing under OUT: offline, `threads` torch threads, OUT made; returns the
    wall and CPU clocks at the start (for the report's timings)."""
    offline(out)
    import torch  # after offline(): the hub libraries read those variables when first imported

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    return time.perf_counter(), time.process_time()


def aot(*args) -> str:
    """Run ``aot ARGS`` in this process through the real typer app; returns the command line."""
    from aot_cli.cli import app  # after offline(): the app's commands import the hub libraries

    argv = [str(a) for a in args]
    try:  # without standalone mode click returns typer.Exit's code instead of raising it
        code = app(argv, prog_name="aot", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    if code:
        raise RuntimeError(f"aot {' '.join(argv)} exited {code}")
    return "aot " + " ".join(argv)
