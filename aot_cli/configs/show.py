"""`aot configs [NAME]`: where the shipped accelerate launch configs are, so a pip-installed aot can be
launched on several processes without writing one (docs/distributed.md).

``aot configs`` lists every config with its path and what it does; ``aot configs NAME`` prints only the
path, for ``accelerate launch --config_file "$(aot configs fsdp)" -m aot_cli train ...``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from aot_cli.config import StepConfig, arg
from aot_cli.console import out_console
from aot_cli.errors import UserError
from aot_cli.vocab import ACCELERATE_CONFIGS

ACCELERATE_DIR = Path(__file__).resolve().parent / "accelerate"
WHAT = {
    "ddp": "DDP: a whole model per process, gradients averaged (GPUs and CPUs)",
    "fsdp": "FSDP2, full shard, sharded state dict: weights, gradients and optimizer state split (GPUs and CPUs)",
    "zero2": "DeepSpeed ZeRO-2: gradients and optimizer state partitioned (needs the deepspeed extra)",
    "zero3": "DeepSpeed ZeRO-3: weights, gradients and optimizer state partitioned (needs the deepspeed extra)",
}


def accelerate_config(name: str) -> Path:
    """The path of the shipped accelerate config `name` (one of ACCELERATE_CONFIGS)."""
    if name not in ACCELERATE_CONFIGS:
        raise UserError(f"{name!r} is not a shipped accelerate config; choose one of {', '.join(ACCELERATE_CONFIGS)} "
                        "(`aot configs` lists them)")
    return ACCELERATE_DIR / f"{name}.yaml"


@dataclass
class Config(StepConfig):
    """Options of ``aot configs``."""

    name: str | None = arg(None, required=False, metavar="NAME",
                           help=f"Print only this config's path: {', '.join(ACCELERATE_CONFIGS)}.")

    def preflight(self) -> None:
        if self.name is not None:
            accelerate_config(self.name)


def run(config: Config) -> dict:
    """Print the path of config `name`, or a table of all of them; returns {name: path}."""
    if config.name is not None:
        path = accelerate_config(config.name)
        out_console.print(str(path), highlight=False, soft_wrap=True)
        return {config.name: str(path)}
    out_console.print("accelerate launch configs (accelerate launch --config_file PATH -m aot_cli train ...):",
                      highlight=False, soft_wrap=True)
    paths = {name: str(accelerate_config(name)) for name in ACCELERATE_CONFIGS}
    deepspeed_missing = importlib.util.find_spec("deepspeed") is None
    for name, path in paths.items():
        what = WHAT[name]
        if name.startswith("zero") and deepspeed_missing:  # accelerate's launcher would stop with a traceback
            what += "; DeepSpeed is not installed here: pip install 'aot-cli[deepspeed]'"
        out_console.print(f"{name:<6} {path}\n       {what}", highlight=False, markup=False, soft_wrap=True)
    return paths
