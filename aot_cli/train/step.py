"""The gradient of one optimizer step, with the sort set either the whole global batch or each micro-batch.

``global_scope_step`` (the default) is exact gradient caching (GradCache, Gao et al. 2021, applied
to AOT). A preference loss L depends on the parameters only through the per-sample log-probs
r = (policy_a, policy_b) of the G samples of the step, so dL/dtheta = sum_i (dL/dr_i) dr_i/dtheta:

1. a no-grad forward of every micro-batch gives r; ranks all_gather it into the global vector;
2. L(r) is computed once on the whole vector and g = dL/dr by autograd on those 2G numbers
   (cheap: a sort of G numbers);
3. each micro-batch runs forward + backward of sum_i g_i r_i(theta), accumulating exactly dL/dtheta
   (the last micro-batch keeps its graph from step 1 instead of running a second forward).

This holds for any loss that is a function of the log-probs: paired and unpaired AOT, every
surrogate, hard and soft sort, DPO and IPO. Dropout would make pass 1 and pass 3 see different
networks; the torch RNG state is recorded before each pass-1 forward and replayed before its
pass-3 forward (GradCache's ``RandContext``), so both passes draw the same dropout masks. The
logged loss is the true global-batch loss.

``micro_scope_step`` is TRL's behaviour (loss per micro-batch, averaged), kept for comparison.
Both leave the summed gradient in ``.grad``; the caller clips and steps the optimizer.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from collections.abc import Callable

import torch

from aot_cli.train.batching import MicroBatch
from aot_cli.train.logprobs import model_sequence_logps

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class StepOutput:
    """The step's loss and the global (all-rank) log-prob vectors, detached, for metrics."""

    loss: torch.Tensor
    policy_a: torch.Tensor
    policy_b: torch.Tensor
    ref_a: torch.Tensor
    ref_b: torch.Tensor
    n_tokens: int  # non-padding tokens in this rank's micro-batches (counted once per step)


