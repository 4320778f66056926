"""Which samples each optimizer step sees, and how they are cut into padded micro-batches.

The data are two *sides*: side A holds the chosen (paired) or positive (unpaired) sequences, side B
the rejected or negative ones. Paired data draw a pair index for both sides at once; unpaired data
draw ``G`` positives and ``G`` negatives independently each step, from different prompts (the
paper's Algorithm 1). The draw for step ``k`` depends only on the seed, ``k`` and the global batch
size ``G`` (docs/architecture.md, invariants), so micro 2 x accumulation 8 and micro 16 x accumulation 1 see the
same 16 samples, and a resumed run needs nothing but its step number.

The global batch is drawn at random (the sort set stays an unbiased sample) and only then split
into micro-batches of similar length, each padded to its own longest row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import torch

from aot_cli.train.logprobs import build_labels


@dataclass
class Side:
    """One half of the training data: token ids and prompt lengths, read lazily from a Dataset."""

    dataset: object  # datasets.Dataset
    ids_column: str
    prompt_column: str
    rows: np.ndarray  # dataset row of each side index
    lengths: np.ndarray  # token count of each side index

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, index: int) -> tuple[list[int], int]:
        row = self.dataset[int(self.rows[index])]
        return row[self.ids_column], int(row[self.prompt_column])


def _lengths(dataset, column: str) -> np.ndarray:
    return np.asarray(pc.list_value_length(dataset.with_format("arrow")[column]).to_numpy(), dtype=np.int64)


def make_sides(tokenized, *, paired: bool) -> tuple[Side, Side]:
    """Sides A and B of a tokenized split (columns as made by ``tokenize_split``)."""
    def side(ids: str, prompt: str, rows: np.ndarray) -> Side:
        columns = tokenized.select_columns([ids, prompt])  # a row read then skips the other side
        return Side(columns, ids, prompt, rows, _lengths(tokenized, ids)[rows])

    if paired:
        rows = np.arange(len(tokenized))
        return (side("chosen_input_ids", "chosen_prompt_len", rows),
                side("rejected_input_ids", "rejected_prompt_len", rows))
    labels = np.asarray(tokenized["label"], dtype=bool)
    return (side("input_ids", "prompt_len", np.flatnonzero(labels)),
            side("input_ids", "prompt_len", np.flatnonzero(~labels)))


class StepSampler:
    """Indices into sides A and B for optimizer step ``k`` (0-based), epoch by epoch without
    replacement; the last incomplete global batch of an epoch is dropped."""

    def __init__(self, n_a: int, n_b: int, global_batch: int, seed: int, *, paired: bool):
        if paired and n_a != n_b:
            raise ValueError(f"paired sides must have equal sizes, got {n_a} and {n_b}")
        self.n_a, self.n_b, self.global_batch, self.seed, self.paired = n_a, n_b, global_batch, seed, paired
        self.steps_per_epoch = min(n_a, n_b) // global_batch
        self._epoch: int | None = None
        self._perms: tuple[np.ndarray, np.ndarray] | None = None

    def _permutations(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch != self._epoch:
            perm_a = np.random.default_rng([self.seed, epoch, 0]).permutation(self.n_a)
            perm_b = perm_a if self.paired else np.random.default_rng([self.seed, epoch, 1]).permutation(self.n_b)
            self._epoch, self._perms = epoch, (perm_a, perm_b)
        return self._perms

    def step(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, within = divmod(k, self.steps_per_epoch)
        perm_a, perm_b = self._permutations(epoch)
        window = slice(within * self.global_batch, (within + 1) * self.global_batch)
        return perm_a[window], perm_b[window]


def split_micro_batches(idx_a: np.ndarray, idx_b: np.ndarray, len_a: np.ndarray, len_b: np.ndarray, *,
                        micro_batch: int, world_size: int = 1, rank: int = 0, paired: bool = True,
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's micro-batches of one global batch, grouped by length.

    Paired: pairs sorted by their longer side. Unpaired: positives and negatives sorted by length
    separately and matched rank by rank (which positive shares a micro-batch with which negative
    does not matter to a loss that sorts each side). Micro-batch ``j`` goes to rank
    ``j % world_size``, so ranks get micro-batches of similar length at each accumulation step.
    """
    if len(idx_a) != len(idx_b) or len(idx_a) % (micro_batch * world_size):
        raise ValueError(f"global batch of {len(idx_a)} does not split into micro-batches of {micro_batch} "
                         f"on {world_size} rank(s)")
    if paired:
        order = np.argsort(np.maximum(len_a[idx_a], len_b[idx_b]), kind="stable")
        a, b = idx_a[order], idx_b[order]
    else:
        a = idx_a[np.argsort(len_a[idx_a], kind="stable")]
        b = idx_b[np.argsort(len_b[idx_b], kind="stable")]
    n_micro = len(a) // micro_batch
    return [(a[j * micro_batch:(j + 1) * micro_batch], b[j * micro_batch:(j + 1) * micro_batch])
            for j in range(rank, n_micro, world_size)]


@dataclass
class MicroBatch:
    """Chosen/positive rows then rejected/negative rows, right-padded to the longest row.

    ``ref_a``/``ref_b`` are the reference log-probs of the two halves when precomputed.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    idx_a: np.ndarray
    idx_b: np.ndarray
    ref_a: torch.Tensor | None = None
    ref_b: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return len(self.idx_a)

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device) -> MicroBatch:
        move = (lambda t: None if t is None else t.to(device))
        return MicroBatch(move(self.input_ids), move(self.attention_mask), move(self.labels), self.idx_a,
                          self.idx_b, move(self.ref_a), move(self.ref_b))


def collate(sequences: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, labels)`` of ``(ids, prompt_len)`` rows, right-padded to the
    longest row; labels count completion tokens only (``build_labels``)."""
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, _) in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    labels = build_labels(input_ids, attention_mask, [plen for _, plen in sequences])
    return input_ids, attention_mask, labels


def make_micro_batch(side_a: Side, side_b: Side, idx_a: np.ndarray, idx_b: np.ndarray, pad_id: int,
                     ref_a: torch.Tensor | None = None, ref_b: torch.Tensor | None = None) -> MicroBatch:
    """One forward's worth of rows: side A's samples then side B's, concatenated."""
    rows = [side_a.get(i) for i in idx_a] + [side_b.get(i) for i in idx_b]
    input_ids, attention_mask, labels = collate(rows, pad_id)
    take = (lambda ref, idx: None if ref is None else ref[torch.as_tensor(idx, dtype=torch.long)])
    return MicroBatch(input_ids, attention_mask, labels, idx_a, idx_b, take(ref_a, idx_a), take(ref_b, idx_b))
