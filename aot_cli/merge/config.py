"""Options of ``aot merge`` and the checks that need no model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aot_cli.artifacts.kinds import RunArtifact
from aot_cli.artifacts.store import check_output
from aot_cli.config import StepConfig, arg, opt
from aot_cli.errors import UserError
from aot_cli.vocab import DTYPE_CHOICES

# What save_pretrained's shard splitting (huggingface_hub) parses: a number and a decimal unit.
SHARD_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*[KMGT]B\s*$", re.IGNORECASE)


@dataclass
class Config(StepConfig):
    """Merge a run's LoRA adapter into its base model (or export a full run) as a plain model dir."""

    run: Path = arg(help="Run directory made by `aot train`.", metavar="RUN")
    output: Path = opt(None, "-o", "--output", help="Model directory to write.", required=True, metavar="DIR")
    dtype: str = opt("auto", "--dtype", help="Dtype of the saved weights (auto = the base checkpoint's).",
                     choices=DTYPE_CHOICES)
    max_shard_size: str = opt("5GB", "--max-shard-size", help="Largest safetensors shard, e.g. 2GB or 500MB.",
                              metavar="SIZE")
    verify: bool = opt(True, "--verify/--no-verify", help="Compare logits of the merged and the unmerged "
                       "model on a few prompts; fail above the tolerance.")
    verify_tolerance: float | None = opt(None, "--verify-tolerance", help="Largest allowed max |logit "
                                            "difference| / max |logit| (default by dtype: fp32 1e-4, "
                                            "fp16 1e-2, bf16 3e-2).", gt=0)
    overwrite: bool = opt(False, "--overwrite", help="Replace an existing output directory.")

    def preflight(self) -> None:
        if not SHARD_SIZE.match(self.max_shard_size):
            raise UserError(f"--max-shard-size {self.max_shard_size!r}: expected a number and a unit of KB, MB, GB "
                            "or TB, e.g. 5GB or 500MB")
        run = RunArtifact.load(self.run)
        check_output(self.output, self.overwrite, inputs=[run.path, run.base_model, run.init_adapter])
