"""Reading JSON Lines (and the UTF-8 text they are in): a line ends at "\\n" (a "\\r" before it is
dropped) and nowhere else.

``str.splitlines`` also ends a line at U+2028, U+2029 and U+0085, which JSON allows raw inside
strings (``json.dumps(..., ensure_ascii=False)`` writes them as they are), so a valid row holding
one would be cut in two and read as broken JSON. Every reader of JSON lines in the package goes
through here; it imports only ``aot_cli.errors``, so any module can import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from aot_cli.errors import UserError

_BLANK = " \t\r"  # JSON's whitespace within a line


def read_text(path: Path) -> str:
    """A UTF-8 text file without its byte order mark (Windows tools write one; it is not data).
    UserError naming the line of the first byte that is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
                        "re-encode the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for each line of `text` that is not blank, split at "\\n" only."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip(_BLANK):
            yield number, line.removesuffix("\r")


def parse_lines(text: str, name: str) -> list[tuple[int, Any]]:
    """(line number, value) for each non-blank line; UserError ``NAME:LINE: not valid JSON (...)``."""
    values = []
    for number, line in lines(text):
        try:
            values.append((number, json.loads(line)))
        except ValueError as exc:
            raise UserError(f"{name}:{number}: {describe_error(exc)}") from None
    return values


def describe_error(exc: ValueError) -> str:
    """What ``json.loads`` objected to, in a user's words. Besides malformed JSON it raises a plain
    ValueError for an integer longer than Python reads (4300 digits)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    return f"not readable JSON ({str(exc).split(':')[0]})"
