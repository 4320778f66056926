"""Reference log-probs: computed once before training (cached on disk) or every step (``--ref online``).

The reference is the starting point of training: the base model (LoRA: the policy with its adapters
disabled, no second copy), or the base with ``--init-adapter``, or for full fine-tuning the initial
weights. Before the first update the policy *is* that starting point, so a fresh run computes the
precomputed log-probs with the policy itself and no second model is ever loaded; only a resumed run
whose cache entry is gone loads a frozen copy, which is freed right after the pass.

The cache key is a fingerprint of (base model, starting adapter, dataset fingerprint, tokenizer,
tokenization settings, dtype and loading options): changing any of them recomputes.

KTO also needs the reference log-probs of its mismatched rows, which depend on the step's draw: the
precompute then makes one more pass per epoch the run trains on (that epoch's rows,
:class:`aot_cli.train.batching.KLSide`), cached under the data's key, the draw settings and the
epoch (:func:`kl_cache_key`).
"""

from __future__ import annotations

import pickle
from contextlib import contextmanager, nullcontext
from pathlib import Path
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from accelerate.utils import gather_object
from huggingface_hub import snapshot_download

from aot_cli.artifacts.models import load_reference, reference_of
from aot_cli.artifacts.store import atomic_file, describe_input, directory_fingerprint, fingerprint
from aot_cli.cache import cache_dir
from aot_cli.console import warn
from aot_cli.train.batching import KLSide, MicroBatch, Side, StepSampler, collate
from aot_cli.train.logprobs import model_sequence_logps
from aot_cli.train.model import master_weights_in_fp32, reference_recipe
from aot_cli.train.packing import packed_sequence_logps


def model_fingerprint(model: str) -> str:
    """A cheap fingerprint of a model directory (:func:`aot_cli.artifacts.directory_fingerprint`:
    big files are sampled, hashing a 14 GB checkpoint each run would take minutes). A hub id is
    fingerprinted through its locally cached snapshot (its name alone if none is cached)."""
    path = Path(model)
    if not path.is_dir():
        try:
            path = Path(snapshot_download(model, local_files_only=True))
        except (OSError, ValueError):  # not cached, or not a repo id: loading the model will say so
            return fingerprint({"hub_id": model})
    return directory_fingerprint(path)


def cache_key(config, *, data_fingerprint: str, tokenizer_fingerprint: str, settings: dict) -> str:
    """The reference cache key of a train Config's starting point on its tokenized training data."""
    return fingerprint({
        "model": model_fingerprint(config.model),
        "init_adapter": describe_input(config.init_adapter) if config.init_adapter else None,
        "data": data_fingerprint, "tokenizer": tokenizer_fingerprint, "settings": settings,
        "dtype": config.dtype, "load_in_4bit": config.load_in_4bit, "attn": config.attn_implementation,
        "fp32_master_autocast": master_weights_in_fp32(config),
    })


def kl_cache_key(key: str, sampler: StepSampler, *, max_length: int | None, epoch: int) -> str:
    """The cache key of one epoch's mismatched rows (KTO): what fixes the draw, on top of `key`."""
    return fingerprint({"reference": key, "kl_epoch": epoch, "seed": sampler.seed, "paired": sampler.paired,
                        "global_batch": sampler.global_batch, "positive_fraction": str(sampler.fraction),
                        "max_length": max_length})


def cache_path(key: str) -> Path:
    return cache_dir("reference") / f"{key}.pt"


