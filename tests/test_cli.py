"""The entry points themselves."""

from __future__ import annotations

import subprocess
import sys

from aot_cli import __version__


def test_version_and_help(aot):
    assert aot("--version").stdout.strip() == f"aot {__version__}"
    result = aot("--help")
    assert result.exit_code == 0 and "AOT" in result.stdout


def test_python_dash_m_works_like_aot():
    out = subprocess.run([sys.executable, "-m", "aot_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"aot {__version__}"
