"""Resumable checkpoints: ``OUT/checkpoints/step-N/`` holds everything a resumed run needs to match an
uninterrupted one bit for bit on the same hardware.

- ``trainable.safetensors``: every trainable parameter by name (the LoRA adapter, or all weights);
- ``optimizer.pt``, ``scheduler.pt``;
- ``rng-RANK.pt``: Python, NumPy and torch (CPU and CUDA) RNG states of each process;
- ``state.json``, written last: the step (the data position: the sampler draws step k from the seed
  alone), the settings that must not change across a resume, the norm of the trainable weights at the
  start of the run (the divergence guard's yardstick, :mod:`aot_cli.train.loop`), and the size and
  SHA-256 of every other file.

Faults (docs/reliability.md):

- A checkpoint is written into a temporary directory whose name carries the writer's pid
  (:func:`aot_cli.artifacts.store.temporary_name`), flushed to disk, and renamed into place, so a kill
  mid-write never leaves a half checkpoint under a ``step-N`` name; the next save removes the
  temporaries of dead processes.
- A checkpoint damaged afterwards (a file cut short, edited, or weights that are not finite) fails
  :func:`checkpoint_problem`: ``--resume auto`` skips it with a warning for the newest good one, an
  explicitly named one is refused with one line naming its step.
- ``--save-total-limit N`` deletes older checkpoints only once a newer one is complete on disk, so
  the checkpoint a run resumed from survives until it is superseded.

Under FSDP (docs/distributed.md) the weights and the optimizer state are gathered whole on the main
process before they are written (the optimizer state then keyed by parameter name), and on resume every
process reads them and keeps its shard: the same files and checks, for any number of FSDP processes.
Under DeepSpeed the whole trainable weights are written the same way, while the optimizer state is
DeepSpeed's own, one partition per process in ``deepspeed/`` (instead of ``optimizer.pt``; recorded and
checked like the other files): a resume needs the same number of processes and ZeRO stage.

Hashing costs one read of each file per save (about a minute per 100 GB; nothing for LoRA) and one
per checkpoint examined on resume.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from accelerate.utils import DistributedType, broadcast_object_list
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from aot_cli.artifacts.store import remove_stale_temporaries_in, sha256_file, temporary_name
from aot_cli.errors import UserError
from aot_cli.train import zero

STATE = "state.json"
TRAINABLE, OPTIMIZER, SCHEDULER = "trainable.safetensors", "optimizer.pt", "scheduler.pt"


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step-{step}"


def step_of(path: Path) -> int:
    return int(Path(path).name.split("-", 1)[1])


def checkpoints(out: Path) -> list[Path]:
    """The checkpoint directories under ``OUT/checkpoints`` that have a ``state.json``, newest first
    (not yet verified: see :func:`checkpoint_problem`)."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.name.split("-", 1)[1].isdigit() and (p / STATE).is_file()]
    return sorted(found, key=step_of, reverse=True)


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with the checkpoint at `path`, or None when it is good: ``state.json`` parses and
    lists the files, every listed file has its recorded size and SHA-256, and the trainable weights
    are finite (a checkpoint of NaN weights would only make the run fail again)."""
    path = Path(path)
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {STATE}"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{STATE} is not valid JSON"
    files = state.get("files") if isinstance(state, dict) else None
    optimizer_listed = isinstance(files, dict) and any(name == OPTIMIZER or name.startswith(f"{zero.ENGINE_STATE}/")
                                                       for name in files)
    if not optimizer_listed or not {TRAINABLE, SCHEDULER} <= set(files):
        return f"{STATE} lists no files (not written by this version of aot, or edited)"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected.get("bytes"):
            return f"{name} has {size} bytes, {expected.get('bytes')} were written"
        if sha256_file(file) != expected.get("sha256"):
            return f"{name} differs from what was written (SHA-256 mismatch)"
    made = state.get("deepspeed")
    if made:
        partitions = [name for name in files if name.startswith(f"{zero.ENGINE_STATE}/")
                      and name.endswith("optim_states.pt")]
        if len(partitions) != made["processes"]:
            return (f"it holds {len(partitions)} of its {made['processes']} processes' optimizer partitions (on "
                    "several machines the output must be on a filesystem they all share)")
    with safe_open(str(path / TRAINABLE), framework="pt") as weights:
        for name in weights.keys():
            if not bool(torch.isfinite(weights.get_tensor(name)).all()):
                return f"{TRAINABLE}: {name} holds non-finite values"
    return None


def newest_good_checkpoint(out: Path, on_damaged: Callable[[Path, str], None] | None = None) -> Path | None:
    """The newest checkpoint under `out` that passes :func:`checkpoint_problem`; `on_damaged` hears of
    each newer one passed over."""
    for path in checkpoints(out):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if on_damaged is not None:
            on_damaged(path, problem)
    return None


def check_good(path: Path) -> None:
    """Refuse an explicitly named checkpoint that is damaged, in one line naming its step."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise UserError(f"--resume {path}: checkpoint step {step_of(path)} is damaged ({problem}); resume "
                        "from an older one (--resume auto picks the newest good one) or train again")


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


