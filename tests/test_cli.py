"""The entry points themselves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aot_cli import __version__
from aot_cli.data.operations import held_out_count
from aot_cli.errors import OptionError


def test_version_and_help(aot):
    assert aot("--version").stdout.strip() == f"aot {__version__}"
    result = aot("--help")
    assert result.exit_code == 0 and "AOT" in result.stdout


def test_python_dash_m_works_like_aot():
    out = subprocess.run([sys.executable, "-m", "aot_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"aot {__version__}"


def _aot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aot_cli", *args], capture_output=True, text=True)


def test_usage_errors_are_one_line_with_exit_2(tmp_path):
    bad_value = _aot("prepare", "x.jsonl", "-o", str(tmp_path / "out"), "--test-size", "abc")
    assert bad_value.returncode == 2
    assert bad_value.stderr.startswith("error: Invalid value for '--test-size'")
    assert len(bad_value.stderr.strip().splitlines()) == 1 and "Traceback" not in bad_value.stderr
    unknown = _aot("prepare", "--bogus")
    assert unknown.returncode == 2 and unknown.stderr.strip() == (
        "error: No such option: --bogus (see `python -m aot_cli prepare --help`)")
    assert not (tmp_path / "out").exists()


def test_bare_aot_prints_help():
    result = _aot()
    assert result.returncode == 0 and "prepare" in result.stdout and "train" in result.stdout


def test_option_errors_from_the_data_layer_read_as_fields_in_python_and_flags_on_the_command_line(aot, tmp_path):
    """The data layer knows options by their Config field names; the command words them as its flags."""
    with pytest.raises(OptionError) as caught:
        held_out_count(10, 2.5)
    assert str(caught.value) == "test_size 2.5: a count must be a whole number (a fraction is below 1)"
    assert caught.value.worded({"test_size": "--test-size"}).startswith("--test-size 2.5: a count")
    source = tmp_path / "pairs.jsonl"
    source.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 4)
    result = aot("prepare", source, "-o", tmp_path / "out", "--test-size", "2.5")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --test-size 2.5: a count must be a whole number (a fraction is below 1)"
