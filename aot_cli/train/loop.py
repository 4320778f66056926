"""The optimizer-step loop: draw, step, clip, update, log, checkpoint; stop cleanly on Ctrl-C or divergence.

Everything the loop needs is built by :mod:`aot_cli.train.run` and passed in a :class:`LoopState`;
this module owns only the order of operations per step and the ways of stopping early:

- Ctrl-C (SIGINT) sets a flag; the step in progress finishes, a checkpoint is written, and the
  process exits with code 130 (a second Ctrl-C interrupts at once). Ranks agree on the flag.
- Divergence stops the run with one error line naming the step and the last good checkpoint (the
  newest one that is intact with finite weights, :func:`aot_cli.train.checkpoint.checkpoint_problem`);
  the checkpoints already written are kept, and no checkpoint is written of diverged weights.
  Training has diverged when

  1. the loss or the gradient norm is not finite: the run stops *before* the update is applied; or
  2. after the update, the norm of the trainable weights is not finite, or is more than
     ``DIVERGENCE_GROWTH`` (100) times its norm at the start of the run (kept in each checkpoint,
     so a resumed run measures against the same start).

  Why the weights' norm: a learning rate far too large (``--lr 1e6``) can blow the weights up
  while the loss stays finite and even flat (the network saturates and its gradient vanishes), so
  the loss alone does not see it. A sound run moves its weights by a fraction of their size: LoRA's
  A matrices start at their init scale and B at zero, a full fine-tuning starts at the pretrained
  weights; growing them a hundredfold takes thousands of same-signed Adam steps at a normal rate.
  Computing the norm is one pass over the trainable weights per step (negligible next to the step).
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
from aot_cli.train import zero
from aot_cli.train.batching import Side, StepSampler, step_micro_batches
from aot_cli.train.checkpoint import newest_good_checkpoint, save_checkpoint
from aot_cli.train.metrics import MetricsLog
from aot_cli.train.step import GraphBudget, step_gradient

DIVERGENCE_GROWTH = 100.0  # criterion 2 of the module docstring


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
    kl_ref: dict[int, torch.Tensor] | None = None  # KTO: precomputed reference of each epoch's mismatched rows
    online_ref: Any = None  # reference.OnlineReference with --ref online
    padding_free: bool = False  # --padding-free as resolved for this model (aot_cli.train.packing.resolve)
    checkpoint_state: dict = field(default_factory=dict)
    weight_norm_start: float | None = None  # the trainable weights' norm before step 1 (None: measure it now)
    graphs: GraphBudget = field(default_factory=GraphBudget)  # --graph-memory (global scope), learned over the run


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
    batches = step_micro_batches(state.sides, state.sampler, k, micro_batch=cfg.batch_size, pad_id=state.pad_id,
                                 rank=acc.process_index, world_size=acc.num_processes, ref=state.ref,
                                 kl=cfg.loss == "kto", kl_ref=state.kl_ref, max_length=cfg.max_length,
                                 padding_free=state.padding_free)
    batches = [batch.to(acc.device) for batch in batches]
    if state.online_ref is not None:
        for batch in batches:
            state.online_ref.fill(batch)
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
        **({} if out.kl is None else {"kl": out.kl}),
        "grad_norm": grad_norm,
        "lr": lr,
        "samples_per_s": out.couples / seconds,
        "tokens_per_s": tokens / seconds,
        "step_time_s": seconds,
        "elapsed_s": time.time() - started,
    }


def _checkpoint(state: LoopState, step: int) -> Path:
    return save_checkpoint(state.out, step, model=state.model, optimizer=state.optimizer,
                           scheduler=state.scheduler, accelerator=state.accelerator,
                           state={**state.checkpoint_state, "weight_norm_start": state.weight_norm_start},
                           keep=state.config.save_total_limit)


def weight_norm(params: list) -> float:
    """The L2 norm of all `params` together, accumulated in float32 (an fp16 sum would overflow)."""
    norms = [torch.linalg.vector_norm(p.detach(), dtype=torch.float32) for p in params]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def trainable_norm(accelerator, params: list) -> float:
    """The norm the divergence guard watches: :func:`weight_norm`, or under ZeRO-3 the same from each
    process's partitions of the weights (:func:`aot_cli.train.zero.partitioned_weight_norm`)."""
    if zero.stage(accelerator) == 3:
        return zero.partitioned_weight_norm(accelerator, params)
    return weight_norm(params)


