"""Options of ``aot inspect`` and the checks that need no model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aot_cli.config import StepConfig, arg, opt
from aot_cli.errors import UserError
from aot_cli.train.config import MAX_LENGTH, MAX_PROMPT_LENGTH


@dataclass
class Config(StepConfig):
    """Show a prepared dataset as training will tokenize it: templated text, token counts, truncation."""

    data: Path = arg(help="Prepared dataset directory (made by `aot prepare`).", metavar="DATA")
    model: str | None = opt(None, "--model", help="Model (hub id or directory) whose tokenizer and chat "
                               "template to apply; without it, raw rows and character lengths.", metavar="MODEL")
    num_examples: int = opt(3, "-n", "--num-examples", help="How many examples to show (the first rows).", ge=0)
    split: str = opt("train", "--split", help="Split to inspect.", choices=("train", "test"))
    max_length: int | None = opt(MAX_LENGTH, "--max-length", help="Longest prompt + completion in tokens, "
                                    "as in `aot train` (same default).", ge=2)
    max_prompt_length: int | None = opt(MAX_PROMPT_LENGTH, "--max-prompt-length", help="Longest prompt in "
                                           "tokens (cut from the left), as in `aot train` (same default).", ge=1)
    chat_template: Path | None = opt(None, "--chat-template", help="Jinja chat template file, for a "
                                        "tokenizer without one or to override it.", metavar="FILE")

    def preflight(self) -> None:
        if self.chat_template is not None and self.model is None:
            raise UserError("--chat-template needs --model (the template is applied to the model's tokenizer)")
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            raise UserError(f"--chat-template {self.chat_template}: file not found")
