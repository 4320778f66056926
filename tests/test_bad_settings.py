"""Bad settings, for every command: exit code 2, one `error:` line naming the problem, no traceback,
and nothing written (no output, no lock, no temporary, no parent directory).

Two kinds of cases: every numeric option with a declared range is tried just outside it and as NaN
and inf (generated from the configs, so a new option is covered the day it is declared), and a
hand-written list of wrong inputs and combinations per command. Every command gets valid inputs
otherwise, so the bad setting is the only thing wrong and is found before any output exists.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from aot_cli.artifacts.store import write_manifest
from aot_cli.cli import COMMANDS, _load
from aot_cli.config import flag_name

FIXTURES = Path(__file__).parent / "fixtures"
DATA_FILE = FIXTURES / "shapes" / "paired_strings.jsonl"
INSTRUCTIONS = FIXTURES / "alpaca_tiny.json"
TASKS = FIXTURES / "lm_eval_tasks"


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, lora_run_dir, tmp_path_factory):
    """Valid inputs for every command: a model, a dataset, a run, an eval artifact."""
    from typer.testing import CliRunner

    from aot_cli.cli import app

    root = tmp_path_factory.mktemp("inputs")
    result = CliRunner().invoke(app, ["prepare", str(DATA_FILE), "-o", str(root / "data"), "--test-size", "2"])
    assert result.exit_code == 0, result.stderr
    evaluation = root / "eval"
    evaluation.mkdir()
    (evaluation / "results.json").write_text(json.dumps({"suite": "lm-eval", "model": "m", "scores": {}}))
    write_manifest(evaluation, kind="eval", config={}, summary={"suite": "lm-eval", "scores": {}})
    return {"model": tiny_model_dir, "data": root / "data", "run": lora_run_dir, "eval": evaluation}


def base_args(command: str, inputs: dict, out: Path) -> list:
    """The command with valid inputs and output: a run that would succeed."""
    return {
        "prepare": ["prepare", DATA_FILE, "-o", out],
        "inspect": ["inspect", inputs["data"], "--model", inputs["model"]],
        "train": ["train", "--model", inputs["model"], "--data", inputs["data"], "-o", out, "--max-steps", 1,
                  "--batch-size", 1, "--grad-accum", 1],
        "merge": ["merge", inputs["run"], "-o", out],
        "eval openllm": ["eval", "openllm", inputs["run"], "-o", out],
        "eval tasks": ["eval", "tasks", inputs["run"], "-o", out, "--tasks", "aot_tiny_mc", "--include-path", TASKS],
        "eval alpaca": ["eval", "alpaca", inputs["model"], "-o", out, "--instructions", INSTRUCTIONS],
        "eval dominance": ["eval", "dominance", inputs["run"], "--data", inputs["data"], "-o", out],
        "compare": ["compare", inputs["eval"], "-o", out],
        "configs": ["configs"],
    }[command]


def _command(words: tuple[str, ...]) -> str:
    return " ".join(words)


def _outside(field: dataclasses.Field, integer: bool) -> list:
    """Values just outside the field's declared range (and NaN, inf for a float)."""
    ge, gt, le, lt = field.metadata["range"]
    step = 1 if integer else 0.5
    values = [ge - step if ge is not None else None, gt, le + step if le is not None else None, lt]
    if not integer:
        values += ["nan", "inf"]
    return [v for v in values if v is not None]


def range_cases():
    cases = []
    for words, config_path, _, _ in COMMANDS:
        config_cls = _load(config_path)
        for field in dataclasses.fields(config_cls):
            if any(bound is not None for bound in field.metadata.get("range", (None,) * 4)):
                integer = "int" in str(field.type)
                for value in _outside(field, integer):
                    cases.append(pytest.param(_command(words), flag_name(field), value,
                                              id=f"{_command(words)} {flag_name(field)} {value}"))
    return cases


def _snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "logs" not in p.parts)


def _check_refused(aot, args, root, *needles):
    before = _snapshot(root)
    result = aot(*args)
    assert result.exit_code == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    squeezed = "".join(result.stderr.split())  # rich may wrap the line
    for needle in needles:
        assert "".join(str(needle).split()) in squeezed, result.stderr
    assert _snapshot(root) == before, "the refused command wrote something"


def test_every_command_is_covered():
    assert {_command(words) for words, *_ in COMMANDS} == set(HAND_WRITTEN)


