"""Resumable checkpoints: ``OUT/checkpoints/step-N/`` holds everything a resumed run needs to match an
uninterrupted one bit for bit on the same hardware.

- ``trainable.safetensors``: every trainable parameter by name (the LoRA adapter, or all weights);
- ``optimizer.pt``, ``scheduler.pt``;
- ``rng-RANK.pt``: Python, NumPy and torch (CPU and CUDA) RNG states of each process;
- ``state.json``: the step (the data position: the sampler draws step k from the seed alone) and
  the settings that must not change across a resume.

A checkpoint is written into a temporary directory and renamed, so a crash mid-write never leaves
a half checkpoint that ``--resume auto`` would pick.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from aot_cli.errors import UserError

STATE = "state.json"


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step-{step}"


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``OUT/checkpoints``, if any."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return None
    found = [(int(p.name.split("-", 1)[1]), p) for p in root.glob("step-*")
             if p.name.split("-", 1)[1].isdigit() and (p / STATE).is_file()]
    return max(found)[1] if found else None


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, step: int, *, model, optimizer, scheduler, state: dict, accelerator) -> Path:
    """Write ``checkpoints/step-<step>`` (main process writes the shared files, every rank its RNG)."""
    target = checkpoint_dir(out, step)
    tmp = target.with_name(f".{target.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(trainable_state(accelerator.unwrap_model(model)), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            shutil.rmtree(old)
        os.replace(tmp, target)
    accelerator.wait_for_everyone()
    return target


def read_state(path: Path) -> dict:
    path = Path(path)
    if not (path / STATE).is_file():
        raise UserError(f"--resume {path}: not a checkpoint (no {STATE}; expected OUT/checkpoints/step-N)")
    return json.loads((path / STATE).read_text())


def check_compatible(saved: dict, current: dict, path: Path) -> None:
    """A resume must keep what fixes the data order and the objective; name the first difference."""
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise UserError(f"--resume {path}: the checkpoint was made with {key}={saved[key]!r}, this run has "
                            f"{value!r}; resume with the same setting or start a new run")


def load_checkpoint(path: Path, *, model, optimizer, scheduler, accelerator) -> int:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the step to continue from."""
    path = Path(path)
    state = read_state(path)
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(accelerator.unwrap_model(model).named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in weights]
    if missing:
        raise UserError(f"--resume {path}: the checkpoint lacks {len(missing)} trainable tensor(s) of this model "
                        f"(e.g. {missing[0]}); was it made with other --lora/--full settings?")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return int(state["step"])
