"""`aot inspect DATA`: see what the model will see before a GPU-hour is spent (a dry run; saves nothing).

With ``--model``, examples are tokenized exactly as ``aot train`` tokenizes them
(``data.tokenize.encode_example`` with the same ``--max-length`` / ``--max-prompt-length``) and the
token ids are decoded back: special tokens visible and highlighted, the prompt/completion boundary
marked. Then a table of token lengths before truncation, how many rows the limits would truncate,
and warnings for the template traps (double BOS, missing EOS, a trained prompt that is not the
generation prompt). Without ``--model``: the raw rows and their character lengths.
"""

from __future__ import annotations

import shlex
from typing import Any

from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from aot_cli.console import info, out_console, warn
from aot_cli.data.dataset import load_prepared
from aot_cli.data.tokenize import (TokenizeSettings, encode_example, length_stats, load_tokenizer, render_example,
                                   specials_of, split_text, summarize_lengths)
from aot_cli.errors import UserError
from aot_cli.inspect.config import Config

BOUNDARY = "⟪completion⟫"


def run(config: Config) -> None:
    """Print the examples, the length table and the template notes (writes nothing)."""
    config.preflight()
    tokenizer = settings = None
    if config.model is not None:  # bad limits or model: one error line, before anything is printed
        settings = TokenizeSettings(config.max_length, config.max_prompt_length)
        tokenizer = load_tokenizer(config.model, config.chat_template)
    artifact, data = load_prepared(config.data)
    summary = artifact.summary
    paired = artifact.paired
    split = data[config.split]
    if split.num_rows == 0:
        raise UserError(f"{config.data}: split {config.split!r} has no rows")
    info(f"{config.data}: {'paired' if paired else 'unpaired'}, format {summary.get('format', '?')}, "
         f"{split.num_rows} {config.split} rows")
    rows = split.select(range(min(config.num_examples, split.num_rows)))
    if tokenizer is None:
        _show_raw(rows, split, paired)
    else:
        _show_tokens(config, tokenizer, settings, rows, split, paired)
    info(_next_command(config, paired))


def _next_command(config: Config, paired: bool) -> str:
    """The `aot train` line that trains on what was just shown (same model, lengths and template;
    unpaired data needs the unpaired loss)."""
    model = config.model or "MODEL"
    line = f"next: aot train --model {shlex.quote(str(model))} --data {shlex.quote(str(config.data))}"
    line += " -o RUN_DIR" if paired else " --loss aot_unpaired -o RUN_DIR"
    if config.model is not None:
        line += f" --max-length {config.max_length} --max-prompt-length {config.max_prompt_length}"
    if config.chat_template is not None:
        line += f" --chat-template {shlex.quote(str(config.chat_template))}"
    return line


def _sides(paired: bool) -> tuple[str, ...]:
    return ("chosen", "rejected") if paired else ("completion",)


def _show_tokens(config: Config, tokenizer: Any, settings: Any, rows: Any, split: Any, paired: bool) -> None:
    for i, row in enumerate(rows):
        title = f"{config.split} row {i + 1}"
        if not paired:
            title += f", label {row['label']}"
        out_console.print(Rule(title))
        for side in _sides(paired):
            enc = encode_example(tokenizer, row["prompt"], row[side], settings)
            cut = [w for w, flag in (("prompt", enc.truncated_prompt), ("completion", enc.truncated_completion))
                   if flag]
            out_console.print(f"[bold]{side}[/bold]: {enc.prompt_len} prompt + "
                              f"{len(enc.input_ids) - enc.prompt_len} completion tokens"
                              + (f" [yellow](truncated: {', '.join(cut)})[/yellow]" if cut else ""))
            out_console.print(_render_ids(tokenizer, enc.input_ids, enc.prompt_len))
            if not enc.prompt_is_generation:
                _show_generation_prompt(tokenizer, row["prompt"], row[side])
    stats = length_stats(split, tokenizer, settings, paired)
    _print_token_table(config, stats)
    _print_template_notes(tokenizer, stats, split[0], paired)


