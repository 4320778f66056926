"""The `aot` command line: one thin command per step (parse -> config -> call the step).

Each step module exposes a config dataclass and a ``run(config)`` function; this file only wires
them to typer. Step modules import torch/transformers/datasets lazily so ``aot --help`` is instant.
"""

from __future__ import annotations

import sys

import typer

from aot_cli import __version__
from aot_cli.config import command

app = typer.Typer(
    name="aot",
    help="Align language models on preference data with AOT (Alignment via Optimal Transport).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Align language models on preference data with AOT (Alignment via Optimal Transport)."""


# Commands are registered below, one line each: command(app, Config, run, name=..., help=...).
# --- commands ---
from aot_cli import prepare as _prepare  # noqa: E402

command(app, _prepare.PrepareConfig, _prepare.run, name="prepare",
        help="Normalize preference data (hub id, files, or a prepared dataset) into a dataset artifact.")
from aot_cli import inspect as _inspect  # noqa: E402

command(app, _inspect.InspectConfig, _inspect.run, name="inspect",
        help="Show a prepared dataset as training will tokenize it: templated text, token counts, truncation.")
from aot_cli.train import config as _train  # noqa: E402

command(app, _train.TrainConfig, _train.run, name="train",
        help="Align a model on a prepared preference dataset with AOT (or DPO/IPO): LoRA or full, resumable.")
from aot_cli import merge as _merge  # noqa: E402

command(app, _merge.MergeConfig, _merge.run, name="merge",
        help="Merge a run's LoRA adapter into its base model (or re-export a full run) as a plain model dir.")
from aot_cli.eval import evaluate as _evaluate  # noqa: E402

command(app, _evaluate.EvalConfig, _evaluate.run, name="eval",
        help="Evaluate a model: Open LLM Leaderboard suites, lm-eval tasks, AlpacaEval, reward dominance; "
             "`aot eval compare OUT...` puts results side by side.")


def main() -> None:
    """Console-script entry point.

    Runs typer in non-standalone mode so that usage errors (a value of the wrong type, an unknown
    option) become one ``error:`` line with exit code 2, like every other user error, instead of
    typer's multi-line panel. A bare ``aot`` prints the help.
    """
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's exception family: usage errors
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.ctx.get_help())
            sys.exit(0)
        from rich.markup import escape

        from aot_cli.console import err_console

        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err_console.print(f"[bold red]error:[/bold red] {escape(exc.format_message() + hint)}",
                          highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
