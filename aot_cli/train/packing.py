"""Padding-free micro-batches (``--padding-free``): the rows of a micro-batch packed into one sequence.

Why: a micro-batch padded to its longest row computes every position of every row, and chosen and
rejected answers often differ in length, so on real data a large share of the positions a padded
forward computes are padding. Packed, the attended tokens of the rows lie end to end in one
sequence ``[1, N]`` (N = the micro-batch's token count) and every position computed is a token.

What keeps the values those of the padded layout:

- position ids restart at 0 at the start of each row, so rotary embeddings see what they see padded;
- no attention mask is passed, so transformers reads the restarts of the position ids as packed
  sequences and attends block-diagonally causally (a token sees only the earlier tokens of its own
  row): ``flash_attention_2`` through its varlen kernel (``cu_seqlens``, no wasted work), sdpa,
  eager and flex attention through a block-diagonal causal mask (``[N, N]``: the attention itself
  then costs more than the padded rows' ``R x T^2``, which is why packing is opt-in without flash
  attention, docs/performance.md);
- the labels of row ``r`` are placed at its packed positions and IGNORE_INDEX elsewhere: labels
  ``[R, N]`` for the one sequence ``[1, N]``; :func:`aot_cli.train.logprobs.sequence_logps` reads
  a single sequence's hidden states for each row of such labels, so the sum over row ``r``'s
  completion tokens is row ``r``'s log-prob, as padded. The last token of a row has no label (the
  label convention), so no position predicts across a row boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aot_cli.train.logprobs import IGNORE_INDEX, model_sequence_logps
from aot_cli.vocab import PADDING_FREE_ATTENTION


@dataclass(frozen=True)
class Packed:
    """One packed sequence: ``input_ids`` and ``position_ids`` ``[1, N]``, ``labels`` ``[R, N]``."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> Packed:
    """Pack padded rows ``[R, T]`` (left or right padding: a row's attended tokens are contiguous).

    Row ``r``'s attended tokens keep their order and come after row ``r - 1``'s; its labels (made
    by :func:`aot_cli.train.logprobs.build_labels` on the padded rows, so each names the next
    attended token of the same row or is IGNORE_INDEX) move with their tokens.
    """
    attended = attention_mask.bool()
    row = attended.nonzero()[:, 0]
    n = row.numel()
    position_ids = (attended.long().cumsum(-1) - 1)[attended]
    packed_labels = torch.full((input_ids.shape[0], n), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
    packed_labels[row, torch.arange(n, device=labels.device)] = labels[attended]
    return Packed(input_ids[attended][None], position_ids[None], packed_labels)


def useful_fraction(attention_mask: torch.Tensor) -> float:
    """Tokens over the positions a padded forward of these rows computes (1.0 once packed)."""
    return float(attention_mask.sum()) / attention_mask.numel()


def packed_sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *,
                          chunk_size: int | None = 1024) -> torch.Tensor:
    """Float32 ``[R]`` completion log-probs of padded rows, computed in one packed forward: the
    values of :func:`aot_cli.train.logprobs.model_sequence_logps` on the padded rows."""
    packed = pack(input_ids, attention_mask, labels)
    return model_sequence_logps(model, packed.input_ids, None, packed.labels, chunk_size=chunk_size,
                                position_ids=packed.position_ids)


def attention_implementation(model) -> str | None:
    """The attention kernel the (possibly wrapped) model runs."""
    inner = model
    while isinstance(getattr(inner, "module", None), torch.nn.Module):  # DDP / accelerate wrappers
        inner = inner.module
    return getattr(inner.config, "_attn_implementation", None)


def resolve(setting: str, model) -> bool:
    """``--padding-free``: on, off, or auto (on where the kernel attends varlen, i.e. skips the work
    between rows: flash attention; off elsewhere, where the packed mask costs more than padding)."""
    if setting == "auto":
        return attention_implementation(model) in PADDING_FREE_ATTENTION
    return setting == "on"
