"""Config resolution: defaults < YAML < flags, type checks, unknown keys, required values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from aot_cli.cli import command
from aot_cli.config import StepConfig, arg, opt, resolve, to_dict
from aot_cli.errors import UserError


@dataclass
class Demo(StepConfig):
    source: str | None = arg(help="where from")
    output: Path | None = opt(None, "-o", "--output", help="where to", required=True)
    beta: float = opt(0.01, help="temperature", gt=0)
    steps: int = opt(3, help="steps", ge=1)
    loss: str = opt("aot", help="loss", choices=("aot", "dpo"))
    lora: bool = opt(True, "--lora/--full", help="adapter or full")
    tags: list[str] = opt([], "--tag", help="tags")


def make_app(seen: list):
    app = typer.Typer()
    command(app, Demo, seen.append, name="demo", help="demo command")

    @app.command()
    def other() -> None:  # a second command so typer keeps subcommand names
        pass

    return app


def test_precedence_defaults_yaml_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("beta: 0.5\nsteps: 7\nlora: false\nsource: from-yaml\n")
    seen: list = []
    result = CliRunner().invoke(make_app(seen), ["demo", "--config", str(cfg_file), "--steps", "9",
                                                 "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert cfg.beta == 0.5 and cfg.steps == 9 and cfg.lora is False and cfg.source == "from-yaml"
    assert cfg.loss == "aot" and cfg.output == tmp_path / "o"
    assert to_dict(cfg)["output"] == str(tmp_path / "o")


def test_flag_equal_to_default_still_beats_yaml(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("steps: 7\n")
    seen: list = []
    CliRunner().invoke(make_app(seen), ["demo", "x", "--config", str(cfg_file), "--steps", "3", "-o", "o"])
    assert seen[0].steps == 3


@pytest.mark.parametrize("yaml_text, message", [
    ("stpes: 3\n", "unknown key 'stpes' (did you mean 'steps'?)"),
    ("steps: three\n", "steps: expected int, got 'three'"),
    ("loss: aott\n", "loss: 'aott' is not one of aot, dpo (did you mean 'aot'?)"),
    ("lora: 1\n", "lora: expected true or false"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_yaml_is_one_line_exit_2(tmp_path, yaml_text, message):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml_text)
    result = CliRunner().invoke(make_app([]), ["demo", "x", "-o", "o", "--config", str(cfg_file)])
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1


def test_missing_required_and_bad_choice_flag():
    result = CliRunner().invoke(make_app([]), ["demo", "x"])
    assert result.exit_code == 2 and "missing --output" in result.stderr
    result = CliRunner().invoke(make_app([]), ["demo", "x", "-o", "o", "--loss", "ipo"])
    assert result.exit_code == 2 and "--loss: 'ipo' is not one of aot, dpo" in result.stderr


def test_resolve_coerces_yaml_ints_to_float_and_lists():
    cfg = resolve(Demo, {"beta": 1, "tags": "one", "output": "o", "source": "s"}, {})
    assert cfg.beta == 1.0 and isinstance(cfg.beta, float) and cfg.tags == ["one"]
    with pytest.raises(UserError, match="steps: expected int, got 1.5"):
        resolve(Demo, {"steps": 1.5, "output": "o", "source": "s"}, {})


@pytest.mark.parametrize("value, message", [
    ("0", "--steps must be a finite number >= 1, got 0"),
    ("nan", "--beta must be a finite number > 0, got nan"),
    ("inf", "--beta must be a finite number > 0, got inf"),
])
def test_ranges_and_nan_fail_before_run(value, message):
    seen: list = []
    flag = "--steps" if message.startswith("--steps") else "--beta"
    result = CliRunner().invoke(make_app(seen), ["demo", "x", "-o", "o", flag, value])
    assert result.exit_code == 2 and message in result.stderr and not seen


def test_ranges_apply_to_python_callers_too():
    with pytest.raises(UserError, match="--beta must be a finite number > 0, got -1"):
        Demo(source="s", output=Path("o"), beta=-1.0)
