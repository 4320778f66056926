"""What a person sees off a terminal (make, CI, `| tee`): plain periodic progress lines without
carriage returns, from our bars and from the libraries' tqdm bars, no library noise, and each step's
closing lines."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from aot_cli.console import plain_line, progress, quiet_libraries
from aot_cli.tiny_data import preference_pairs, write_jsonl

ROOT = Path(__file__).parents[1]


def test_plain_line_shapes():
    assert plain_line("Training", 30, 100, elapsed=12, eta=28, unit="step", stats="loss 0.6931") == (
        "Training: step 30/100 (30%), 0:00:12 elapsed, ETA 0:00:28; loss 0.6931")
    assert plain_line("Tokenizing", 5000, 5000, elapsed=3725, eta=0, done=True) == (
        "Tokenizing: 5000/5000 (100%), done in 1:02:05")
    assert plain_line("", 7, None, elapsed=1.5, eta=None) == "7, 0:00:01 elapsed, ETA -:--:--"


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _steps(bar, task, clock, n: int, seconds: float, **fields) -> None:
    for k in range(n):
        clock.now += seconds
        bar.update(task, completed=k + 1, **fields)


def test_plain_progress_prints_one_line_per_interval_and_a_last_one(monkeypatch, capsys):
    monkeypatch.setenv("AOT_PROGRESS_INTERVAL", "10")
    clock = _Clock()
    with progress() as bar:                      # stderr is not a terminal under pytest
        bar.get_time = clock
        task = bar.add_task("Training", total=10, unit="step", stats="")
        _steps(bar, task, clock, 10, 4.0, stats="loss 0.5000")
    # 4 s a step, a line every 10 s: after steps 3 (12 s), 6 (24 s) and 9 (36 s); ETA = elapsed / done * left.
    assert capsys.readouterr().err.splitlines() == [
        "Training: step 3/10 (30%), 0:00:12 elapsed, ETA 0:00:28; loss 0.5000",
        "Training: step 6/10 (60%), 0:00:24 elapsed, ETA 0:00:16; loss 0.5000",
        "Training: step 9/10 (90%), 0:00:36 elapsed, ETA 0:00:04; loss 0.5000",
        "Training: step 10/10 (100%), done in 0:00:40; loss 0.5000",
    ]


def test_plain_progress_resumed_counts_only_its_own_steps_for_the_eta(monkeypatch, capsys):
    monkeypatch.setenv("AOT_PROGRESS_INTERVAL", "0")
    clock = _Clock()
    with progress() as bar:
        bar.get_time = clock
        task = bar.add_task("Training", total=10, completed=8, unit="step")
        clock.now = 5.0
        bar.update(task, completed=9)   # one step in 5 s, one left
    assert capsys.readouterr().err.splitlines()[0] == "Training: step 9/10 (90%), 0:00:05 elapsed, ETA 0:00:05"


def test_quick_transient_and_hidden_bars_stay_quiet(monkeypatch, capsys):
    monkeypatch.setenv("AOT_PROGRESS_INTERVAL", "10")
    clock = _Clock()
    with progress(transient=True) as bar:
        bar.get_time = clock
        task = bar.add_task("Tokenizing", total=3)
        _steps(bar, task, clock, 3, 1.0)
    with progress() as bar:
        bar.get_time = clock
        task = bar.add_task("Training", total=3, visible=False)   # a rank other than the main one
        _steps(bar, task, clock, 3, 20.0)
    assert capsys.readouterr().err == ""


def test_a_bad_interval_is_a_user_error(monkeypatch):
    from aot_cli.errors import UserError

    monkeypatch.setenv("AOT_PROGRESS_INTERVAL", "soon")
    with pytest.raises(UserError, match="AOT_PROGRESS_INTERVAL='soon': expected a number of seconds >= 0"):
        progress()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_library_tqdm_bars_become_plain_lines_off_a_terminal(monkeypatch):
    monkeypatch.setenv("AOT_PROGRESS_INTERVAL", "0")
    monkeypatch.setenv("TERM", "xterm")
    quiet_libraries()
    log = io.StringIO()
    for _ in tqdm(range(4), desc="Running loglikelihood requests", file=log, mininterval=0):
        pass
    for _ in tqdm(range(3), file=log, mininterval=0, leave=False):   # unnamed, but it logged: closed with a line
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [re.sub(r"\d+:\d\d:\d\d", "T", line) for line in lines] == [
        "Running loglikelihood requests: 1/4 (25%), T elapsed, ETA T",
        "Running loglikelihood requests: 2/4 (50%), T elapsed, ETA T",
        "Running loglikelihood requests: 3/4 (75%), T elapsed, ETA T",
        "Running loglikelihood requests: 4/4 (100%), done in T",
        "1/3 (33%), T elapsed, ETA T",
        "2/3 (67%), T elapsed, ETA T",
        "3/3 (100%), done in T",
    ]
    quiet = io.StringIO()
    monkeypatch.setenv("AOT_PROGRESS_INTERVAL", "60")
    for _ in tqdm(range(3), file=quiet):     # unnamed and quick: nothing to say
        pass
    assert quiet.getvalue() == ""
    terminal = _Terminal()
    for _ in tqdm(range(2), desc="bar", file=terminal, mininterval=0):   # a terminal keeps tqdm's own bar
        pass
    assert "\r" in terminal.getvalue() and "bar: 100%" in terminal.getvalue()


def test_bitsandbytes_kernel_warning_is_dropped(caplog):
    quiet_libraries()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                       "already `pip install kernels`", "No module named 'kernels'")
        logger.warning("a warning that matters")
    assert [r.getMessage() for r in caplog.records] == ["a warning that matters"]


@pytest.mark.slow
def test_training_off_a_terminal_prints_plain_periodic_lines(aot, tiny_model_dir, tmp_path):
    """The real command in its own process, stderr a pipe (as under make, CI or `| tee`)."""
    data, run = tmp_path / "data", tmp_path / "run"
    source = write_jsonl(tmp_path / "prefs.jsonl", preference_pairs(20))
    assert aot("prepare", source, "--test-size", 4, "-o", data).exit_code == 0
    env = {**os.environ, "AOT_PROGRESS_INTERVAL": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "aot_cli", "train", "--model", str(tiny_model_dir), "--data",
                           str(data), "-o", str(run), "--max-steps", "2", "--batch-size", "2", "--grad-accum", "2",
                           "--max-length", "96", "--max-prompt-length", "48", "--save-steps", "0"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "\r" not in err and "\x1b" not in err            # no carriage returns, no terminal codes
    assert "Failed to load CPU gemm_4bit_forward" not in err   # bitsandbytes' noise, filtered
    lines = err.splitlines()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step_lines = [line for line in lines if line.startswith("Training: ")]
    assert len(step_lines) == 2
    for line, record, tail in zip(step_lines, records, (r"\d+:\d\d:\d\d elapsed, ETA \d+:\d\d:\d\d",
                                                        r"done in \d+:\d\d:\d\d")):
        step = record["step"]
        assert re.fullmatch(
            rf"Training: step {step}/2 \({50 * step}%\), {tail}; loss {record['loss']:.4f}, reward acc "
            rf"{record['rewards/accuracies']:.2f}, margin {record['rewards/margins']:.4f}, [\d.]+ samples/s",
            line), line
    assert any(re.fullmatch(r"Reference log-probs: 32/32 \(100%\), done in \d+:\d\d:\d\d", line) for line in lines)
    assert lines[-2:] == [
        f"wrote {run}: adapter/ (the LoRA adapter and tokenizer), training_curves.png, metrics.jsonl",
        f"next: aot merge {run} -o MODEL_DIR (a plain model for lm-eval or vLLM); aot eval dominance {run} "
        "-o EVAL_DIR (held-out reward quantiles)"]


def test_prepare_names_what_it_wrote_and_what_comes_next(aot, tmp_path):
    paired, unpaired = tmp_path / "paired", tmp_path / "unpaired"
    result = aot("prepare", ROOT / "tests" / "fixtures" / "shapes" / "hh.jsonl", "-o", paired, "--test-size", 0)
    assert result.exit_code == 0, result
    fingerprint = json.loads((paired / "manifest.json").read_text())["summary"]["fingerprint"]
    assert result.stderr.splitlines()[-2:] == [
        f"wrote {paired} (fingerprint {fingerprint})",
        f"next: aot inspect {paired} --model MODEL (the rows as training will tokenize them), then aot train "
        f"--model MODEL --data {paired} -o RUN_DIR"]
    result = aot("prepare", paired, "--unpair", "-o", unpaired)
    assert result.exit_code == 0, result
    assert result.stderr.splitlines()[-1].endswith(f"--data {unpaired} --loss aot_unpaired -o RUN_DIR")


def test_compare_without_output_says_how_to_save(aot, tmp_path):
    from aot_cli.artifacts.store import write_manifest

    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "results.json").write_text(json.dumps({"suite": "lm-eval", "model": "m", "scores": {"t": {"acc": 0.5}},
                                                 "settings": {}, "versions": {}, "notes": {}}))
    (ev / "report.md").write_text("")
    write_manifest(ev, kind="eval", config={}, summary={"suite": "lm-eval", "scores": {"t": {"acc": 0.5}}})
    result = aot("compare", ev)
    assert result.exit_code == 0, result
    assert result.stderr.splitlines()[-1] == "add -o FILE.md to save this table as markdown"