def load_cached(key: str, names: tuple[str, ...]) -> list[torch.Tensor] | None:
    """The cached reference log-probs of `key` (the tensors `names` of the entry: "a" and "b" for the
    two sides, "kl" for KTO's mismatched rows of an epoch), or None when absent or damaged (then
    recomputed)."""
    path = cache_path(key)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return [saved[name] for name in names]
    except (RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as exc:
        warn(f"reference cache entry {path} is damaged ({type(exc).__name__}); computing it again")
        path.unlink(missing_ok=True)
        return None


def save_cached(key: str, values: dict[str, torch.Tensor]) -> Path:
    """Write through a temporary file and rename, so a reader (or a killed run) never sees half an entry."""
    path = cache_path(key)
    with atomic_file(path) as tmp:
        torch.save(values, tmp)
    return path


@contextmanager
def reference_model(policy, config, *, at_start: bool) -> Iterator[torch.nn.Module]:
    """The model that gives reference log-probs, in eval mode, restored to train mode afterwards.

    LoRA without an init adapter: the policy with adapters disabled. Otherwise, at the start of a
    run: the policy itself (nothing has changed it yet). Otherwise: a frozen copy loaded from disk
    (:func:`aot_cli.artifacts.models.reference_of`).
    """
    recipe = reference_recipe(config)
    was_training = policy.training
    policy.eval()
    try:
        if at_start and not recipe.reference_is_policy_without_adapter:
            yield policy
        else:
            with reference_of(policy, recipe) as model:
                yield model
    finally:
        policy.train(was_training)


@torch.no_grad()
def side_logps(model, side: Side | KLSide, *, pad_id: int, batch_rows: int, chunk_size: int | None,
               device, rank: int = 0, world_size: int = 1, on_batch=None,
               padding_free: bool = False) -> dict[int, float]:
    """``{side index: summed completion log-prob}`` for this rank's share of one side, in batches of
    similar length (rank r takes batches r, r + world_size, ...); ``padding_free``: packed forwards,
    the policy's path (:mod:`aot_cli.train.packing`)."""
    logps_fn = packed_sequence_logps if padding_free else model_sequence_logps
    order = np.argsort(side.lengths, kind="stable")
    batches = [order[i:i + batch_rows] for i in range(0, len(order), batch_rows)]
    out: dict[int, float] = {}
    mine = batches[rank::world_size]
    # Every rank runs as many forwards as the busiest one (a rank short of a batch repeats the first and drops
    # the result): a sharded model (FSDP) gathers each layer's weights with all ranks in every forward.
    for k in range(-(-len(batches) // world_size)):
        batch = mine[k] if k < len(mine) else batches[0]
        ids, mask, labels = collate([side.get(i) for i in batch], pad_id)
        logps = logps_fn(model, ids.to(device), mask.to(device), labels.to(device), chunk_size=chunk_size)
        if k >= len(mine):
            continue
        out.update(zip(batch.tolist(), logps.float().cpu().tolist()))
        if on_batch is not None:
            on_batch(len(batch) * world_size)
    return out


def precompute(model, sides: Sequence[Side | KLSide], *, pad_id: int, batch_rows: int, chunk_size: int | None,
               accelerator=None, on_batch=None, padding_free: bool = False) -> list[torch.Tensor]:
    """Reference log-probs of every row of each side (the two sides of the data, or an epoch's KTO
    mismatched rows); ranks split the work and share results."""
    rank = 0 if accelerator is None else accelerator.process_index
    world = 1 if accelerator is None else accelerator.num_processes
    device = next(model.parameters()).device
    results = []
    for side in sides:
        local = side_logps(model, side, pad_id=pad_id, batch_rows=batch_rows, chunk_size=chunk_size,
                           device=device, rank=rank, world_size=world, on_batch=on_batch, padding_free=padding_free)
        if world > 1:
            merged: dict[int, float] = {}
            for part in gather_object([local]):
                merged.update(part)
            local = merged
        values = torch.empty(len(side), dtype=torch.float32)
        values[list(local)] = torch.tensor(list(local.values()), dtype=torch.float32)
        results.append(values)
    return results


class OnlineReference:
    """``--ref online``: reference log-probs of each micro-batch, computed when it is trained on.

    LoRA without an init adapter disables the policy's adapters for the pass; otherwise a frozen
    copy of the starting point stays in memory for the whole run.
    """

    def __init__(self, policy, config, chunk_size: int | None):
        self.policy, self.config, self.chunk_size = policy, config, chunk_size
        recipe = reference_recipe(config)
        self.frozen = None
        if not recipe.reference_is_policy_without_adapter:
            self.frozen = load_reference(recipe).to(next(policy.parameters()).device)

    @torch.no_grad()
    def fill(self, batch: MicroBatch) -> None:
        """Set the batch's reference log-probs (``ref_a``, ``ref_b``, and its KTO mismatched rows'), packed
        when the batch is (the policy's path)."""
        logps_fn = packed_sequence_logps if batch.padding_free else model_sequence_logps
        with (nullcontext(self.frozen) if self.frozen is not None
              else reference_model(self.policy, self.config, at_start=False)) as model:
            logps = logps_fn(model, batch.input_ids, batch.attention_mask, batch.labels, chunk_size=self.chunk_size)
            batch.ref_a, batch.ref_b = logps[:batch.n_a], logps[batch.n_a:]
            if batch.kl is not None:
                batch.kl.ref = logps_fn(model, batch.kl.input_ids, batch.kl.attention_mask, batch.kl.labels,
                                        chunk_size=self.chunk_size)
