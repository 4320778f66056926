"""The `aot` command line: a table of commands, each a typed config and the function that runs it.

Every command is one row of :data:`COMMANDS`: its words (``eval dominance``), its ``Config``
dataclass (in a light module: ``--help`` and the checks need no torch), and its ``run(config)``
function (in the module that does the work, imported only when the command runs). This is the one
place where imports are deferred, so ``aot --help`` answers at once and the obvious user errors
(a bad value, a missing input, an existing output) are reported before torch is imported.

Order of a command: resolve the config (defaults < ``--config`` YAML < flags; ranges and choices
checked when it is built), ``config.preflight()`` (cheap checks of inputs and output), then
``run(config)``. This module is also where a :class:`UserError` becomes ``error: ...`` with exit
code 2, for usage errors as for every other user error.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import typing
from pathlib import Path
from typing import Any
from collections.abc import Callable

import typer
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from aot_cli import __version__
from aot_cli.config import base_type, flag_name, load_yaml, range_text, resolve
from aot_cli.console import err_console, quiet_libraries
from aot_cli.errors import OptionError, UserError

# (command words, "module:Config", "module:run", one-line help)
COMMANDS: list[tuple[tuple[str, ...], str, str, str]] = [
    (("prepare",), "aot_cli.prepare.config:Config", "aot_cli.prepare.run:run",
     "Normalize preference data (hub id, files, or a prepared dataset) into a dataset artifact."),
    (("inspect",), "aot_cli.inspect.config:Config", "aot_cli.inspect.run:run",
     "Show a prepared dataset as training will tokenize it: templated text, token counts, truncation."),
    (("train",), "aot_cli.train.config:Config", "aot_cli.train.run:run",
     "Align a model on a prepared preference dataset with AOT (or DPO/IPO/KTO): LoRA or full, resumable."),
    (("merge",), "aot_cli.merge.config:Config", "aot_cli.merge.run:run",
     "Merge a run's LoRA adapter into its base model (or export a full run) as a plain model directory."),
    (("eval", "openllm"), "aot_cli.eval.config:OpenLLMConfig", "aot_cli.eval.lm_eval_suites:run_openllm",
     "The Open LLM Leaderboard suite (v1: the paper's six tasks; v2) through lm-eval."),
    (("eval", "tasks"), "aot_cli.eval.config:TasksConfig", "aot_cli.eval.lm_eval_suites:run_tasks",
     "Any lm-eval tasks, including local task YAMLs (--include-path)."),
    (("eval", "alpaca"), "aot_cli.eval.config:AlpacaConfig", "aot_cli.eval.alpaca:run",
     "AlpacaEval: generate answers, have a judge compare them with a reference, report win rates."),
    (("eval", "dominance"), "aot_cli.eval.config:DominanceConfig", "aot_cli.eval.dominance:run",
     "Does the run's reward distribution dominate? Quantile curves of held-out rewards, and a PNG."),
    (("compare",), "aot_cli.compare:Config", "aot_cli.compare:run",
     "Put eval results side by side (one row per model, differences to the first), as a table and markdown."),
    (("configs",), "aot_cli.configs.show:Config", "aot_cli.configs.show:run",
     "Where the shipped accelerate configs (ddp, fsdp, zero2, zero3) are, for launching on several processes."),
]
GROUPS = {"eval": "Evaluate a model or run: Open LLM Leaderboard, lm-eval tasks, AlpacaEval, reward dominance."}

# A choice list longer than this is shown as a word (``--dtype DTYPE``) with the choices in the help
# text: a long ``a|b|c|d`` column would squeeze the help column and cut flag names at 80 columns.
CHOICES_IN_METAVAR = 12
# Where --config and --help go in a command whose options all sit in named panels (else "Options").
LAST_PANEL = "Config file and help"


def _plain_help_option(option: Any, panel: str | None = None) -> Any:
    """--help is a flag: show no value type next to it (typer would print <bool>)."""
    if option is not None:
        option.metavar = ""
        option.rich_help_panel = panel
    return option


class _Command(TyperCommand):
    """A command whose help reads plainly: positional arguments show no value type, and a required
    one shows as ``RUN`` in the usage line, not ``[RUN]`` (it is optional to click only so that
    ``--config`` may give it); an on/off flag pair is shown stacked in one column."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.display_type_rich = lambda ctx: None
                if (param.help or "").endswith("(required)"):
                    name = param.display_name_raw + ("..." if param.nargs != 1 else "")
                    param.get_usage_pieces = lambda ctx, name=name: [name]

    def get_help_option(self, ctx: Any) -> Any:
        config = next((p for p in self.params if p.name == "config"), None)
        return _plain_help_option(super().get_help_option(ctx), getattr(config, "rich_help_panel", None))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """Typer gives ``--no-X`` a column of its own, which leaves too little room at 80 columns (flag
        names were cut to ``--no-apply-chat-temp…``): show ``--X`` and ``--no-X`` on two lines of the
        flag column while the help is rendered."""
        pairs = [(p, p.opts, p.secondary_opts) for p in self.params
                 if isinstance(p, TyperOption) and p.secondary_opts]
        for param, opts, secondary in pairs:
            param.opts, param.secondary_opts = ["\n".join([*opts, *secondary])], []
        try:
            super().format_help(ctx, formatter)
        finally:
            for param, opts, secondary in pairs:
                param.opts, param.secondary_opts = opts, secondary


class _Group(TyperGroup):
    def get_help_option(self, ctx: Any) -> Any:
        return _plain_help_option(super().get_help_option(ctx))


