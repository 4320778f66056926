"""Where output goes: progress and messages on stderr, result tables on stdout.

Progress has two faces. In a terminal it is a rich bar (one line per task, its ``stats`` field on a
line of its own, so a training bar reads whole in 80 columns). Anywhere else (``make``, CI, ``| tee``,
a log file) a bar redrawn with carriage returns would be hidden or garbled, so progress becomes plain
lines instead: one every ``$AOT_PROGRESS_INTERVAL`` seconds (default 10; 0 = every update) while the
work goes on, and one when it ends. The tqdm bars of the libraries we call (lm-eval's, transformers',
datasets') are routed to the same plain lines off a terminal, so no output of a command carries a
carriage return when it is not a terminal.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from datetime import timedelta
from typing import Any

import tqdm.std
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from aot_cli.errors import UserError

err_console = Console(stderr=True)
out_console = Console()

INTERVAL_ENV = "AOT_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0


def interval_seconds() -> float:
    """Seconds between two plain progress lines (``$AOT_PROGRESS_INTERVAL``, default 10)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds >= 0 (0 logs every update)")
    return value


def _clock(seconds: float | None) -> str:
    return "-:--:--" if seconds is None else str(timedelta(seconds=int(seconds)))


def _count(value: float) -> str:
    return f"{value:g}" if not float(value).is_integer() else str(int(value))


def plain_line(description: str, completed: float, total: float | None, *, elapsed: float,
               eta: float | None, unit: str = "", stats: str = "", done: bool = False) -> str:
    """One progress line without control characters, e.g. ``Training: step 30/100 (30%), 0:00:12
    elapsed, ETA 0:00:28; loss 0.6931, reward acc 0.50``."""
    where = f"{unit} {_count(completed)}" if unit else _count(completed)
    if total:
        where += f"/{_count(total)} ({100 * completed / total:.0f}%)"
    if done:
        timing = f"done in {_clock(elapsed)}"
    else:
        timing = f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}"
    line = f"{description}: {where}, {timing}" if description else f"{where}, {timing}"
    return f"{line}; {stats}" if stats else line


def _write_line(line: str) -> None:
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


class _BarProgress(Progress):
    """The terminal face: rich's bar, with a task's ``stats`` field on its own dim line below it."""

    def get_renderables(self):
        for task in self.tasks:
            if not task.visible:
                continue
            yield self.make_tasks_table([task])
            if task.fields.get("stats"):
                yield Text("  " + task.fields["stats"], style="dim", overflow="ellipsis", no_wrap=True)