@pytest.mark.parametrize("command, flag, value", range_cases())
def test_option_outside_its_range(aot, inputs, tmp_path, command, flag, value):
    out = tmp_path / "new" / "out"
    _check_refused(aot, [*base_args(command, inputs, out), flag, value], tmp_path, f"error: {flag}")


MISSING = "no/such/path"
# command -> [(extra args, words the error must contain)]; "{run}", "{data}", "{model}", "{eval}"
# and "{out}" are replaced by the inputs.
HAND_WRITTEN = {
    "prepare": [
        (["--format", "hh"], ["no training rows left"]),
        (["--max-length", 64], ["--max-length", "--tokenizer"]),
        (["--chat-template", MISSING], ["--chat-template"]),
        (["--tokenizer", MISSING], [MISSING]),
        (["--format", "nope"], ["--format"]),
    ],
    "inspect": [
        (["--split", "validation"], ["--split"]),
        (["--chat-template", MISSING], ["--chat-template"]),
        (["--model", MISSING], [MISSING]),
    ],
    "train": [
        (["--resume", "auto", "--overwrite"], ["--resume and --overwrite"]),
        (["--sort", "soft"], ["--soft-sort-eps"]),
        (["--loss", "dpo", "--surrogate", "squared_hinge"], ["--surrogate"]),
        (["--resume", MISSING], ["--resume", "not a checkpoint"]),
        (["--init-adapter", MISSING], ["--init-adapter"]),
        (["--chat-template", MISSING], ["--chat-template"]),
        (["--full", "--load-in-4bit"], ["--load-in-4bit"]),
        (["--full", "--dtype", "fp16"], ["--full with --dtype fp16"]),
        (["--max-length", 4], ["--max-length 4 is shorter than every prompt"]),
        (["--batch-size", 1000], ["global batch 1000"]),
        (["--data", "{run}"], ["expected a 'dataset' one"]),
        (["--model", MISSING], ["--model"]),
        (["-o", "{data}/inside"], ["inside the input"]),
    ],
    "merge": [
        (["--dtype", "fp64"], ["--dtype"]),
        (["--max-shard-size", "lots"], ["--max-shard-size"]),
        (["-o", "{run}"], ["input"]),
    ],
    "eval openllm": [
        (["--version", "v3"], ["--version"]),
        (["--dtype", "fp64"], ["--dtype"]),
    ],
    "eval tasks": [
        (["--include-path", MISSING], ["--include-path"]),
    ],
    "eval alpaca": [
        (["--instructions", MISSING], ["--instructions"]),
        (["--reference", MISSING], ["--reference"]),
    ],
    "eval dominance": [
        (["--data", MISSING], [MISSING]),
        (["--data", "{model}"], ["{model}"]),
    ],
    "compare": [
        (["{run}"], ["run"]),
        ([MISSING], [MISSING]),
    ],
    "configs": [
        (["nope"], ["'nope' is not a shipped accelerate config", "ddp, fsdp, zero2, zero3"]),
    ],
}


def hand_written_cases():
    return [pytest.param(command, extra, needles, id=f"{command} {' '.join(map(str, extra))}")
            for command, cases in HAND_WRITTEN.items() for extra, needles in cases]


def _fill(value, inputs: dict, out: Path):
    text = str(value)
    for key, path in {**inputs, "out": out}.items():
        text = text.replace("{" + key + "}", str(path))
    return text


@pytest.mark.parametrize("command, extra, needles", hand_written_cases())
def test_bad_input_or_combination(aot, inputs, tmp_path, command, extra, needles):
    out = tmp_path / "new" / "out"
    args = [*base_args(command, inputs, out), *(_fill(e, inputs, out) for e in extra)]
    _check_refused(aot, args, tmp_path, *(_fill(n, inputs, out) for n in needles))


@pytest.mark.parametrize("command", ["prepare", "train", "merge", "eval openllm", "eval tasks", "eval alpaca",
                                     "eval dominance"])
def test_existing_output_is_left_alone(aot, inputs, tmp_path, command):
    """A finished output (manifest written) is never replaced without --overwrite (an unfinished eval
    alpaca output would be resumed, an unfinished run continued with --resume)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    write_manifest(out, kind="eval", config={})
    _check_refused(aot, base_args(command, inputs, out), tmp_path, "already exists", "--overwrite")
