"""The gradient of one optimizer step, with the sort set either the whole global batch or each micro-batch.

``global_scope_step`` (the default) is exact gradient caching (GradCache, Gao et al. 2021, applied
to AOT). A preference loss L depends on the parameters only through the per-sample log-probs
r = (policy_a, policy_b) of the G samples of the step, so dL/dtheta = sum_i (dL/dr_i) dr_i/dtheta:

1. a no-grad forward of every micro-batch gives r; ranks all_gather it into the global vector;
2. L(r) is computed once on the whole vector and g = dL/dr by autograd on those 2G numbers
   (cheap: a sort of G numbers);
3. each micro-batch runs forward + backward of sum_i g_i r_i(theta), accumulating exactly dL/dtheta
   (the last micro-batch keeps its graph from step 1 instead of running a second forward).

This holds for any loss that is a function of the log-probs: paired and unpaired AOT (equal or
unequal counts, first or second order), every surrogate, hard and soft sort, DPO, IPO and KTO.
Ranks gather their rows with a side mask, so micro-batches that hold different numbers of
positives and negatives (unpaired data) gather like any other. Dropout would make pass 1 and
pass 3 see different networks; the torch RNG state is recorded before each pass-1 forward and
replayed before its pass-3 forward (GradCache's ``RandContext``), so both passes draw the same
dropout masks. The logged loss is the true global-batch loss.

KTO's reference point z0 depends on the policy's log-probs of the mismatched rows, but KTO (like
TRL) detaches it: those rows run once, without gradient, before pass 1, and are gathered like the
others. The global scope takes z0 over all mismatched rows of the global batch; the micro scope
over each micro-batch's rows of every rank, which is TRL's z0 (TRL averages its ranks' micro-batch
means per accumulation step; here the ranks' rows are equally many, so the same number).

``micro_scope_step`` is TRL's behaviour (loss per micro-batch, averaged), kept for comparison.
Both leave the summed gradient in ``.grad``; the caller clips and steps the optimizer.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import torch

from aot_cli.losses import kto_reference_point
from aot_cli.train import zero
from aot_cli.train.batching import MicroBatch
from aot_cli.train.logprobs import model_sequence_logps
from aot_cli.train.packing import packed_sequence_logps

# (policy A, policy B, reference A, reference B) log-prob vectors -> loss; KTO's loss function takes a fifth
# argument, the (policy, reference) log-probs of the mismatched rows, passed when the micro-batches carry them.
LossFn = Callable[..., torch.Tensor]


@dataclass
class StepOutput:
    """The step's loss and the global (all-rank) log-prob vectors, detached, for metrics."""

    loss: torch.Tensor
    policy_a: torch.Tensor
    policy_b: torch.Tensor
    ref_a: torch.Tensor
    ref_b: torch.Tensor
    n_tokens: int  # non-padding tokens in this rank's micro-batches (counted once per step)
    kl: float | None = None  # KTO's reference point z0 (micro scope: the mean over micro-batches)

    @property
    def couples(self) -> float:
        """Pairs, or positive/negative couples, in the step: half its samples."""
        return (len(self.policy_a) + len(self.policy_b)) / 2


def rows_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
               chunk_size: int | None, padding_free: bool = False) -> torch.Tensor:
    """Summed completion log-probs of each row.

    ``padding_free``: one packed forward over the rows' tokens (:mod:`aot_cli.train.packing`).
    Otherwise padded: one forward over the rows, or two (shorter half, longer half) when that saves at least a fifth
    of the padded positions: chosen and rejected answers often differ in length, and one forward
    pads every row to the longest. Rows are independent (right padding, causal attention), so the
    values are the same; compute and activations follow the positions (on the benchmark's data, 15%
    less CPU time per step: docs/performance.md).
    """
    if padding_free:
        return packed_sequence_logps(model, input_ids, attention_mask, labels, chunk_size=chunk_size)
    lengths = attention_mask.sum(-1)
    halves = torch.tensor_split(torch.argsort(lengths), 2)
    split = sum(len(h) * int(lengths[h].max()) for h in halves if len(h))
    # Several processes: one forward per micro-batch (DDP syncs buffers in each forward; ranks must agree).
    several = (torch.distributed.is_available() and torch.distributed.is_initialized()
               and torch.distributed.get_world_size() > 1)
    if several or split > 0.8 * len(lengths) * input_ids.shape[1]:
        return model_sequence_logps(model, input_ids, attention_mask, labels, chunk_size=chunk_size)
    parts = []
    for rows in halves:
        width = int(lengths[rows].max())
        parts.append(model_sequence_logps(model, input_ids[rows, :width], attention_mask[rows, :width],
                                          labels[rows, :width], chunk_size=chunk_size))
    return torch.cat(parts)[torch.argsort(torch.cat(halves))]


