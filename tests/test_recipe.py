"""The Table 1 recipe (docs/recipes/table1): `make smoke` runs every method's whole chain on a tiny
model and prints and writes a Table 1-shaped comparison; a second `make` rebuilds only the table."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "docs" / "recipes" / "table1"
SMOKE_METHODS = ["base", "aot_unpaired", "aot", "dpo", "kto", "ipo"]
HEADER = ("| model | aot_tiny_mc acc | aot_tiny_mc acc_norm | LC win rate | win rate | reward accuracy | "
          "violation fraction | violation area | violation ratio (1st) | p-value (1st) | violation ratio (2nd) | "
          "p-value (2nd) |")


def smoke(out: Path, cache: Path) -> subprocess.CompletedProcess:
    """`make -C docs/recipes/table1 smoke` with this interpreter's aot, this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AOT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
           "COLUMNS": "200"}
    command = ["make", "-C", str(RECIPE), "smoke", f"SMOKE_OUT={out}", f"AOT={sys.executable} -m aot_cli",
               f"PYTHON={sys.executable}"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)


def length_judge_win_rate(alpaca_dir: Path) -> float:
    """The win rate the stand-in judge must give, from the answers and references themselves:
    100 x mean sigmoid((len(answer) - len(reference)) / 20). Annotations of alpaca-eval's annotator
    (the alpaca extra) hold output_1 = reference, output_2 = answer; the built-in judge's output and
    reference."""
    rows = json.loads((alpaca_dir / "annotations.json").read_text())
    pairs = [(r["output_2"], r["output_1"]) if "output_2" in r else (r["output"], r["reference"]) for r in rows]
    prefs = [1 / (1 + math.exp(-(len(answer) - len(reference)) / 20)) for answer, reference in pairs]
    return 100 * sum(prefs) / len(prefs)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="the recipe is a Makefile: needs GNU make")
def test_smoke_builds_table1_then_only_the_table(tmp_path):
    out = tmp_path / "smoke"
    result = smoke(out, tmp_path / "cache")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    lines = (out / "table1.md").read_text().splitlines()
    assert lines[0] == HEADER
    rows = {line.split(" | ")[0].removeprefix("| "): line.removesuffix(" |").split(" | ")[1:] for line in lines[2:]}
    assert list(rows) == SMOKE_METHODS
    base = rows["base"]
    assert base[2] == "—" and base[4:] == ["—"] * 7                # no LC rate (built-in judge), no run
    assert float(base[3]) == pytest.approx(length_judge_win_rate(out / "evals/base/alpaca"), abs=0.005)
    for method in SMOKE_METHODS[1:]:
        cells = rows[method]
        assert all("(+" in c or "(-" in c for c in cells[:2] + cells[3:4]), (method, cells)   # deltas to base
        win_rate = float(cells[3].split(" (")[0])
        assert win_rate == pytest.approx(length_judge_win_rate(out / f"evals/{method}/alpaca"), abs=0.005)
        accuracy, fraction, area, *tests = (float(c) for c in cells[4:])
        assert 0 <= accuracy <= 1 and 0 <= fraction <= 1 and area >= 0
        assert len(tests) == 4 and all(0 <= t <= 1 for t in tests)   # violation ratios and p-values
        assert (out / "runs" / method / "manifest.json").is_file()
        assert json.loads((out / "runs" / method / "manifest.json").read_text())["config"]["loss"] == method
    assert json.loads((out / "data/unpaired/manifest.json").read_text())["summary"]["paired"] is False
    for method in SMOKE_METHODS:
        assert f"│ {method} " in result.stdout                         # the printed table, one row each
    assert (out / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    url = (out / "judge.url").read_text().strip()                     # the judge was stopped
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/chat/completions", data=b"{}", timeout=5)

    again = smoke(out, tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "aot_cli compare" in again.stdout
    for step in ("aot_cli prepare", "aot_cli train", "aot_cli merge", "aot_cli eval"):
        assert step not in again.stdout
    assert (out / "table1.md").read_text().splitlines() == lines
