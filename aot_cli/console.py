"""Where output goes: progress and messages on stderr, result tables on stdout."""

from __future__ import annotations

import os
import sys
import warnings

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

err_console = Console(stderr=True)
out_console = Console()


def progress(*extra_columns, transient: bool = False) -> Progress:
    """A rich progress bar on stderr: description, bar, n/total, elapsed, ETA, then `extra_columns`."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=err_console,
        transient=transient,
        # A transient bar shows nothing off a terminal but would leave a blank line on stderr.
        disable=transient and not err_console.is_interactive,
    )


def info(message: str) -> None:
    """A one-line status message on stderr."""
    err_console.print(message, highlight=False)


def warn(message: str) -> None:
    """A warning the user should read, in plain words, on stderr."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def quiet_libraries() -> None:
    """Hide library noise that tells the user nothing: per-file "Loading weights" bars and known
    deprecation warnings raised inside peft/transformers. Set through the environment and warning
    filters, so nothing heavy is imported; safe to call again once transformers is loaded."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # already imported (Python API callers): the env var came too late
        hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