def _show_generation_prompt(tokenizer: Any, prompt: Any, completion: Any) -> None:
    """Where the prompt trained on differs from what generation will see: the ends of both texts."""
    rendered = render_example(tokenizer, prompt, completion, tokenizer.eos_token)
    trained, generation = rendered.text[:rendered.answer_start], rendered.generation_prompt
    start = _common_prefix(trained, generation)
    out_console.print(Text.assemble(("the prompt trained on differs from the generation prompt from character "
                                     f"{start}:\n", "yellow"),
                                    ("  trained on:       ", "bold"), repr(trained[start:][:120]), "\n",
                                    ("  generation sees:  ", "bold"), repr(generation[start:][:120])))


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _render_ids(tokenizer: Any, ids: list[int], prompt_len: int) -> Any:
    """Decoded ids with special tokens highlighted and the boundary marked.

    Ordinary tokens are decoded in runs (byte-level tokens only make sense together); the runs break
    at special tokens and at the boundary, so what is shown is exactly the ids, in order.
    """
    special = set(tokenizer.all_special_ids)
    text = Text()
    run: list[int] = []

    def flush() -> None:
        if run:
            text.append(tokenizer.decode(run, skip_special_tokens=False))
            run.clear()

    for position, token_id in enumerate(ids):
        if position == prompt_len:
            flush()
            text.append(BOUNDARY, style="bold black on green")
        if token_id in special:
            flush()
            text.append(tokenizer.convert_ids_to_tokens(token_id), style="bold magenta")
        else:
            run.append(token_id)
    flush()
    return text


def _print_token_table(config: Config, stats: Any) -> None:
    table = Table(title=f"token lengths ({config.split})", caption=f"{stats.rows} rows, before truncation")
    for column in ("", "p50", "p95", "max"):
        table.add_column(column, justify="left" if not column else "right")
    for name, values in stats.lengths.items():
        table.add_row(name, str(values["p50"]), str(values["p95"]), str(values["max"]))
    out_console.print(table)
    limits = [f"{flag} {value}" for flag, value in (("--max-length", config.max_length),
                                                    ("--max-prompt-length", config.max_prompt_length)) if value]
    if limits:
        share = 100 * stats.truncated / stats.rows
        out_console.print(f"{' '.join(limits)} would truncate {stats.truncated} of {stats.rows} rows "
                          f"({share:.1f}%)", highlight=False)
    else:
        out_console.print("no truncation limits given (--max-length, --max-prompt-length)")
    if stats.prompt_too_long:
        warn(f"{stats.prompt_too_long} of {stats.rows} rows have a prompt that leaves no room for the "
             f"completion within --max-length {config.max_length}: the prompt is cut from the left to "
             f"{config.max_length - 1} tokens and the completion to 1 (raise --max-length, or set "
             "--max-prompt-length below it)")


def _print_template_notes(tokenizer: Any, stats: Any, first_row: dict, paired: bool) -> None:
    """Warnings for the template traps found in the split, and notes on the ones aot handles."""
    rows = stats.rows
    if stats.double_bos:
        warn(f"{stats.double_bos} of {rows} rows start with BOS twice ({tokenizer.bos_token}): the chat "
             "template writes it twice; fix the template (--chat-template FILE)")
    if stats.missing_eos:
        warn(f"{stats.missing_eos} of {rows} rows have a completion that does not end with EOS: the tokenizer "
             "has no EOS token, so the model cannot learn where to stop")
    if stats.prompt_not_generation:
        warn(f"{stats.prompt_not_generation} of {rows} rows train on a prompt that is not the generation prompt: "
             "aot trains on the conversation exactly as the template renders it whole, and this template renders "
             "the prompt differently once an answer follows (e.g. Mistral v0.3 drops the system prompt, Qwen3 "
             "writes an empty think block) or joins its last character to the answer's first token; the examples "
             "above show both texts")
    if stats.eos_added:
        info(f"note: the chat template does not end the answer with EOS ({tokenizer.eos_token}) in "
             f"{stats.eos_added} of {rows} rows; aot appends it once")
    prompt_text, _, _ = split_text(tokenizer, first_row["prompt"], first_row[_sides(paired)[0]], tokenizer.eos_token)
    if specials_of(tokenizer).adds_bos and prompt_text.startswith(tokenizer.bos_token):
        info(f"note: the chat template writes BOS ({tokenizer.bos_token}) and the tokenizer adds one too; "
             "aot keeps one")


def _chars(value: Any) -> int:
    """Characters of a string, or of a message list's contents."""
    if isinstance(value, str):
        return len(value)
    return sum(len(str(m.get("content") or "")) for m in value)


def _format(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in value)


def _show_raw(rows: Any, split: Any, paired: bool) -> None:
    for i, row in enumerate(rows):
        body = Text()
        for field in ("prompt", *_sides(paired)):
            body.append(f"{field}:\n", style="bold")
            body.append(_format(row[field]) + "\n")
        if not paired:
            body.append(f"label: {row['label']}", style="bold")
        out_console.print(Panel(body, title=f"row {i + 1}", title_align="left"))
    table = Table(title="character lengths", caption=f"{split.num_rows} rows")
    for column in ("", "p50", "p95", "max"):
        table.add_column(column, justify="left" if not column else "right")
    for field in ("prompt", *_sides(paired)):
        values = summarize_lengths([_chars(v) for v in split[field]])
        table.add_row(field, str(values["p50"]), str(values["p95"]), str(values["max"]))
    out_console.print(table)
    info("give --model to see the templated tokens, token lengths and truncation")
