"""The optimizer-step loop: draw, step, clip, update, log, checkpoint; stop cleanly on Ctrl-C or NaN.

Everything the loop needs is built by :mod:`aot_cli.train.run` and passed in a :class:`LoopState`;
this module owns only the order of operations per step and the two ways of stopping early:

- Ctrl-C (SIGINT) sets a flag; the step in progress finishes, a checkpoint is written, and the
  process exits with code 130 (a second Ctrl-C interrupts at once). Ranks agree on the flag.
- A non-finite loss or gradient norm stops *before* the update is applied, naming the step and
  the last good checkpoint; the checkpoints already written are kept.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch

from aot_cli.console import info, progress
from aot_cli.errors import UserError
from aot_cli.losses import reward_metrics
from aot_cli.train.batching import Side, StepSampler, make_micro_batch, split_micro_batches
from aot_cli.train.checkpoint import latest_checkpoint, save_checkpoint
from aot_cli.train.metrics import MetricsLog
from aot_cli.train.step import step_gradient


@dataclass
class LoopState:
    """What the loop works with (built once by ``run.train``)."""

    config: Any
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    loss_fn: Callable
    sides: tuple[Side, Side]
    sampler: StepSampler
    pad_id: int
    out: Path
    total_steps: int
    start_step: int = 0
    ref: tuple[torch.Tensor, torch.Tensor] | None = None  # precomputed reference (side A, side B)
    online_ref: Callable | None = None
    checkpoint_state: dict = field(default_factory=dict)


class _StopRequest:
    """First SIGINT: ask the loop to stop after this step; second: the default KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def agreed(self, accelerator) -> bool:
        """Whether any rank was interrupted: all ranks must stop at the same step to checkpoint together."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def micro_batches(state: LoopState, k: int) -> list:
    """This rank's micro-batches of step k, on the device, with their reference log-probs."""
    acc, cfg = state.accelerator, state.config
    side_a, side_b = state.sides
    idx_a, idx_b = state.sampler.step(k)
    splits = split_micro_batches(idx_a, idx_b, side_a.lengths, side_b.lengths, micro_batch=cfg.batch_size,
                                 world_size=acc.num_processes, rank=acc.process_index, paired=state.sampler.paired)
    ref_a, ref_b = state.ref if state.ref is not None else (None, None)
    batches = [make_micro_batch(side_a, side_b, a, b, state.pad_id, ref_a, ref_b).to(acc.device) for a, b in splits]
    if state.online_ref is not None:
        for batch in batches:
            batch.ref_a, batch.ref_b = state.online_ref(batch)
    return batches


def _record(state: LoopState, k: int, out, grad_norm: float, lr: float, seconds: float, started: float) -> dict:
    acc, cfg = state.accelerator, state.config
    tokens = out.n_tokens
    if acc.num_processes > 1:
        tokens = int(acc.reduce(torch.tensor([tokens], device=acc.device), reduction="sum").item())
    return {
        "step": k + 1,
        "epoch": round((k + 1) / state.sampler.steps_per_epoch, 4),
        "loss": out.loss.item(),
        **reward_metrics(out.policy_a, out.policy_b, out.ref_a, out.ref_b, beta=cfg.beta),
        "grad_norm": grad_norm,
        "lr": lr,
        "samples_per_s": len(out.policy_a) / seconds,
        "tokens_per_s": tokens / seconds,
        "step_time_s": seconds,
        "elapsed_s": time.time() - started,
    }


def _checkpoint(state: LoopState, step: int) -> Path:
    return save_checkpoint(state.out, step, model=state.model, optimizer=state.optimizer,
                           scheduler=state.scheduler, state=state.checkpoint_state, accelerator=state.accelerator)


def _stop_non_finite(state: LoopState, k: int, loss: float, grad_norm: float) -> None:
    last = latest_checkpoint(state.out)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
    what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
    raise UserError(f"{what} at step {k + 1}: stopped before applying it; {kept} "
                    "(lower --lr, check the data, or use --dtype fp32/bf16 instead of fp16)")


def train_loop(state: LoopState, metrics: MetricsLog | None) -> None:
    """Run steps ``start_step .. total_steps - 1`` (`metrics` is None on every rank but the main one)."""
    acc, cfg = state.accelerator, state.config
    params = [p for p in state.model.parameters() if p.requires_grad]
    state.model.train()
    started = time.time()
    with _StopRequest() as stop, progress() as bar:
        task = bar.add_task("Training", total=state.total_steps, completed=state.start_step, stats="", unit="step",
                            visible=acc.is_local_main_process)
        for k in range(state.start_step, state.total_steps):
            t0 = time.time()
            out = step_gradient(cfg.sort_scope, state.model, micro_batches(state, k), state.loss_fn,
                                chunk_size=cfg.logps_chunk_size, accelerator=acc)
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            grad_norm = float(acc.clip_grad_norm_(params, max_norm))
            loss = out.loss.item()
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                state.optimizer.zero_grad(set_to_none=True)
                _stop_non_finite(state, k, loss, grad_norm)
            lr = state.scheduler.get_last_lr()[0]
            state.optimizer.step()
            state.scheduler.step()
            state.optimizer.zero_grad(set_to_none=True)
            record = _record(state, k, out, grad_norm, lr, time.time() - t0, started)
            if acc.is_main_process:
                metrics.write(record)
            bar.update(task, completed=k + 1, stats=(
                f"loss {record['loss']:.4f}, reward acc {record['rewards/accuracies']:.2f}, "
                f"margin {record['rewards/margins']:.4f}, {record['samples_per_s']:.1f} samples/s"))
            last_step = k + 1 == state.total_steps
            saved = None
            if cfg.save_steps and (k + 1) % cfg.save_steps == 0 and not last_step:
                saved = _checkpoint(state, k + 1)
            if not last_step and stop.agreed(acc):
                path = saved or _checkpoint(state, k + 1)
                if acc.is_main_process:
                    info(f"interrupted after step {k + 1}: checkpoint saved to {path}; "
                         f"continue with --resume auto -o {state.out}")
                raise SystemExit(130)
