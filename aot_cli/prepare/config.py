"""Options of ``aot prepare`` (also the keys of its --config YAML) and the checks that need no data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aot_cli.artifacts.store import check_output
from aot_cli.config import StepConfig, arg, opt
from aot_cli.errors import UserError
from aot_cli.vocab import BINARIZE_METHODS, FORMATS, PREFERENCES, is_local_path

# --help panels; the main "Options" panel holds the output and what most sources need.
SOURCE, PAIRS, LENGTHS = "Hub or save_to_disk source", "Pairs and labels", "Token lengths (with --tokenizer)"


@dataclass
class Config(StepConfig):
    """Options of ``aot prepare``."""

    source: str = arg(help="Hub dataset id, local .json/.jsonl/.parquet/.csv file, directory of them, "
                           "a save_to_disk directory, or a prepared dataset", metavar="SOURCE")
    output: Path = opt(None, "-o", "--output", help="Output directory (the dataset artifact)", required=True,
                       metavar="DIR")
    format: str = opt("auto", help="Data shape; auto recognizes it by its columns", choices=FORMATS)
    split: str | None = opt(None, help="Split to read as train (its test counterpart, if any, is kept as test)",
                               metavar="NAME", panel=SOURCE)
    subset: str | None = opt(None, help="Hub dataset configuration (subset) name", metavar="NAME", panel=SOURCE)
    revision: str | None = opt(None, help="Hub dataset revision (branch, tag or commit)", metavar="REV",
                                  panel=SOURCE)
    binarize: str | None = opt(None, help="Pick pairs from scored responses (default best-vs-worst for "
                                          "ultrafeedback and scored data)", choices=BINARIZE_METHODS,
                                          metavar="METHOD", panel=PAIRS)
    score: str | None = opt(None, help="Score for --binarize: a field or a weighted sum like "
                                       "'0.7*helpfulness + 0.3*honesty - 0.2*verbosity' "
                                       "(default overall_score / helpfulness)", metavar="EXPR", panel=PAIRS)
    min_margin: float = opt(0.0, help="Drop pairs whose score difference is below this", ge=0, panel=PAIRS)
    prefer: str = opt("better", help="PKU-SafeRLHF: which preference id picks the chosen response",
                      choices=PREFERENCES, panel=PAIRS)
    unpair: bool = opt(False, help="Turn pairs into unpaired rows (chosen -> label true, rejected -> false)",
                       panel=PAIRS)
    disjoint_prompts: bool = opt(False, help="With --unpair: no prompt gives both a positive and a "
                                             "negative; balanced counts (the paper's unpaired setting)", panel=PAIRS)
    label_field: str | None = opt(None, help="Field holding the label (a flag, or a score with "
                                             "--label-threshold); default label / is_safe", metavar="FIELD",
                                     panel=PAIRS)
    label_threshold: float | None = opt(None, help="Label = (label field >= this)", panel=PAIRS)
    test_size: float = opt(0.1, help="Test split when the source has none: a fraction (< 1) or a count", ge=0)
    tokenizer: str | None = opt(None, help="Model or tokenizer (hub id or directory): record token-length "
                                           "stats with its chat template", metavar="MODEL", panel=LENGTHS)
    chat_template: Path | None = opt(None, help="Jinja chat template file, for a tokenizer without one (a base "
                                                "model) or to override it, as in aot train", metavar="FILE",
                                        panel=LENGTHS)
    max_length: int | None = opt(None, help="Drop rows longer than this many tokens", ge=2, panel=LENGTHS)
    limit: int | None = opt(None, help="Read only the first N rows of each source split (quick runs)", ge=1)
    overwrite: bool = opt(False, help="Replace the output directory if it exists")
    seed: int = opt(42, help="Seed for the split, best-vs-random and --disjoint-prompts")

    def preflight(self) -> None:
        """Option combinations that cannot work, a missing local source, and the output: before any read."""
        if self.disjoint_prompts and not self.unpair:
            raise UserError("--disjoint-prompts needs --unpair")
        if self.chat_template is not None and self.tokenizer is None:
            raise UserError("--chat-template needs --tokenizer (the template is applied to count token lengths)")
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            raise UserError(f"--chat-template {self.chat_template}: file not found")
        if self.max_length is not None and self.tokenizer is None:
            raise UserError("--max-length needs --tokenizer (the lengths are counted in that model's tokens)")
        if self.label_threshold is not None and self.label_field is None:
            raise UserError("--label-threshold needs --label-field (the field the threshold applies to)")
        if self.binarize and self.label_field:
            raise UserError("--binarize and --label-field exclude each other: scores become pairs or labels, not both")
        if is_local_path(self.source) and not Path(self.source).expanduser().exists():
            raise UserError(f"{self.source}: no such file or directory (give a local .json/.jsonl/.parquet/.csv "
                            "file, a directory of them, a prepared dataset, or a hub id like org/name)")
        check_output(self.output, self.overwrite, inputs=[self.source, self.chat_template, self.tokenizer])