def sharded(accelerator) -> bool:
    """Whether the model is sharded over the processes (FSDP): its state must be gathered by all of them."""
    return accelerator.distributed_type == DistributedType.FSDP


def gathered_state(model, optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """FSDP: the whole trainable weights and the whole optimizer state (keyed by parameter name), on the
    main process's CPU; every process must call it, the others get empty dicts. Whole tensors, so that
    any number of FSDP processes can resume them and the checks of :func:`checkpoint_problem` apply."""
    weights, optim = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: t.contiguous() for name, t in weights.items() if name in names}, optim


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk (a directory: the names in it), so that deleting an older
    checkpoint never precedes the newer one being durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_record(path: Path) -> dict:
    _fsync(path)
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _temporary_for(target: Path, accelerator) -> Path:
    """The temporary directory of `target`, named and made by the main process, known to every rank."""
    name = [None]
    if accelerator.is_main_process:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries_in(target.parent)
        tmp = temporary_name(target)
        tmp.mkdir()
        name = [str(tmp)]
    if accelerator.num_processes > 1:
        broadcast_object_list(name)
    return Path(name[0])


def save_checkpoint(out: Path, step: int, *, model, optimizer, scheduler, state: dict, accelerator,
                    keep: int | None = None) -> Path:
    """Write ``checkpoints/step-<step>`` (main process writes the shared files, every rank its RNG),
    then keep only the newest `keep` checkpoints (None or 0: all of them)."""
    target = checkpoint_dir(out, step)
    tmp = _temporary_for(target, accelerator)
    try:
        torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
        optim = None  # DeepSpeed: each process writes its partition of the optimizer state
        if sharded(accelerator):
            weights, optim = gathered_state(model, optimizer)
        elif zero.stage(accelerator) == 3:  # every process takes part in gathering the weights
            weights = zero.gathered_trainable_weights(accelerator, model)
        elif accelerator.is_main_process:
            weights = trainable_state(accelerator.unwrap_model(model))
            if not zero.under_deepspeed(accelerator):
                optim = optimizer.state_dict()
        if zero.under_deepspeed(accelerator):
            zero.save_engine_state(model, tmp)
        if accelerator.is_main_process:
            save_file(weights, str(tmp / TRAINABLE))
            if optim is not None:
                torch.save(optim, tmp / OPTIMIZER)
            torch.save(scheduler.state_dict(), tmp / SCHEDULER)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = {f.relative_to(tmp).as_posix(): _file_record(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
            (tmp / STATE).write_text(json.dumps({**state, "step": step, "files": files}, indent=2) + "\n")
            _fsync(tmp / STATE)
            if target.exists():
                old = temporary_name(target, "old")
                os.replace(target, old)
                shutil.rmtree(old)
            os.replace(tmp, target)
            _fsync(target.parent)
            if keep:
                prune_checkpoints(out, keep, step)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return target


def prune_checkpoints(out: Path, keep: int, newest: int) -> None:
    """Keep step `newest` (just written) and the `keep - 1` checkpoints before it; delete the older ones.

    Checkpoints after `newest` (left by an earlier attempt when a run resumed from an older step,
    perhaps the damaged one it skipped) are neither counted nor deleted: counting them could delete
    the checkpoint just written. Each deleted one is renamed to a temporary first, so a kill
    mid-delete leaves a stale temporary (removed by the next save), never a half checkpoint."""
    older = [path for path in checkpoints(out) if step_of(path) < newest]
    for path in older[keep - 1:]:
        old = temporary_name(path, "old")
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)


def read_state(path: Path) -> dict:
    path = Path(path)
    if not (path / STATE).is_file():
        raise UserError(f"--resume {path}: not a checkpoint (no {STATE}; expected OUT/checkpoints/step-N)")
    return json.loads((path / STATE).read_text())


def _launch_words(deepspeed: dict | None) -> str:
    return (f"under DeepSpeed ZeRO-{deepspeed['zero_stage']} on {deepspeed['processes']} processes" if deepspeed
            else "without DeepSpeed")


def check_compatible(saved: dict, current: dict, path: Path) -> None:
    """A resume must keep what fixes the data order and the objective; name the first difference.
    DeepSpeed's optimizer partitions load only under the stage and number of processes that wrote them
    (a checkpoint without the record was made before DeepSpeed ran: without it)."""
    made, now = saved.get("deepspeed"), current.get("deepspeed")
    if "deepspeed" in current and made != now:
        how = (f'accelerate launch --config_file "$(aot configs zero{made["zero_stage"]})" --num_processes '
               f"{made['processes']} -m aot_cli train ..." if made else "the launch it was made with")
        raise UserError(f"--resume {path}: checkpoint step {step_of(path)} was made {_launch_words(made)}, this run "
                        f"is {_launch_words(now)}; DeepSpeed's optimizer state resumes only as it was written: "
                        f"resume with {how}")
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise UserError(f"--resume {path}: the checkpoint was made with {key}={saved[key]!r}, this run has "
                            f"{value!r}; resume with the same setting or start a new run")


def load_checkpoint(path: Path, *, model, optimizer, scheduler, accelerator) -> int:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the step to continue from.

    `path` passed :func:`checkpoint_problem` (its files are as written); what still fails to load
    (files written by another version of the libraries, or edited together with their record) is
    one error line naming the step."""
    path = Path(path)
    state = read_state(path)
    try:
        weights = load_file(str(path / TRAINABLE))
        optimizer_state = (torch.load(path / OPTIMIZER, map_location="cpu", weights_only=False)
                           if (path / OPTIMIZER).is_file() else None)
        scheduler_state = torch.load(path / SCHEDULER, weights_only=False)
        rng_file = path / f"rng-{accelerator.process_index}.pt"
        rng = torch.load(rng_file, weights_only=False) if rng_file.is_file() else None
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--resume {path}: checkpoint step {step_of(path)} cannot be loaded ({first}); resume "
                        "from an older one or train again") from None
    params = dict(accelerator.unwrap_model(model).named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in weights]
    if missing:
        raise UserError(f"--resume {path}: the checkpoint lacks {len(missing)} trainable tensor(s) of this model "
                        f"(e.g. {missing[0]}); was it made with other --lora/--full settings?")
    try:
        if zero.under_deepspeed(accelerator):  # DeepSpeed reads its own files: weights and optimizer partitions
            zero.load_engine_state(model, path)
        elif sharded(accelerator):  # every process holds the whole state: each keeps its shard
            full = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(model, weights, options=full)
            set_optimizer_state_dict(model, optimizer, optimizer_state, options=full)
        else:
            with torch.no_grad():
                for name, tensor in weights.items():
                    params[name].copy_(tensor)
            optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
    except (ValueError, KeyError, TypeError) as exc:  # another optimizer, other parameter groups
        raise UserError(f"--resume {path}: the optimizer state of checkpoint step {step_of(path)} does not fit "
                        f"this run ({exc}); was it made with another --optim?") from None
    if rng is not None:
        set_rng_state(rng)
    return int(state["step"])