class _PlainProgress(Progress):
    """The face off a terminal: nothing is drawn; a plain line is printed every `interval` seconds per
    visible task, and a last one when the progress stops (always for a lasting bar, and for a
    transient one that printed anything: a quick step stays quiet)."""

    def __init__(self, *, transient: bool, interval: float):
        super().__init__(console=err_console, transient=transient, disable=True)
        self._interval = interval
        self._last: dict[TaskID, float] = {}
        self._first: dict[TaskID, float] = {}
        self._logged: set[TaskID] = set()

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields: Any) -> TaskID:
        task_id = super().add_task(description, start=start, total=total, completed=completed, visible=visible,
                                   **fields)
        self._last[task_id] = self.get_time()
        self._first[task_id] = completed
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._maybe_log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log(task_id)

    def _eta(self, task: Task) -> float | None:
        """Remaining time at the average rate since this process started the task (steady in logs)."""
        done = task.completed - self._first[task.id]
        if not task.total or done <= 0 or not task.elapsed:
            return None
        return task.elapsed / done * max(task.total - task.completed, 0)

    def _line(self, task: Task, *, done: bool) -> str:
        return plain_line(task.description, task.completed, task.total, elapsed=task.elapsed or 0.0,
                          eta=self._eta(task), unit=task.fields.get("unit", ""),
                          stats=task.fields.get("stats", ""), done=done)

    def _maybe_log(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        now = self.get_time()
        if not task.visible or task.finished or now - self._last[task_id] < self._interval:
            return
        self._last[task_id] = now
        self._logged.add(task_id)
        _write_line(self._line(task, done=False))

    def stop(self) -> None:
        for task in self.tasks:
            if task.visible and (not self.live.transient or task.id in self._logged):
                _write_line(self._line(task, done=task.finished))
        super().stop()


def progress(*, transient: bool = False) -> Progress:
    """Progress on stderr: a rich bar (description, bar, n/total, elapsed, ETA) in a terminal, plain
    periodic lines elsewhere (module docstring). A task's ``stats`` field is shown under its bar, or
    at the end of its plain line; a ``unit`` field names the count in plain lines (``step 30/100``).
    A `transient` bar disappears when done."""
    if not err_console.is_interactive:
        return _PlainProgress(transient=transient, interval=interval_seconds())
    return _BarProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


def as_typed(path) -> str:
    """`path` relative to the working directory when it lies below it, else as it is: manifests record
    local inputs as absolute paths (so later steps find them from anywhere), while what aot prints reads
    like the command the user typed. Hub ids and relative paths come back unchanged."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    relative = os.path.relpath(text)
    return text if relative.startswith("..") else relative


def info(message: str) -> None:
    """A one-line status message on stderr (never wrapped off a terminal: log lines stay whole)."""
    err_console.print(message, highlight=False, soft_wrap=not err_console.is_terminal)


def warn(message: str) -> None:
    """A warning the user should read, in plain words, on stderr."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=not err_console.is_terminal)


# --- library tqdm bars off a terminal --------------------------------------------------------------
# lm-eval, transformers and datasets create their bars with ``from tqdm import tqdm`` (or tqdm.auto),
# bound when they are imported, so no argument or subclass can reach them; every one of those classes
# inherits display/close/clear from tqdm.std.tqdm, which is where the plain face is put. A bar whose
# file is a terminal keeps tqdm's own behaviour.
_TQDM_DISPLAY, _TQDM_CLOSE, _TQDM_CLEAR = tqdm.std.tqdm.display, tqdm.std.tqdm.close, tqdm.std.tqdm.clear


def _tqdm_on_terminal(bar: Any) -> bool:
    isatty = getattr(bar.fp, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")


def _tqdm_line(bar: Any, *, done: bool) -> str:
    d = bar.format_dict
    done_here = d["n"] - (d.get("initial") or 0)
    eta = None
    if d["total"] and done_here > 0 and d["elapsed"]:
        eta = d["elapsed"] / done_here * max(d["total"] - d["n"], 0)   # the average rate: steady in logs
    return plain_line(str(d.get("prefix") or "").rstrip(": "), d["n"], d["total"], elapsed=d["elapsed"],
                      eta=eta, stats=str(d.get("postfix") or "").lstrip(", "), done=done)


def _tqdm_write(bar: Any, line: str) -> None:
    """A line to the bar's own file (stderr unless the library chose another)."""
    bar.fp.write(line + "\n")
    bar.fp.flush()


def _tqdm_display(self: Any, msg: str | None = None, pos: int | None = None) -> bool:
    if _tqdm_on_terminal(self):
        return _TQDM_DISPLAY(self, msg, pos)
    if msg is not None:   # tqdm clearing its line: there is no line to clear
        return False
    now = self._time()
    last = getattr(self, "_aot_last", None)
    if last is None:   # the bar's first display, as it is created: the clock starts
        self._aot_last = now
    elif now - last >= interval_seconds() and (self.total is None or self.n < self.total):
        self._aot_last, self._aot_logged = now, True
        _tqdm_write(self, _tqdm_line(self, done=False))
    return True


def _tqdm_close(self: Any) -> None:
    if not getattr(self, "disable", True) and not _tqdm_on_terminal(self):
        # A kept bar ends with one line; an unnamed one only if it said something before ("6/6" alone
        # says nothing).
        if (self.leave is not False and self.desc) or getattr(self, "_aot_logged", False):
            _tqdm_write(self, _tqdm_line(self, done=self.total is not None and self.n >= self.total))
        self.leave = False   # tqdm would end a kept bar with a newline of its own
    _TQDM_CLOSE(self)


def _tqdm_clear(self: Any, nolock: bool = False) -> None:
    if _tqdm_on_terminal(self):
        _TQDM_CLEAR(self, nolock)


class _DropMessages(logging.Filter):
    """Drop a library's log records that start with one of `prefixes` (noise we know is harmless)."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# bitsandbytes (imported by peft) tries to fetch an optional CPU 4-bit kernel package at import and
# logs a warning when it is absent, on every command; 4-bit training is for CUDA, where it is unused.
_BNB_KERNEL_NOISE = _DropMessages("Failed to load CPU gemm_4bit_forward")
# DeepSpeed logs to stdout: that it picked the CPU (it did not find a GPU: the user knows) and that aot's own
# AdamW and SGD are "untested" under ZeRO (aot's tests run them: tests/train/test_train_deepspeed.py).
_DEEPSPEED_NOISE = _DropMessages("Setting accelerator to CPU", "**** You are using ZeRO with an untested optimizer")


def quiet_libraries() -> None:
    """Hide library noise that tells the user nothing, and keep library progress plain off a terminal:
    per-file "Loading weights" bars, known deprecation warnings raised inside peft/transformers/torch,
    bitsandbytes' optional-kernel warning, DeepSpeed's notes on the CPU; tqdm bars routed as in the
    module docstring. Set through the environment, logging and warning filters, so nothing heavy is
    imported; safe to call again once transformers is loaded."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # already imported (Python API callers): the env var came too late
        hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    bnb_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if _BNB_KERNEL_NOISE not in bnb_logger.filters:
        bnb_logger.addFilter(_BNB_KERNEL_NOISE)
    deepspeed_logger = logging.getLogger("DeepSpeed")
    if _DEEPSPEED_NOISE not in deepspeed_logger.filters:
        deepspeed_logger.addFilter(_DEEPSPEED_NOISE)
    # raised inside DeepSpeed's collectives, by torch
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    tqdm.std.tqdm.display, tqdm.std.tqdm.close, tqdm.std.tqdm.clear = _tqdm_display, _tqdm_close, _tqdm_clear
