"""Every command's --help as a reader sees it, in an 80-column terminal and a wide one: no type tags,
no cut flag names, required arguments without brackets, choices and defaults shown."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from aot_cli.cli import COMMANDS, _load, app
from aot_cli.config import flag_name

COMMAND_WORDS = [words for words, *_ in COMMANDS]
ROOT = Path(__file__).parents[1]


def _help(words: tuple[str, ...], columns: int) -> str:
    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": str(columns), "TERMINAL_WIDTH": None})
    assert result.exit_code == 0, result.output
    return result.output


def _flags(words: tuple[str, ...]) -> list[tuple[dataclasses.Field, list[str]]]:
    config_cls = _load(next(config for w, config, *_ in COMMANDS if w == words))
    out = []
    for field in dataclasses.fields(config_cls):
        if field.metadata.get("positional"):
            continue
        names = [name for flag in (field.metadata.get("flags") or (flag_name(field),)) for name in flag.split("/")]
        out.append((field, names))
    return out


@pytest.mark.parametrize("words", COMMAND_WORDS, ids=" ".join)
def test_help_fits_80_columns_whole(words):
    text = _help(words, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text                                  # rich cuts what does not fit with an ellipsis
    assert not re.search(r"<\w+>", text)                    # no <bool>, <str>, <int> type tags
    for field, names in _flags(words):
        for name in names:
            if field.metadata.get("hidden"):
                assert not re.search(rf"{re.escape(name)}\b", text), name
            else:
                assert re.search(rf"(^|\s){re.escape(name)}(\s|,|$)", text, re.M), f"{name} cut or missing"


@pytest.mark.parametrize("words, usage", [
    (("prepare",), "prepare [OPTIONS] SOURCE"), (("inspect",), "inspect [OPTIONS] DATA"),
    (("train",), "train [OPTIONS]"), (("merge",), "merge [OPTIONS] RUN"),
    (("eval", "openllm"), "eval openllm [OPTIONS] MODEL"), (("eval", "tasks"), "eval tasks [OPTIONS] MODEL"),
    (("eval", "alpaca"), "eval alpaca [OPTIONS] MODEL"), (("eval", "dominance"), "eval dominance [OPTIONS] RUN"),
    (("compare",), "compare [OPTIONS] EVAL..."),
])
def test_required_arguments_show_without_brackets(words, usage):
    first = next(line for line in _help(words, 200).splitlines() if "Usage:" in line)
    assert first.strip().endswith(usage), first


def _rows(text: str) -> str:
    """The help with its boxes and wrapping removed: one space-separated string."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_choices_defaults_and_ranges_read_in_words():
    train = _rows(_help(("train",), 200))
    assert "--dtype DTYPE Weight dtype: auto = bf16 on a bf16-capable GPU, else fp32. (one of: auto, bf16, fp16, " \
           "fp32) [default: auto]" in train
    assert "--sort hard|soft Hard sort, or the differentiable soft sort. [default: hard]" in train
    assert "--beta NUMBER Scale of the log-ratios (default per loss: 0.01 for aot and aot_unpaired, the paper's; " \
           "0.1 for dpo, ipo and kto, TRL's). (range: > 0)" in train
    assert "--model MODEL Base model: a local directory or a Hugging Face id. (required)" in train
    prepare = _rows(_help(("prepare",), 200))
    assert "--binarize METHOD Pick pairs from scored responses (default best-vs-worst for ultrafeedback and " \
           "scored data) (one of: best-vs-worst, best-vs-random)" in prepare
    assert "--overwrite Replace the output directory if it exists" in prepare
    dominance = _rows(_help(("eval", "dominance"), 200))
    assert "--limit N Score only the first N rows of the test split (quick checks). (range: >= 1)" in dominance
    alpaca = _rows(_help(("eval", "alpaca"), 200))
    assert "--limit N Answer only the first N instructions" in alpaca
    assert "[default: weighted_alpaca_eval_gpt4_turbo]" in alpaca


def _panels(text: str) -> list[str]:
    return re.findall(r"╭─ (.+?) ─", text)


def test_panels_put_what_must_be_given_first():
    assert _panels(_help(("train",), 100)) == ["Model", "Data", "Output", "Objective", "Optimization",
                                               "Config file and help"]
    assert _panels(_help(("prepare",), 100)) == ["Arguments", "Options", "Hub or save_to_disk source",
                                                 "Pairs and labels", "Token lengths (with --tokenizer)"]
    assert _panels(_help(("eval", "alpaca"), 100)) == ["Arguments", "Options", "Generation", "Device and precision",
                                                       "Judge"]
    tasks = _help(("eval", "tasks"), 100)
    assert _panels(tasks) == ["Arguments", "Options", "lm-eval options", "Device and precision"]
    options = tasks.split("╭─ Options")[1].split("╰")[0]
    assert "--tasks" in options and "--include-path" in options   # what to run sits with -o, not among the tweaks


def test_on_off_flags_are_stacked_and_parse_both_ways(tmp_path):
    text = _help(("merge",), 80)
    verify = text.splitlines()[[i for i, line in enumerate(text.splitlines()) if "│ --verify " in line][0] + 1]
    assert verify.split()[1] == "--no-verify"
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "no-run"), "-o", str(tmp_path / "m"), "--no-verify"])
    assert result.exit_code == 2 and "no-run" in result.output   # parsed; the missing run is what fails


def _doc_commands(text: str) -> list[tuple[str, list[str]]]:
    """(line, arguments after `aot`) of every `aot ...` command in the sh code blocks of a page; synopsis
    lines (``[--flag X]``) and elided ones (``...``) are not commands."""
    out = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if " [" in line or "..." in line:
                continue
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                command_word = i == 0 or "=" in words[i - 1] or words[i - 1] in ("&&", ";", "|", "time")
                if (word == "aot" and command_word) or (word == "aot_cli" and words[i - 1] == "-m"):
                    out.append((line.strip(), words[i + 1:]))
                    break
    return out


def _parse(args: list[str]) -> None:
    """Parse a command line as `aot` would, without running it (unknown commands and flags raise)."""
    command = typer.main.get_command(app)
    words = list(args)
    while isinstance(command, typer.core.TyperGroup):
        name = words.pop(0)
        assert name in command.commands, f"no command {name!r}"
        command = command.commands[name]
    command.make_context(command.name, words)


DOC_PAGES = ["README.md", "docs/aot.md", "docs/eval.md", "docs/inspect.md", "docs/merge.md", "docs/performance.md",
             "docs/prepare.md", "docs/sort-set.md", "docs/train.md"]


@pytest.mark.parametrize("page", DOC_PAGES)
def test_every_documented_command_parses(page):
    commands = _doc_commands((ROOT / page).read_text())
    for line, args in commands:
        try:
            _parse(args)
        except Exception as exc:
            pytest.fail(f"{page}: {line}\n{type(exc).__name__}: {exc}")
