"""Padding-free micro-batches (``--padding-free``): the rows of a micro-batch packed into one sequence.

Why: a micro-batch padded to its longest row computes every position of every row, and chosen and
rejected answers often differ in length, so on real data a large share of the positions a padded
forward computes are padding. Packed, the attended tokens of the rows lie end to end in one
sequence ``[1, N]`` (N = the micro-batch's token count) and every position computed is a token.

What keeps the values those of the padded layout:

- position ids restart at 0 at the start of each row, so rotary embeddings see what they see padded;
- attention stays within a row (block-diagonal causal). ``flash_attention_2``/``3`` get the rows'
  boundaries (``cu_seq_lens``) and run their varlen kernels. ``sdpa`` runs one causal SDPA call per
  row (:func:`packed_sdpa`, which this module registers in place of transformers' sdpa: it is that
  function unless ``cu_seq_lens_q`` is passed, which only packed forwards do), so attention costs
  the rows' ``sum L_r^2``, never ``N^2``; it stays in force when gradient checkpointing replays the
  forward in backward. Any other kernel (eager, flex, or sdpa with a sliding window shorter than a
  row) attends through the block-diagonal causal ``[N, N]`` mask transformers builds from the
  restarting position ids (correct, but that attention costs more than padding);
- the labels of row ``r`` are placed at its packed positions and IGNORE_INDEX elsewhere: labels
  ``[R, N]`` for the one sequence ``[1, N]``; :func:`aot_cli.train.logprobs.sequence_logps` reads
  a single sequence's hidden states for each row of such labels, so the sum over row ``r``'s
  completion tokens is row ``r``'s log-prob, as padded. The last token of a row has no label (the
  label convention), so no position predicts across a row boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from aot_cli.train.logprobs import IGNORE_INDEX, model_sequence_logps
from aot_cli.vocab import PADDING_FREE_ATTENTION


@dataclass(frozen=True)
class Packed:
    """One packed sequence: ``input_ids`` and ``position_ids`` ``[1, N]``, ``labels`` ``[R, N]``,
    and the rows' boundaries ``cu_seqlens`` ``[R + 1]`` (int32, flash attention's convention: row
    ``r`` is ``cu_seqlens[r]:cu_seqlens[r + 1]``)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    cu_seqlens: torch.Tensor

    @property
    def longest(self) -> int:
        return int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max())


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
    cu_seqlens = torch.nn.functional.pad(attended.sum(-1).cumsum(0), (1, 0)).to(torch.int32)
    return Packed(input_ids[attended][None], position_ids[None], packed_labels, cu_seqlens)


def packed_sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *,
                          chunk_size: int | None = 1024) -> torch.Tensor:
    """Float32 ``[R]`` completion log-probs of padded rows, computed in one packed forward: the
    values of :func:`aot_cli.train.logprobs.model_sequence_logps` on the padded rows."""
    packed = pack(input_ids, attention_mask, labels)
    varlen = {"cu_seq_lens_q": packed.cu_seqlens, "cu_seq_lens_k": packed.cu_seqlens,
              "max_length_q": packed.longest, "max_length_k": packed.longest}
    return model_sequence_logps(model, packed.input_ids, None, packed.labels, chunk_size=chunk_size,
                                position_ids=packed.position_ids, **varlen)


def packed_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, but for a packed sequence (``cu_seq_lens_q`` given) causal
    attention within each row, one SDPA call per row: the dense block-diagonal mask transformers
    built is not used. A sliding window shorter than the longest row, or logit softcapping, keeps
    transformers' path (its mask has them)."""
    bounds, window = kwargs.get("cu_seq_lens_q"), kwargs.get("sliding_window")
    if bounds is None or kwargs.get("softcap") or (window is not None and window < kwargs["max_length_q"]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return rows_sdpa(query, key, value, bounds.tolist(), dropout=kwargs.get("dropout", 0.0),
                     scale=kwargs.get("scaling")), None


def rows_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: list[int], *, dropout: float,
              scale: float | None) -> torch.Tensor:
    """Causal attention of each row ``bounds[r]:bounds[r + 1]`` of one packed sequence: ``query``
    ``[1, heads, N, dim]``, ``key``/``value`` ``[1, kv_heads, N, dim]``; returns ``[1, N, heads, dim]``
    as transformers' attention functions do."""
    gqa = query.shape[1] != key.shape[1]
    rows = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], dropout_p=dropout, is_causal=True,
        scale=scale, enable_gqa=gqa) for start, end in zip(bounds[:-1], bounds[1:])]
    return torch.cat(rows, dim=2).transpose(1, 2).contiguous()


AttentionInterface.register("sdpa", packed_sdpa)


def _inner(model):
    """The model under DDP / accelerate wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def attention_implementation(model) -> str | None:
    """The attention kernel the (possibly wrapped) model runs."""
    return getattr(_inner(model).config, "_attn_implementation", None)


def resolve(setting: str, model) -> bool:
    """``--padding-free``: on, off, or auto: on with flash attention (its varlen kernels skip the work
    between rows) and with sdpa on the CPU (one call per row; measured faster and leaner than padding:
    docs/performance.md); off elsewhere (sdpa on a GPU, one kernel launch per row and layer, is not
    measured; eager and flex attention take a dense mask that costs more than the padding)."""
    if setting == "auto":
        kernel = attention_implementation(model)
        on_cpu = next(_inner(model).parameters()).device.type == "cpu"
        return kernel in PADDING_FREE_ATTENTION or (kernel == "sdpa" and on_cpu)
    return setting == "on"