def diverged(norm: float, start: float) -> bool:
    """Criterion 2 of the module docstring (a start of all-zero weights gives no scale: only non-finite counts)."""
    return not math.isfinite(norm) or (start > 0 and norm > DIVERGENCE_GROWTH * start)


def _kept(state: LoopState) -> str:
    last = newest_good_checkpoint(state.out)
    return f"the last good checkpoint is {last}" if last else "no good checkpoint was saved before it"


def _stop_non_finite(state: LoopState, k: int, loss: float, grad_norm: float) -> None:
    what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
    raise UserError(f"{what} at step {k + 1}: stopped before applying it; {_kept(state)} "
                    "(lower --lr, check the data, or use --dtype fp32/bf16 instead of fp16)")


def _stop_diverged(state: LoopState, k: int, norm: float) -> None:
    start = state.weight_norm_start
    what = (f"became {norm} with this update" if not math.isfinite(norm) else
            f"grew to {norm:.3g}, {norm / start:.3g} times its {start:.3g} at the start (the limit is "
            f"{DIVERGENCE_GROWTH:g}x)")
    raise UserError(f"training diverged at step {k + 1}: the trainable weights' norm {what}; stopped without "
                    f"checkpointing it; {_kept(state)}; lower --lr (it is {state.config.lr:g}) and train again")


def apply_update(state: LoopState, k: int, loss: float, params: list) -> float:
    """Clip the step's gradient at ``--max-grad-norm`` and apply it; returns its norm before clipping.
    A non-finite loss or gradient stops the run before the update. Under DeepSpeed its engine clips,
    checks and steps in one call (:mod:`aot_cli.train.zero`): a non-finite gradient is then found by
    DeepSpeed, which skips the update."""
    acc, cfg = state.accelerator, state.config
    if zero.under_deepspeed(acc):
        if not math.isfinite(loss):
            _stop_non_finite(state, k, loss, math.nan)
        grad_norm = zero.apply_update(acc)
        if not math.isfinite(grad_norm):
            _stop_non_finite(state, k, loss, grad_norm)
        return grad_norm
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    grad_norm = float(acc.clip_grad_norm_(params, max_norm))
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        state.optimizer.zero_grad(set_to_none=True)
        _stop_non_finite(state, k, loss, grad_norm)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def train_loop(state: LoopState, metrics: MetricsLog | None) -> None:
    """Run steps ``start_step .. total_steps - 1`` (`metrics` is None on every rank but the main one)."""
    acc, cfg = state.accelerator, state.config
    params = [p for p in state.model.parameters() if p.requires_grad]
    state.graphs.limit = int(cfg.graph_memory * 2**30)
    state.model.train()
    if state.weight_norm_start is None:
        state.weight_norm_start = trainable_norm(acc, params)
    started = time.time()
    with _StopRequest() as stop, progress() as bar:
        task = bar.add_task("Training", total=state.total_steps, completed=state.start_step, stats="", unit="step",
                            visible=acc.is_local_main_process)
        for k in range(state.start_step, state.total_steps):
            t0 = time.time()
            out = step_gradient(cfg.sort_scope, state.model, micro_batches(state, k), state.loss_fn,
                                chunk_size=cfg.logps_chunk_size, accelerator=acc, graphs=state.graphs)
            loss = out.loss.item()
            lr = state.scheduler.get_last_lr()[0]
            grad_norm = apply_update(state, k, loss, params)
            state.scheduler.step()
            record = _record(state, k, out, grad_norm, lr, time.time() - t0, started)
            if acc.is_main_process:
                metrics.write(record)
            norm = trainable_norm(acc, params)
            if diverged(norm, state.weight_norm_start):
                _stop_diverged(state, k, norm)
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