app = typer.Typer(
    name="aot",
    cls=_Group,
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
                                       help="Print the version and exit.", metavar="")) -> None:
    """Align language models on preference data with AOT (Alignment via Optimal Transport)."""


def _load(path: str) -> Any:
    """``"module:name"`` -> the object (the deferred import of the CLI boundary)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _metavar(field: dataclasses.Field, typ: Any) -> str:
    """What the value of an option looks like in --help: its choices, or a word for its type."""
    meta = field.metadata
    if meta.get("metavar") is not None:
        return meta["metavar"]
    if typ is bool:
        return ""
    if meta.get("choices"):
        joined = "|".join(meta["choices"])
        return joined if len(joined) <= CHOICES_IN_METAVAR else field.name.upper()
    if typing.get_origin(typ) is list:
        return "NAME"
    return {int: "N", float: "NUMBER", Path: "PATH"}.get(typ, "TEXT")


def _typer_parameter(field: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    meta = field.metadata
    typ, _ = base_type(annotation)
    help_text = meta["help"]
    if meta.get("choices") and _metavar(field, typ) != "|".join(meta["choices"]):
        help_text += f" (one of: {', '.join(meta['choices'])})"
    bounds = range_text(field)
    if bounds:
        help_text += f" (range: {bounds})"
    if meta.get("required"):
        help_text += " (required)"
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if meta.get("positional"):
        info = typer.Argument(None, help=help_text, metavar=meta.get("metavar") or field.name.upper(),
                              show_default=False)
    else:
        flags = meta.get("flags") or ("--" + field.name.replace("_", "-"),)
        info = typer.Option(default, *flags, help=help_text, hidden=meta.get("hidden", False),
                            show_default=default is not None and default != [] and typ is not bool,
                            metavar=_metavar(field, typ), rich_help_panel=meta.get("panel"))
    click_annotation = typ | None if typ is not bool or meta.get("positional") else bool
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=click_annotation)


def run_command(config: Any, run: Callable[[Any], Any] | str) -> Any:
    """Preflight, then import the step (``"module:name"``) and run it; the one place where a UserError
    becomes ``error: ...`` and exit 2."""
    try:
        preflight = getattr(config, "preflight", None)
        if preflight is not None:
            preflight()
        return (_load(run) if isinstance(run, str) else run)(config)
    except UserError as exc:
        message = exc.worded(flag_names(config)) if isinstance(exc, OptionError) else str(exc)
        err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def flag_names(config: Any) -> dict[str, str]:
    """Each field of a command's config with the flag the user types for it (``max_length`` ->
    ``--max-length``): how an OptionError from below the steps is worded on the command line."""
    return {field.name: flag_name(field) for field in dataclasses.fields(config)}


def help_order(fields: list[dataclasses.Field]) -> list[dataclasses.Field]:
    """Fields in the order --help shows them: positional arguments, options without a panel, then the
    panels that hold a required option (what a reader must give comes first), then the others; each
    panel keeps its fields' order (typer shows panels in the order their first option appears)."""
    panels = list(dict.fromkeys(f.metadata.get("panel") for f in fields if f.metadata.get("panel")))
    needed = [p for p in panels if any(f.metadata.get("required") and f.metadata.get("panel") == p for f in fields)]
    ranks = {p: i for i, p in enumerate(needed + [p for p in panels if p not in needed])}

    def rank(field: dataclasses.Field) -> int:
        if field.metadata.get("positional"):
            return -2
        panel = field.metadata.get("panel")
        return -1 if panel is None else ranks[panel]
    return sorted(fields, key=rank)


def command(group: typer.Typer, config_cls: type, run: str | Callable[[Any], Any], *, name: str, help: str) -> None:
    """Register ``run(config)`` under `group` as NAME, with one option per field of `config_cls`
    plus ``--config``. `run` is a function or a ``"module:function"`` path imported when it runs."""
    hints = typing.get_type_hints(config_cls)
    fields = help_order(list(dataclasses.fields(config_cls)))
    params = [_typer_parameter(f, hints[f.name]) for f in fields]
    params.insert(0, inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context))
    all_in_panels = all(f.metadata.get("panel") for f in fields if not f.metadata.get("positional"))
    params.append(inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
        default=typer.Option(None, "--config", metavar="FILE.yaml",
                             help="YAML file of option values (keys = option names); flags given on the "
                                  "command line win.", rich_help_panel=LAST_PANEL if all_in_panels else None)))

    def wrapper(ctx: typer.Context, **kwargs: Any) -> None:
        config_file = kwargs.pop("config")
        # typer vendors click, so compare parameter sources by name rather than by class.
        given = {k: v for k, v in kwargs.items()
                 if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
        quiet_libraries()
        try:
            yaml_values = load_yaml(config_file) if config_file else {}
            config = resolve(config_cls, yaml_values, given, source=str(config_file or "--config"))
        except UserError as exc:
            err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        run_command(config, run)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__name__ = name.replace("-", "_")
    wrapper.__doc__ = help
    group.command(name=name, help=help, cls=_Command)(wrapper)


def _register() -> None:
    groups: dict[str, typer.Typer] = {}
    for words, config_path, run_path, help_text in COMMANDS:
        parent = app
        if len(words) == 2:
            if words[0] not in groups:
                groups[words[0]] = typer.Typer(no_args_is_help=True, help=GROUPS[words[0]], cls=_Group)
                app.add_typer(groups[words[0]], name=words[0])
            parent = groups[words[0]]
        command(parent, _load(config_path), run_path, name=words[-1], help=help_text)


_register()


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
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err_console.print(f"[bold red]error:[/bold red] {escape(exc.format_message() + hint)}",
                          highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