def policy_logps(model, batch: MicroBatch, chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of the batch's side-A rows and side-B rows (:func:`rows_logps`)."""
    logps = rows_logps(model, batch.input_ids, batch.attention_mask, batch.labels, chunk_size, batch.padding_free)
    return logps[:batch.n_a], logps[batch.n_a:]


@torch.no_grad()
def kl_logps(model, micro_batches: list[MicroBatch], chunk_size: int | None) -> list[torch.Tensor] | None:
    """The policy's log-probs of each micro-batch's mismatched rows (KTO), without gradient; None
    when the micro-batches carry none."""
    if micro_batches[0].kl is None:
        return None
    return [rows_logps(model, b.kl.input_ids, b.kl.attention_mask, b.kl.labels, chunk_size, b.padding_free).float()
            for b in micro_batches]


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


def _backward(accelerator, loss: torch.Tensor, *, last: bool) -> None:
    """One backward of the step (`last`: the step's final one, DeepSpeed's accumulation boundary)."""
    if accelerator is None:
        loss.backward()
    elif zero.under_deepspeed(accelerator):
        zero.backward(accelerator, loss, boundary=last)
    else:
        accelerator.backward(loss)


def _side_a_mask(micro_batches: list[MicroBatch], device) -> torch.Tensor:
    """1 on the side-A rows of the concatenated micro-batches (each: side A's rows, then side B's)."""
    return torch.cat([torch.arange(b.n_rows, device=device) < b.n_a for b in micro_batches]).long()


def _references(micro_batches: list[MicroBatch]) -> torch.Tensor:
    return torch.cat([torch.cat([b.ref_a, b.ref_b]) for b in micro_batches]).float()


def _output(accelerator, loss, rows: torch.Tensor, micro_batches: list[MicroBatch], kl: float | None) -> StepOutput:
    """Gather this rank's rows, their references and sides, and split all ranks' rows by side
    (rank by rank, micro-batch by micro-batch: side A's order matches side B's for pairs)."""
    side_a = _gather(accelerator, _side_a_mask(micro_batches, rows.device)).bool()
    refs = _gather(accelerator, _references(micro_batches))
    rows = _gather(accelerator, rows.detach())
    n_tokens = sum(batch.n_tokens for batch in micro_batches)
    return StepOutput(loss, rows[side_a], rows[~side_a], refs[side_a], refs[~side_a], n_tokens, kl)


class GraphMeter:
    """Bytes of activations that autograd graphs save, measured while a forward runs.

    A ``saved_tensors_hooks`` pair sees every tensor a graph keeps for its backward; storages are
    counted once and the model's own weights (saved by every linear layer) not at all, so the sum is
    what the graph adds to memory. Works the same on CPU and GPU (no allocator statistics needed).
    """

    def __init__(self, model):
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.weights and key not in self.seen:
            self.seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    def measure(self):
        """Context in which every saved tensor is counted (reset ``bytes`` and ``seen`` between graphs)."""
        self.seen, self.bytes = set(), 0
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)


@dataclass
class GraphBudget:
    """How many bytes of pass-1 graphs ``global_scope_step`` may keep at once (``--graph-memory``),
    and what it has learned of a graph's size: bytes per padded position, the largest seen (the
    graph grows with positions; taking the largest keeps the estimate on the safe side). One object
    lives for the whole run, so from step 2 on every decision uses an estimate."""

    limit: int = 0
    per_position: float | None = None

    def estimate(self, batch: MicroBatch) -> float | None:
        return None if self.per_position is None else self.per_position * batch.input_ids.numel()

    def learn(self, batch: MicroBatch, size: int) -> None:
        self.per_position = max(self.per_position or 0.0, size / batch.input_ids.numel())


