"""Which samples each optimizer step sees, and how they are cut into padded micro-batches.

The data are two *sides*: side A holds the chosen (paired) or positive (unpaired) sequences, side B
the rejected or negative ones. With ``G = --batch-size x --grad-accum x processes``:

- paired data draw ``G`` pair indices per step, both halves of each pair at once;
- unpaired data draw ``2G`` samples per step, positives and negatives independently, from different
  prompts (the paper's Algorithm 1), in the proportion ``f`` = ``--positive-fraction`` or, by
  default, the data's own share of positives. Step ``t`` of an epoch takes the positives
  ``P(t) .. P(t+1) - 1`` and the negatives ``2G t - P(t) .. 2G (t+1) - P(t+1) - 1`` of the epoch's
  two permutations, with ``P(t) = floor(2G t f)`` (exact rational arithmetic): every step holds
  ``floor(2G f)`` or ``ceil(2G f)`` positives, and with the data's own share an epoch is
  ``(n_pos + n_neg) // 2G`` steps that see every sample once but the fewer than ``2G`` left over.

The draw for step ``k`` depends only on the seed, ``k``, ``G`` and ``f`` (docs/architecture.md,
invariants), so micro 2 x accumulation 8 and micro 16 x accumulation 1 see the same samples, and a
resumed run needs nothing but its step number. The global batch is drawn at random (the sort set
stays an unbiased sample) and only then split into micro-batches of ``2 x --batch-size`` rows of
similar length, each padded to its own longest row (:func:`split_micro_batches`).

KTO also needs, for every sample, a *mismatched* row: its prompt followed by another sample's
completion (:func:`kl_sources`), whose log-ratio estimates KL(policy || reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

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
    prompt_lengths: np.ndarray  # prompt token count of each side index

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, index: int) -> tuple[list[int], int]:
        row = self.dataset[int(self.rows[index])]
        return row[self.ids_column], int(row[self.prompt_column])


def _lengths(dataset, column: str) -> np.ndarray:
    return np.asarray(pc.list_value_length(dataset.with_format("arrow")[column]).to_numpy(), dtype=np.int64)


def _integers(dataset, column: str) -> np.ndarray:
    return np.asarray(dataset.with_format("arrow")[column].to_numpy(), dtype=np.int64)


def make_sides(tokenized, *, paired: bool) -> tuple[Side, Side]:
    """Sides A and B of a tokenized split (columns as made by ``tokenize_split``)."""
    def side(ids: str, prompt: str, rows: np.ndarray) -> Side:
        columns = tokenized.select_columns([ids, prompt])  # a row read then skips the other side
        return Side(columns, ids, prompt, rows, _lengths(tokenized, ids)[rows], _integers(tokenized, prompt)[rows])

    if paired:
        rows = np.arange(len(tokenized))
        return (side("chosen_input_ids", "chosen_prompt_len", rows),
                side("rejected_input_ids", "rejected_prompt_len", rows))
    labels = np.asarray(tokenized["label"], dtype=bool)
    return (side("input_ids", "prompt_len", np.flatnonzero(labels)),
            side("input_ids", "prompt_len", np.flatnonzero(~labels)))


class StepSampler:
    """Indices into sides A and B for optimizer step ``k`` (0-based), epoch by epoch without
    replacement (the module docstring says how); the samples left over at the end of an epoch are
    dropped. ``positive_fraction`` applies to unpaired data only (None: the data's own share)."""

    def __init__(self, n_a: int, n_b: int, global_batch: int, seed: int, *, paired: bool,
                 positive_fraction: float | None = None):
        if paired and n_a != n_b:
            raise ValueError(f"paired sides must have equal sizes, got {n_a} and {n_b}")
        if paired and positive_fraction is not None:
            raise ValueError("positive_fraction applies to unpaired data only")
        self.n_a, self.n_b, self.global_batch, self.seed, self.paired = n_a, n_b, global_batch, seed, paired
        # Samples per step: G pairs (2G rows), or 2G unpaired samples.
        self.rows_per_step = 2 * global_batch
        if paired:
            self.fraction = Fraction(1, 2)
            self.steps_per_epoch = n_a // global_batch
        else:
            given = positive_fraction is not None
            self.fraction = Fraction(positive_fraction) if given else Fraction(n_a, max(n_a + n_b, 1))
            self.steps_per_epoch = self._unpaired_steps_per_epoch()
        self._epoch: int | None = None
        self._perms: tuple[np.ndarray, np.ndarray] | None = None

    def _unpaired_steps_per_epoch(self) -> int:
        """The most steps t with ``P(t) <= n_a`` positives and ``2G t - P(t) <= n_b`` negatives."""
        f, rows = self.fraction, self.rows_per_step
        if not 0 < f < 1:
            return 0
        # floor(t rows f) <= n_a  <=>  t < (n_a + 1) / (rows f)
        # t rows - floor(t rows f) <= n_b  <=>  ceil(t rows (1 - f)) <= n_b  <=>  t rows (1 - f) <= n_b
        return min(math.ceil((self.n_a + 1) / (rows * f)) - 1, math.floor(self.n_b / (rows * (1 - f))))

    def positives_before(self, t: int) -> int:
        """``P(t)``: side-A samples drawn by the first ``t`` steps of an epoch."""
        return t * self.global_batch if self.paired else math.floor(t * self.rows_per_step * self.fraction)

    @property
    def fewest(self) -> tuple[int, int]:
        """The fewest side-A and side-B samples any step holds (floor and ceil of ``2G f`` occur)."""
        if self.paired:
            return self.global_batch, self.global_batch
        exact = self.rows_per_step * self.fraction
        return math.floor(exact), self.rows_per_step - math.ceil(exact)

    def locate(self, k: int) -> tuple[int, int]:
        """(epoch, step within the epoch) of step ``k``."""
        return divmod(k, self.steps_per_epoch)

    def _permutations(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch != self._epoch:
            perm_a = np.random.default_rng([self.seed, epoch, 0]).permutation(self.n_a)
            perm_b = perm_a if self.paired else np.random.default_rng([self.seed, epoch, 1]).permutation(self.n_b)
            self._epoch, self._perms = epoch, (perm_a, perm_b)
        return self._perms

    def step(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, t = self.locate(k)
        perm_a, perm_b = self._permutations(epoch)
        a0, a1 = self.positives_before(t), self.positives_before(t + 1)
        if self.paired:
            return perm_a[a0:a1], perm_b[a0:a1]
        rows = self.rows_per_step
        return perm_a[a0:a1], perm_b[t * rows - a0:(t + 1) * rows - a1]


def split_micro_batches(idx_a: np.ndarray, idx_b: np.ndarray, len_a: np.ndarray, len_b: np.ndarray, *,
                        micro_batch: int, world_size: int = 1, rank: int = 0, paired: bool = True,
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's micro-batches of one global batch, grouped by length.

    Paired: ``micro_batch`` pairs each, sorted by their longer side. Unpaired: ``2 x micro_batch``
    rows each; positives and negatives are sorted by length separately, and of the ``M`` micro-batches
    of the step, micro-batch ``j`` takes the positives ``floor(j n_a / M) .. floor((j+1) n_a / M) - 1``
    and fills its other rows with the next negatives: positives spread as evenly as counts allow (each
    micro-batch holds ``floor`` or ``ceil`` of ``n_a / M``), and which positive shares a micro-batch
    with which negative does not matter to a loss that sorts each side. Micro-batch ``j`` goes to
    rank ``j % world_size``, so ranks get micro-batches of similar length at each accumulation step.
    """
    if paired:
        if len(idx_a) != len(idx_b) or len(idx_a) % (micro_batch * world_size):
            raise ValueError(f"global batch of {len(idx_a)} pairs does not split into micro-batches of "
                             f"{micro_batch} on {world_size} rank(s)")
        order = np.argsort(np.maximum(len_a[idx_a], len_b[idx_b]), kind="stable")
        a, b = idx_a[order], idx_b[order]
        n_micro = len(a) // micro_batch
        cuts_a = cuts_b = np.arange(n_micro + 1) * micro_batch
    else:
        rows = 2 * micro_batch
        if (len(idx_a) + len(idx_b)) % (rows * world_size):
            raise ValueError(f"global batch of {len(idx_a) + len(idx_b)} samples does not split into micro-batches "
                             f"of {rows} rows on {world_size} rank(s)")
        a = idx_a[np.argsort(len_a[idx_a], kind="stable")]
        b = idx_b[np.argsort(len_b[idx_b], kind="stable")]
        n_micro = (len(a) + len(b)) // rows
        cuts_a = np.arange(n_micro + 1) * len(a) // n_micro
        cuts_b = np.arange(n_micro + 1) * rows - cuts_a
    return [(a[cuts_a[j]:cuts_a[j + 1]], b[cuts_b[j]:cuts_b[j + 1]]) for j in range(rank, n_micro, world_size)]


def kl_sources(idx_a: np.ndarray, idx_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """KTO's mismatched pairs of one global batch: ``(prompt side, prompt index, completion side,
    completion index)`` of the KL row at each position ``p`` of the batch.

    The batch is laid out as side A's samples in draw order, then side B's; the KL row at ``p`` is
    the prompt of sample ``p`` followed by the completion of sample ``p - 1`` (cyclically), TRL's
    rotation ``(x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1})``, here over the whole global batch. With
    paired data the two halves of a pair sit ``G`` positions apart, so for ``G >= 2`` no KL row gets
    its own prompt's answer (an interleaved layout would give every rejected row its own chosen one).
    """
    side = np.concatenate([np.zeros(len(idx_a), dtype=np.int64), np.ones(len(idx_b), dtype=np.int64)])
    index = np.concatenate([idx_a, idx_b]).astype(np.int64)
    return side, index, np.roll(side, 1), np.roll(index, 1)


def kl_row(sides: tuple[Side, Side], prompt: tuple[int, int], completion: tuple[int, int],
           max_length: int | None) -> tuple[list[int], int]:
    """``(ids, prompt_len)`` of one mismatched row: the prompt tokens of sample ``prompt`` (side,
    index) then the completion tokens of sample ``completion``, cut to ``max_length`` (but never
    below one completion token), as TRL concatenates prompt and KL completion ids and truncates."""
    ids_p, plen = sides[prompt[0]].get(prompt[1])
    ids_c, plen_c = sides[completion[0]].get(completion[1])
    ids = ids_p[:plen] + ids_c[plen_c:]
    return (ids if max_length is None else ids[:max(max_length, plen + 1)]), plen


class KLSide:
    """The mismatched rows of one epoch's steps, as a side: index ``t * 2G + p`` is the KL row at
    position ``p`` of step ``t`` of the epoch (what the reference precompute reads; see
    :func:`kl_sources`)."""

    def __init__(self, sides: tuple[Side, Side], sampler: StepSampler, epoch: int, max_length: int | None):
        self.sides, self.max_length = sides, max_length
        first = epoch * sampler.steps_per_epoch
        parts = [kl_sources(*sampler.step(first + t)) for t in range(sampler.steps_per_epoch)]
        self.prompt_side, self.prompt_index, self.completion_side, self.completion_index = (
            np.concatenate([part[i] for part in parts]) for i in range(4))
        prompt_lens = _lookup([side.prompt_lengths for side in sides], self.prompt_side, self.prompt_index)
        completion_lens = _lookup([side.lengths - side.prompt_lengths for side in sides], self.completion_side,
                                  self.completion_index)
        self.lengths = prompt_lens + completion_lens
        if max_length is not None:
            self.lengths = np.minimum(self.lengths, np.maximum(max_length, prompt_lens + 1))

    def __len__(self) -> int:
        return len(self.lengths)

    def get(self, index: int) -> tuple[list[int], int]:
        return kl_row(self.sides, (int(self.prompt_side[index]), int(self.prompt_index[index])),
                      (int(self.completion_side[index]), int(self.completion_index[index])), self.max_length)


def _lookup(per_side: list[np.ndarray], side: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``per_side[side[p]][index[p]]`` for every p."""
    out = np.empty(len(side), dtype=np.int64)
    for s, values in enumerate(per_side):
        out[side == s] = values[index[side == s]]
    return out


@dataclass
class KLRows:
    """KTO's mismatched rows of a micro-batch (one per sample, in the micro-batch's row order),
    right-padded; ``positions`` are their places in the step's global batch, ``ref`` their
    reference log-probs once known."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    positions: np.ndarray
    ref: torch.Tensor | None = None

    def to(self, device) -> KLRows:
        return KLRows(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                      self.positions, None if self.ref is None else self.ref.to(device))


@dataclass
class MicroBatch:
    """Chosen/positive rows then rejected/negative rows, right-padded to the longest row.

    ``ref_a``/``ref_b`` are the reference log-probs of the two halves when precomputed; ``kl`` the
    mismatched rows of KTO; ``padding_free``: forwards pack the rows (``--padding-free``). Unpaired
    micro-batches may hold more rows of one side than of the other.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    idx_a: np.ndarray
    idx_b: np.ndarray
    ref_a: torch.Tensor | None = None
    ref_b: torch.Tensor | None = None
    kl: KLRows | None = None
    padding_free: bool = False

    @property
    def n_a(self) -> int:
        """Side-A rows (the first ``n_a`` rows)."""
        return len(self.idx_a)

    @property
    def n_rows(self) -> int:
        return len(self.idx_a) + len(self.idx_b)

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device) -> MicroBatch:
        move = (lambda t: None if t is None else t.to(device))
        return replace(self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                       labels=self.labels.to(device), ref_a=move(self.ref_a), ref_b=move(self.ref_b),
                       kl=None if self.kl is None else self.kl.to(device))


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


def step_micro_batches(sides: tuple[Side, Side], sampler: StepSampler, k: int, *, micro_batch: int, pad_id: int,
                       rank: int = 0, world_size: int = 1, ref: tuple[torch.Tensor, torch.Tensor] | None = None,
                       kl: bool = False, kl_ref: dict[int, torch.Tensor] | None = None,
                       max_length: int | None = None, padding_free: bool = False) -> list[MicroBatch]:
    """This rank's micro-batches of step ``k``, with the precomputed reference log-probs (``ref``:
    side A, side B) and, for KTO (``kl``), the mismatched rows of their samples and, when
    precomputed, those rows' reference log-probs (``kl_ref``: epoch -> :class:`KLSide` values);
    ``padding_free`` marks them for packed forwards (:mod:`aot_cli.train.packing`)."""
    idx_a, idx_b = sampler.step(k)
    splits = split_micro_batches(idx_a, idx_b, sides[0].lengths, sides[1].lengths, micro_batch=micro_batch,
                                 world_size=world_size, rank=rank, paired=sampler.paired)
    ref_a, ref_b = ref if ref is not None else (None, None)
    batches = [replace(make_micro_batch(*sides, a, b, pad_id, ref_a, ref_b), padding_free=padding_free)
               for a, b in splits]
    if not kl:
        return batches
    prompt_side, prompt_index, completion_side, completion_index = kl_sources(idx_a, idx_b)
    position = {(int(s), int(i)): p for p, (s, i) in enumerate(zip(prompt_side, prompt_index))}
    epoch, t = sampler.locate(k)
    for batch in batches:
        positions = np.array([position[0, int(i)] for i in batch.idx_a] + [position[1, int(i)] for i in batch.idx_b])
        rows = [kl_row(sides, (prompt_side[p], prompt_index[p]), (completion_side[p], completion_index[p]), max_length)
                for p in positions]
        values = None if kl_ref is None else kl_ref[epoch][t * sampler.rows_per_step + positions]
        batch.kl = KLRows(*collate(rows, pad_id), positions, values)
    return batches