def policy_logps(model, batch: MicroBatch, chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of the batch's side-A rows and side-B rows.

    One forward over the concatenated rows, or two (shorter half, longer half) when that saves at
    least a fifth of the padded positions: chosen and rejected answers often differ in length, and
    one forward pads every row to the longest. Rows are independent (right padding, causal
    attention), so the values are the same; compute and activations follow the positions (on the
    benchmark's data, 15% less CPU time per step: docs/performance.md).
    """
    lengths = batch.attention_mask.sum(-1)
    halves = torch.tensor_split(torch.argsort(lengths), 2)
    split = sum(len(h) * int(lengths[h].max()) for h in halves if len(h))
    # Several processes: one forward per micro-batch (DDP syncs buffers in each forward; ranks must agree).
    several = (torch.distributed.is_available() and torch.distributed.is_initialized()
               and torch.distributed.get_world_size() > 1)
    if several or split > 0.8 * len(lengths) * batch.input_ids.shape[1]:
        logps = model_sequence_logps(model, batch.input_ids, batch.attention_mask, batch.labels, chunk_size=chunk_size)
        return logps[:batch.size], logps[batch.size:]
    parts = []
    for rows in halves:
        width = int(lengths[rows].max())
        parts.append(model_sequence_logps(model, batch.input_ids[rows, :width], batch.attention_mask[rows, :width],
                                          batch.labels[rows, :width], chunk_size=chunk_size))
    logps = torch.cat(parts)[torch.argsort(torch.cat(halves))]
    return logps[:batch.size], logps[batch.size:]


class _RngReplay:
    """Record the torch RNG state now; ``replay()`` restores it (same dropout masks again)."""

    def __init__(self):
        self.cpu = torch.random.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def replay(self) -> None:
        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _sync_context(accelerator, model, last: bool):
    """Skip DDP's gradient all-reduce on every micro-batch but the last of the step."""
    return nullcontext() if last or accelerator is None else accelerator.no_sync(model)


def _gather(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    return tensor if accelerator is None or accelerator.num_processes == 1 else accelerator.gather(tensor)


def _backward(accelerator, loss: torch.Tensor) -> None:
    if accelerator is None:
        loss.backward()
    else:
        accelerator.backward(loss)


def global_scope_step(model, micro_batches: list[MicroBatch], loss_fn: LossFn, *, chunk_size: int | None = 1024,
                      accelerator=None) -> StepOutput:
    """Gradient of the loss over the whole global batch (all micro-batches of all ranks).

    The last micro-batch keeps its pass-1 graph and is backpropagated first, so it needs no second
    forward: with one micro-batch per rank the step costs what a plain step costs. DDP reduces
    gradients once, on the backward of the step's last forward; every other forward runs under
    ``no_sync``.
    """
    world = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    *replayed, kept = micro_batches
    rngs, parts_a, parts_b = [], [], []
    with torch.no_grad():
        for batch in replayed:
            rngs.append(_RngReplay())
            a, b = policy_logps(model, batch, chunk_size)
            parts_a.append(a)
            parts_b.append(b)
    with _sync_context(accelerator, model, last=not replayed):
        kept_a, kept_b = policy_logps(model, kept, chunk_size)
    parts_a.append(kept_a.detach())
    parts_b.append(kept_b.detach())
    local_a, local_b = torch.cat(parts_a), torch.cat(parts_b)
    ref_a = _gather(accelerator, torch.cat([mb.ref_a for mb in micro_batches]).float())
    ref_b = _gather(accelerator, torch.cat([mb.ref_b for mb in micro_batches]).float())
    policy_a = _gather(accelerator, local_a).requires_grad_(True)
    policy_b = _gather(accelerator, local_b).requires_grad_(True)
    loss = loss_fn(policy_a, policy_b, ref_a, ref_b)
    grad_a, grad_b = torch.autograd.grad(loss, [policy_a, policy_b])
    n_local = len(local_a)
    # DDP averages gradients over ranks; each rank holds its share of a sum, so undo the mean.
    grad_a = grad_a[rank * n_local:(rank + 1) * n_local] * world
    grad_b = grad_b[rank * n_local:(rank + 1) * n_local] * world
    window = slice(n_local - kept.size, n_local)
    _backward(accelerator, (grad_a[window] * kept_a).sum() + (grad_b[window] * kept_b).sum())
    offset = 0
    for j, batch in enumerate(replayed):
        rngs[j].replay()
        with _sync_context(accelerator, model, last=j == len(replayed) - 1):
            a, b = policy_logps(model, batch, chunk_size)
            window = slice(offset, offset + batch.size)
            _backward(accelerator, (grad_a[window] * a).sum() + (grad_b[window] * b).sum())
        offset += batch.size
    n_tokens = sum(batch.n_tokens for batch in micro_batches)
    return StepOutput(loss.detach(), policy_a.detach(), policy_b.detach(), ref_a, ref_b, n_tokens)


def micro_scope_step(model, micro_batches: list[MicroBatch], loss_fn: LossFn, *, chunk_size: int | None = 1024,
                     accelerator=None) -> StepOutput:
    """TRL's step: the loss of each micro-batch on its own, averaged over micro-batches and ranks."""
    losses, parts_a, parts_b, n_tokens = [], [], [], 0
    for j, batch in enumerate(micro_batches):
        with _sync_context(accelerator, model, last=j == len(micro_batches) - 1):
            a, b = policy_logps(model, batch, chunk_size)
            loss = loss_fn(a, b, batch.ref_a.float(), batch.ref_b.float())
            _backward(accelerator, loss / len(micro_batches))
        losses.append(loss.detach())
        parts_a.append(a.detach())
        parts_b.append(b.detach())
        n_tokens += batch.n_tokens
    loss = _gather(accelerator, torch.stack(losses)).mean()
    gather_cat = (lambda parts: _gather(accelerator, torch.cat(parts)))
    return StepOutput(loss, gather_cat(parts_a), gather_cat(parts_b),
                      gather_cat([mb.ref_a.float() for mb in micro_batches]),
                      gather_cat([mb.ref_b.float() for mb in micro_batches]), n_tokens)


def step_gradient(scope: str, model, micro_batches: list[MicroBatch], loss_fn: LossFn, **kwargs) -> StepOutput:
    """Dispatch on ``--sort-scope``."""
    step = global_scope_step if scope == "global" else micro_scope_step
    return step(model, micro_batches, loss_fn, **kwargs)