def global_scope_step(model, micro_batches: list[MicroBatch], loss_fn: LossFn, *, chunk_size: int | None = 1024,
                      accelerator=None, graphs: GraphBudget | None = None) -> StepOutput:
    """Gradient of the loss over the whole global batch (all micro-batches of all ranks).

    The last micro-batch keeps its pass-1 graph and is backpropagated first, so it needs no second
    forward: with one micro-batch per rank the step costs what a plain step costs. With a
    :class:`GraphBudget`, earlier micro-batches also keep their pass-1 graphs while the kept graphs
    fit in its limit (beyond the last micro-batch's, which every step holds): those are
    backpropagated from pass 1 too, and only the others run a no-grad forward and are replayed.
    Until the budget knows a graph's size, the first micro-batch runs with grad and is measured; a
    graph that turns out over the limit is dropped at once and replayed like the others.

    DDP reduces gradients once, on the backward of the step's last forward; every other forward
    runs under ``no_sync``. Under several processes at least one micro-batch is replayed, so that
    the synchronized forward is the last one and no other backward follows it.
    """
    world = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    graphs = graphs or GraphBudget()
    kl_parts = kl_logps(model, micro_batches, chunk_size)
    *earlier, last = micro_batches
    meter = GraphMeter(model) if graphs.limit > 0 else None
    rngs: dict[int, _RngReplay] = {}  # replayed micro-batch -> RNG state before its pass-1 forward
    kept: dict[int, torch.Tensor] = {}  # micro-batch -> its log-probs with their pass-1 graph
    parts, used = [], 0
    for j, batch in enumerate(earlier):
        estimate = graphs.estimate(batch)
        room = graphs.limit - used - (estimate or 0)  # the last micro-batch's graph is beyond the budget
        must_replay = world > 1 and j == len(earlier) - 1 and not rngs
        if meter is not None and room >= 0 and not must_replay:
            rng = _RngReplay()
            with _sync_context(accelerator, model, last=False), meter.measure():
                logps = torch.cat(policy_logps(model, batch, chunk_size))
            graphs.learn(batch, meter.bytes)
            if used + meter.bytes <= graphs.limit:
                kept[j] = logps
                used += meter.bytes
            else:
                rngs[j] = rng
            parts.append(logps.detach())
            del logps  # a dropped graph is freed before the next forward
            continue
        rngs[j] = _RngReplay()
        with torch.no_grad():
            parts.append(torch.cat(policy_logps(model, batch, chunk_size)))
    with _sync_context(accelerator, model, last=not earlier):
        kept[len(earlier)] = last_rows = torch.cat(policy_logps(model, last, chunk_size))
    parts.append(last_rows.detach())
    local = torch.cat(parts)
    side_a = _gather(accelerator, _side_a_mask(micro_batches, local.device)).bool()
    refs = _gather(accelerator, _references(micro_batches))
    rows = _gather(accelerator, local).requires_grad_(True)
    args = [rows[side_a], rows[~side_a], refs[side_a], refs[~side_a]]
    z0 = None
    if kl_parts is not None:
        kl_refs = torch.cat([b.kl.ref for b in micro_batches]).float()
        kl = (_gather(accelerator, torch.cat(kl_parts)), _gather(accelerator, kl_refs))
        args.append(kl)
        z0 = kto_reference_point(*kl).item()
    loss = loss_fn(*args)
    (grad,) = torch.autograd.grad(loss, rows)
    # DDP averages gradients over ranks; each rank holds its share of a sum, so undo the mean.
    grad = grad[rank * len(local):(rank + 1) * len(local)] * world
    offsets = np.cumsum([0] + [batch.n_rows for batch in micro_batches]).tolist()
    # Kept graphs first (each backward frees its graph), then the replays; the last forward is the synchronized one.
    for j in sorted(kept, reverse=True):
        logps = kept.pop(j)
        _backward(accelerator, (grad[offsets[j]:offsets[j + 1]] * logps).sum(), last=not kept and not rngs)
    for j in sorted(rngs):
        rngs[j].replay()
        with _sync_context(accelerator, model, last=j == max(rngs)):
            logps = torch.cat(policy_logps(model, micro_batches[j], chunk_size))
            _backward(accelerator, (grad[offsets[j]:offsets[j + 1]] * logps).sum(), last=j == max(rngs))
    n_tokens = sum(batch.n_tokens for batch in micro_batches)
    rows = rows.detach()
    return StepOutput(loss.detach(), rows[side_a], rows[~side_a], refs[side_a], refs[~side_a], n_tokens, z0)


def micro_scope_step(model, micro_batches: list[MicroBatch], loss_fn: LossFn, *, chunk_size: int | None = 1024,
                     accelerator=None) -> StepOutput:
    """TRL's step: the loss of each micro-batch on its own, averaged over micro-batches and ranks."""
    kl_parts = kl_logps(model, micro_batches, chunk_size)
    losses, parts, z0s = [], [], []
    for j, batch in enumerate(micro_batches):
        kl = None
        if kl_parts is not None:
            kl = (_gather(accelerator, kl_parts[j]), _gather(accelerator, batch.kl.ref.float()))
            z0s.append(kto_reference_point(*kl).item())
        with _sync_context(accelerator, model, last=j == len(micro_batches) - 1):
            a, b = policy_logps(model, batch, chunk_size)
            args = [a, b, batch.ref_a.float(), batch.ref_b.float()] + ([] if kl is None else [kl])
            loss = loss_fn(*args)
            _backward(accelerator, loss / len(micro_batches), last=j == len(micro_batches) - 1)
        losses.append(loss.detach())
        parts.append(torch.cat([a, b]).detach())
    loss = _gather(accelerator, torch.stack(losses)).mean()
    return _output(accelerator, loss, torch.cat(parts), micro_batches, sum(z0s) / len(z0s) if z0s else None)


def step_gradient(scope: str, model, micro_batches: list[MicroBatch], loss_fn: LossFn, *,
                  graphs: GraphBudget | None = None, **kwargs) -> StepOutput:
    """Dispatch on ``--sort-scope`` (``graphs``, the :class:`GraphBudget`, is the global scope's)."""
    if scope == "global":
        return global_scope_step(model, micro_batches, loss_fn, graphs=graphs, **kwargs)
    return micro_scope_step(model, micro_batches, loss_fn, **kwargs)
