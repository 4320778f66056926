"""Typed configs: one dataclass per subcommand is its CLI, its YAML schema and its record.

A config is a dataclass whose fields carry their help text and flags (``opt`` / ``arg``).
``command(app, Config, run)`` turns it into a typer command with an extra ``--config FILE.yaml``;
the YAML keys are the field names (dashes or underscores), and precedence is
dataclass defaults < YAML < flags given on the command line. The resolved config is what the step
receives and what it records in its manifest, so any artifact says exactly how it was made
(litgpt's habit: the signature is the CLI).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import typer

from aot_cli.errors import UserError

_NO_DEFAULT = dataclasses.MISSING


def opt(default: Any = None, *flags: str, help: str, choices: Sequence[str] | None = None,
        required: bool = False, hidden: bool = False) -> Any:
    """A ``--flag`` field. `flags` default to ``--field-name``; `choices` are checked for flags and
    YAML alike; `required` means it must come from a flag or the YAML file."""
    meta = {"help": help, "flags": flags, "choices": tuple(choices) if choices else None,
            "required": required, "hidden": hidden}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def arg(default: Any = None, *, help: str, metavar: str | None = None, required: bool = True) -> Any:
    """A positional argument field (may also be given as a YAML key)."""
    meta = {"help": help, "positional": True, "metavar": metavar, "required": required, "choices": None}
    return dataclasses.field(default=default, metadata=meta)


def to_dict(config: Any) -> dict:
    """The resolved config as plain JSON values (paths as strings), for manifests."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _flag_name(field: dataclasses.Field) -> str:
    flags = field.metadata.get("flags") or ()
    longs = [f for f in flags if f.startswith("--")]
    return longs[0].split("/")[0] if longs else "--" + field.name.replace("_", "-")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X``, ``Optional[X]`` and ``X | None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (inner[0] if len(inner) == 1 else annotation), True
    return annotation, False


def _coerce(name: str, value: Any, annotation: Any, choices: Sequence[str] | None) -> Any:
    """Check and convert a YAML or flag value to the field's type; a UserError names the key."""
    typ, optional = _base_type(annotation)
    if value is None:
        if optional:
            return None
        raise UserError(f"{name}: a value is required (got null)")
    wanted = getattr(typ, "__name__", str(typ))
    if typing.get_origin(typ) is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        (item_type,) = typing.get_args(typ) or (str,)
        return [_coerce(name, v, item_type, choices) for v in items]
    if typ is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name}: expected true or false, got {value!r}")
        return value
    try:
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif typ is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif typ is Path:
            value = Path(str(value))
        elif typ is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            value = str(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected {wanted}, got {value!r}") from None
    if choices and value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UserError(f"{name}: {value!r} is not one of {', '.join(choices)}{suggestion}")
    return value


def load_yaml(path: Path) -> dict:
    """Read a ``--config`` file: a mapping of option names to values."""
    import yaml

    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


def resolve(config_cls: type, yaml_values: dict, flag_values: dict, source: str = "--config") -> Any:
    """Build the config: dataclass defaults < `yaml_values` < `flag_values` (flags actually given)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for key, value in yaml_values.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean {close[0].replace('_', '-')!r}?)" if close else ""
            raise UserError(f"{source}: unknown key {key!r}{hint}")
        values[name] = _coerce(f"{source}: {key}", value, hints[name], fields[name].metadata.get("choices"))
    for name, value in flag_values.items():
        field = fields[name]
        label = name.upper() if field.metadata.get("positional") else _flag_name(field)
        values[name] = _coerce(label, value, hints[name], field.metadata.get("choices"))
    for name, field in fields.items():
        if field.metadata.get("required") and values.get(name, field.default) in (None, _NO_DEFAULT):
            label = name.upper() if field.metadata.get("positional") else _flag_name(field)
            raise UserError(f"missing {label} (give it on the command line or as {name!r} in --config)")
    return config_cls(**values)


def _typer_parameter(field: dataclasses.Field, annotation: Any) -> inspect.Parameter:
    meta = field.metadata
    typ, _ = _base_type(annotation)
    help_text = meta["help"]
    if meta.get("required"):
        help_text += " (required)"
    if meta.get("choices"):
        help_text += f" (one of: {', '.join(meta['choices'])})"
    default = field.default if field.default is not _NO_DEFAULT else field.default_factory()
    if meta.get("positional"):
        info = typer.Argument(None, help=help_text, metavar=meta.get("metavar") or field.name.upper(),
                              show_default=False)
    else:
        flags = meta.get("flags") or ("--" + field.name.replace("_", "-"),)
        info = typer.Option(default, *flags, help=help_text, hidden=meta.get("hidden", False),
                            show_default=default is not None and default != [])
    click_annotation = Optional[typ] if typ is not bool or meta.get("positional") else bool
    if typing.get_origin(typ) is list:
        click_annotation = Optional[typ]
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=click_annotation)


def command(app: Any, config_cls: type, run: Callable[[Any], Any], *, name: str, help: str) -> None:
    """Register `run(config)` as ``aot NAME`` with one option per field of `config_cls` plus --config.

    This wrapper is the single place where a UserError becomes ``error: ...`` and exit code 2.
    """
    from aot_cli.console import err_console, quiet_libraries

    hints = typing.get_type_hints(config_cls)
    params = [_typer_parameter(f, hints[f.name]) for f in dataclasses.fields(config_cls)]
    params.insert(0, inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context))
    params.append(inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
        default=typer.Option(None, "--config", help="YAML file of option values (keys = option names); "
                                                     "flags given on the command line win.")))

    def wrapper(ctx: typer.Context, **kwargs: Any) -> None:
        config_file = kwargs.pop("config")
        # typer vendors click, so compare parameter sources by name rather than by class.
        given = {k: v for k, v in kwargs.items()
                 if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
        quiet_libraries()
        try:
            yaml_values = load_yaml(config_file) if config_file else {}
            config = resolve(config_cls, yaml_values, given, source=str(config_file or "--config"))
            run(config)
        except UserError as exc:
            from rich.markup import escape

            err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__name__ = name.replace("-", "_")
    wrapper.__doc__ = help
    app.command(name=name, help=help)(wrapper)
