"""JSON Lines: split at "\\n" only, in the helper and in every reader that goes through it.

``str.splitlines`` also splits at U+2028, U+2029 and U+0085, which are valid raw inside JSON
strings; each reader below cut such a row in two before it used aot_cli.jsonl.
"""

from __future__ import annotations

import json

import pytest

from aot_cli.errors import UserError
from aot_cli.eval import judge
from aot_cli.eval.alpaca import read_rows
from aot_cli.eval.generate import read_outputs
from aot_cli.jsonl import lines, parse_lines, read_text
from aot_cli.train.metrics import read_metrics

SEPARATORS = "\u2028\u2029\u0085"


def test_lines_split_at_newline_only():
    text = 'a\u2028b\r\n\r\n  \n{"x": "c\u0085d\u2029"}\nlast'
    assert list(lines(text)) == [(1, "a\u2028b"), (4, '{"x": "c\u0085d\u2029"}'), (5, "last")]
    assert "a\u2028b\r\n".splitlines() == ["a", "b"]  # what the readers did before


def test_parse_lines_names_the_line_of_bad_json():
    assert parse_lines('{"a": "\u2028"}\r\n\n[1]\n', "f") == [(1, {"a": "\u2028"}), (3, [1])]
    with pytest.raises(UserError, match="^f:2: not valid JSON \\(Expecting value at column 1\\)$"):
        parse_lines('{}\n}\n', "f")
    with pytest.raises(UserError, match="^f:1: not readable JSON \\(Exceeds the limit \\(4300 digits\\)"):
        parse_lines("9" * 5000, "f")


def test_read_text_drops_a_byte_order_mark_and_names_the_line_of_a_bad_byte(tmp_path):
    (tmp_path / "a").write_bytes(b"\xef\xbb\xbf" + "x\u2028".encode())
    assert read_text(tmp_path / "a") == "x\u2028"
    (tmp_path / "b").write_bytes(b"ok\nok\n\xff")
    with pytest.raises(UserError, match="b:3: not UTF-8 text \\(byte 0xff at offset 6\\)"):
        read_text(tmp_path / "b")


def _raw_jsonl(rows: list) -> str:
    """Rows as JSON Lines with non-ASCII written raw (json.dumps(ensure_ascii=False)) and CRLF."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows)


def test_every_reader_keeps_rows_with_line_separators(tmp_path):
    rows = [{"instruction": f"say{sep}hi", "output": f"hi{sep}", "step": i} for i, sep in enumerate(SEPARATORS)]
    (tmp_path / "rows.jsonl").write_text(_raw_jsonl(rows), encoding="utf-8", newline="")
    assert read_rows(tmp_path / "rows.jsonl", "--instructions") == rows

    (tmp_path / "metrics.jsonl").write_text(_raw_jsonl(rows), encoding="utf-8", newline="")
    assert read_metrics(tmp_path) == rows

    (tmp_path / "model_outputs.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    assert read_outputs(tmp_path / "model_outputs.json") == rows

    answer = {"choices": [{"message": {"content": f"m{SEPARATORS}"}}]}
    (tmp_path / "cache.jsonl").write_text(_raw_jsonl([{"key": "k", "response": answer}]), encoding="utf-8",
                                          newline="")
    client = judge.JudgeClient(judge.JudgeSettings("http://127.0.0.1:9/v1", "x", 0), tmp_path / "cache.jsonl")
    assert client.cache == {"k": answer}


def test_readers_turn_bad_files_into_one_error(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"instruction": "a"}\n{"instruction": 5}\n')
    with pytest.raises(UserError, match="rows.jsonl: row 2: expected an object with a non-empty 'instruction' string"):
        read_rows(tmp_path / "rows.jsonl", "--instructions")
    (tmp_path / "rows.json").write_text('[{"instruction": "a"},\n oops]')
    with pytest.raises(UserError, match="rows.json:2: not valid JSON"):
        read_rows(tmp_path / "rows.json", "--instructions")
    (tmp_path / "model_outputs.json").write_text('[{"instruction": "a", "output": "b"}')  # cut short
    with pytest.raises(UserError, match="model_outputs.json:1: not valid JSON .*; delete .* to generate the answers"):
        read_outputs(tmp_path / "model_outputs.json")
    (tmp_path / "model_outputs.json").write_text('{"instruction": "a"}')
    with pytest.raises(UserError, match="expected a JSON list of \\{instruction, output, generator\\} objects"):
        read_outputs(tmp_path / "model_outputs.json")
