"""Typed configs: one dataclass per command is its CLI, its YAML schema, its checks and its record.

A config is a dataclass whose fields carry their help text, flags, choices and valid range
(``opt`` / ``arg``). :mod:`aot_cli.cli` turns it into a typer command with an extra
``--config FILE.yaml``; the YAML keys are the field names (dashes or underscores), and precedence is
dataclass defaults < YAML < flags given on the command line. The resolved config is what the step
receives and what it records in its manifest, so any artifact says exactly how it was made
(litgpt's habit: the signature is the CLI).

Ranges (``ge``, ``gt``, ``le``, ``lt``) are checked whenever a config is built, from the CLI or from
Python, and NaN or inf fail every numeric check: a value outside its range is one error before
anything is read or written. ``--help`` shows each range next to the option.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import yaml

from aot_cli.errors import UserError

NO_DEFAULT = dataclasses.MISSING


def opt(default: Any = None, *flags: str, help: str, choices: Sequence[str] | None = None,
        required: bool = False, hidden: bool = False, metavar: str | None = None, panel: str | None = None,
        ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A ``--flag`` field. `flags` default to ``--field-name``; `choices` and the range
    (`ge` >=, `gt` >, `le` <=, `lt` <) are checked for flags, YAML and Python alike; `required`
    means it must come from a flag or the YAML file; `panel` groups it in ``--help``."""
    meta = {"help": help, "flags": flags, "choices": tuple(choices) if choices else None, "required": required,
            "hidden": hidden, "metavar": metavar, "panel": panel, "range": (ge, gt, le, lt)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def arg(default: Any = None, *, help: str, metavar: str | None = None, required: bool = True) -> Any:
    """A positional argument field (may also be given as a YAML key)."""
    meta = {"help": help, "positional": True, "metavar": metavar, "required": required, "choices": None,
            "range": (None, None, None, None)}
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field: dataclasses.Field) -> str:
    """How the user names a field: its long flag (``--max-length``) or, positional, its METAVAR."""
    if field.metadata.get("positional"):
        return field.metadata.get("metavar") or field.name.upper()
    flags = field.metadata.get("flags") or ()
    longs = [f for f in flags if f.startswith("--")]
    return longs[0].split("/")[0] if longs else "--" + field.name.replace("_", "-")


def range_text(field: dataclasses.Field) -> str:
    """The valid range of a numeric field in words, e.g. ``> 0`` or ``0 to 1``; "" when unbounded."""
    ge, gt, le, lt = field.metadata.get("range", (None,) * 4)
    low = f">= {ge:g}" if ge is not None else f"> {gt:g}" if gt is not None else ""
    high = f"<= {le:g}" if le is not None else f"< {lt:g}" if lt is not None else ""
    if ge is not None and le is not None:
        return f"{ge:g} to {le:g}"
    return ", ".join(part for part in (low, high) if part)


def check_range(field: dataclasses.Field, value: Any) -> None:
    """UserError when a numeric value is NaN, infinite, or outside the field's range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    ge, gt, le, lt = field.metadata.get("range", (None,) * 4)
    ok = math.isfinite(value) and (ge is None or value >= ge) and (gt is None or value > gt) \
        and (le is None or value <= le) and (lt is None or value < lt)
    if not ok:
        bounds = range_text(field)
        expected = f"a finite number {bounds}" if bounds else "a finite number"
        raise UserError(f"{flag_name(field)} must be {expected}, got {value:g}")


class StepConfig:
    """Base of every command's config: checks ranges and choices whenever one is built."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            check_range(field, value)
            choices = field.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise UserError(f"{flag_name(field)}: {value!r} is not one of {', '.join(choices)}")


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


def base_type(annotation: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X``, ``Optional[X]`` and ``X | None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (inner[0] if len(inner) == 1 else annotation), True
    return annotation, False


def _coerce(name: str, value: Any, annotation: Any, choices: Sequence[str] | None) -> Any:
    """Check and convert a YAML or flag value to the field's type; a UserError names the key."""
    typ, optional = base_type(annotation)
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
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name}: expected {wanted}, got {value!r}") from None
    if choices and value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UserError(f"{name}: {value!r} is not one of {', '.join(choices)}{suggestion}")
    return value


def load_yaml(path: Path) -> dict:
    """Read a ``--config`` file: a mapping of option names to values."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
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
        values[name] = _coerce(flag_name(field), value, hints[name], field.metadata.get("choices"))
    for name, field in fields.items():
        if field.metadata.get("required") and values.get(name, field.default) in (None, NO_DEFAULT):
            raise UserError(f"missing {flag_name(field)} (give it on the command line or as {name!r} in --config)")
    return config_cls(**values)
