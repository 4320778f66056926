"""Per-sequence summed log-probs of completion tokens, without the full ``[batch, seq, vocab]`` logits.

Label convention (one place, so callers never get the shift wrong): ``labels`` has the shape of
``input_ids``; ``labels[b, t]`` is the token at position ``t + 1`` when that token is a completion
token, else ``IGNORE_INDEX`` (-100; prompt, padding and the last position). The logits, or final
hidden state, at position ``t`` predict ``labels[b, t]``. :func:`build_labels` makes such labels.

Why chunking: with a 128k vocabulary the float32 logits of a micro-batch are the memory peak of
preference training (16k tokens x 128k x 4 bytes = 8 GB, twice that with their gradient).
:func:`sequence_logps` keeps only the positions that count (prompt and padding are skipped, which
also saves their head FLOPs) and computes ``logits = h @ W^T`` for ``chunk_size`` tokens at a time,
in forward *and* backward, so at most one ``[chunk_size, vocab]`` float32 block exists at once; a chunk
holds at most :data:`LOGITS_PER_CHUNK` logits whatever ``chunk_size`` asks.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor

IGNORE_INDEX = -100
# At most this many logits per chunk (32 MiB in float32): a memory budget, so a large vocabulary gets short chunks
# (256 tokens at 32k, 64 at 128k) and a small one long ones; smaller blocks also stay in cache (docs/performance.md).
LOGITS_PER_CHUNK = 2**23


def build_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lens: torch.Tensor | list[int]
) -> torch.Tensor:
    """Shifted labels that count only completion tokens (see the module docstring).

    ``prompt_lens[b]`` is the number of prompt tokens of row ``b``, counted among its attended
    tokens, so left and right padding both work: the completion is every attended token after the
    first ``prompt_lens[b]`` attended ones.
    """
    prompt_lens = torch.as_tensor(prompt_lens, device=input_ids.device)
    attended = attention_mask.bool()
    rank = attended.long().cumsum(-1) - 1
    completion = attended & (rank >= prompt_lens[:, None])
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = torch.where(completion[:, 1:], input_ids[:, 1:], IGNORE_INDEX)
    return labels


def plain_sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference implementation from full logits ``[B, T, V]``: float32 ``[B]`` sums of
    ``log_softmax(logits)[b, t, labels[b, t]]`` over positions where ``labels != IGNORE_INDEX``."""
    mask = labels != IGNORE_INDEX
    if logits.shape[0] == 1 < labels.shape[0]:  # one packed sequence, labels per row: gather, never broadcast
        rows, cols = mask.nonzero(as_tuple=True)
        token_logps = torch.log_softmax(logits[0, cols].float(), dim=-1).gather(-1, labels[rows, cols, None])
        return torch.zeros(labels.shape[0], device=logits.device).index_add(0, rows, token_logps.squeeze(-1))
    logps = torch.log_softmax(logits.float(), dim=-1)
    token_logps = logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, token_logps, 0.0).sum(-1)


def sequence_logps(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    lm_head_bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Float32 ``[B]`` sums of completion-token log-probs from final hidden states ``[B, T, H]``
    (after the final norm, i.e. the input of the LM head) and the head weight ``[V, H]``.

    Equals ``plain_sequence_logps(hidden_states @ W.T + b, labels)`` with the same numerics as
    the model's own head: the matmul runs in the model's (or autocast's) dtype and log-softmax in
    float32. Gradients reach ``hidden_states``, and ``lm_head_weight``/``lm_head_bias`` when they
    require grad (full fine-tuning, tied or untied embeddings); with LoRA the head is frozen and
    its gradient is skipped.

    One packed sequence (hidden states ``[1, T, H]``) with labels ``[R, T]`` gives ``[R]`` sums,
    row ``r`` counting the positions its labels name (:mod:`aot_cli.train.packing`).
    """
    if (hidden_states.dim() != 3 or labels.shape[1] != hidden_states.shape[1]
            or hidden_states.shape[0] not in (1, labels.shape[0])):
        raise ValueError(
            f"expected hidden_states [B, T, H] and labels [B, T] (or [1, T, H] and [R, T]); got "
            f"{tuple(hidden_states.shape)} and {tuple(labels.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    chunk_size = min(chunk_size, max(1, LOGITS_PER_CHUNK // lm_head_weight.shape[0]))
    mask = labels != IGNORE_INDEX
    rows, cols = mask.nonzero(as_tuple=True)
    token_logps = _ChunkedTokenLogps.apply(
        hidden_states[rows if hidden_states.shape[0] > 1 else 0, cols], lm_head_weight, lm_head_bias,
        labels[rows, cols], chunk_size
    )
    out = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden_states.device)
    return out.index_add(0, rows, token_logps)


def model_sequence_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_size: int | None = 1024,
    **forward_kwargs,
) -> torch.Tensor:
    """Float32 ``[B]`` completion log-probs of a Hugging Face causal LM (also peft- or DDP-wrapped).

    ``forward_kwargs`` go to the model's forward (``position_ids`` of a packed sequence, whose
    ``attention_mask`` is None and labels ``[R, T]``: :mod:`aot_cli.train.packing`).

    The model's own ``forward`` runs (so DDP and peft see a normal call), with a forward pre-hook on
    the output embedding that records the head's input, the final hidden states, and hands the head
    only the last position: the full logits are never computed. Then :func:`sequence_logps`
    gathers the log-probs in chunks.

    Falls back to the plain full-logits path (correct, not lean) when the chunked one would be
    wrong: ``chunk_size`` None or 0; a head that is not a plain floating-point ``nn.Linear`` (LoRA on the
    head, quantized head); a model that post-processes logits (Gemma-2 ``final_logit_softcapping``,
    Cohere ``logit_scale``, Granite ``logits_scaling``, or any model whose returned last-position
    logits differ from ``head(hidden)``).

    Under FSDP2 the head is an ``FSDPLinear`` (a subclass of ``nn.Linear``) whose weight is a
    sharded ``DTensor`` except while its unit is gathered. accelerate's layout keeps the unit of the
    final norm and the head gathered from its forward until the backward, so after the forward the
    weight is the whole plain matrix and the chunked path uses it (its gradient reaches the shards
    through FSDP's reduce-scatter). A head still sharded after the forward (a unit resharded after
    its forward) takes the plain path, as does ZeRO-3's (only its own forward sees it whole).
    """
    inner = model
    while isinstance(getattr(inner, "module", None), torch.nn.Module):  # DDP / accelerate wrappers
        inner = inner.module
    head = inner.get_output_embeddings()
    if not chunk_size or not _plain_linear_head(head) or _postprocesses_logits(inner.config):
        return _plain_model_logps(model, input_ids, attention_mask, labels, forward_kwargs)

    captured: list[torch.Tensor] = []
    head_autocast: list[torch.dtype | None] = []

    def keep_last_position(module, args):
        captured.append(args[0])
        device_type = args[0].device.type
        head_autocast.append(torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None)
        return (args[0][:, -1:, :],)

    handle = head.register_forward_pre_hook(keep_last_position)
    try:
        last_logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                            **forward_kwargs).logits
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected the output head to run once per forward; it ran {len(captured)} times")
    if isinstance(head.weight, DTensor):  # resharded after its forward: only the forward saw it whole
        return _plain_model_logps(model, input_ids, attention_mask, labels)
    hidden, dtype = captured[0], head_autocast[0]
    # The head ran under the forward's autocast (accelerate's mixed precision, bf16 --full): so do we.
    with torch.autocast(hidden.device.type, dtype=dtype, enabled=dtype is not None):
        with torch.no_grad():  # the head's own computation, without calling it: FSDP2 hooks its call
            expected = torch.nn.functional.linear(hidden[:, -1:, :], head.weight, head.bias).float()
        if not torch.allclose(last_logits.detach().float(), expected, rtol=1e-3, atol=1e-3):
            # The model changes logits after its head in a way we do not know: stay correct.
            return _plain_model_logps(model, input_ids, attention_mask, labels, forward_kwargs)
        return sequence_logps(hidden, head.weight, labels, lm_head_bias=head.bias, chunk_size=chunk_size)


def _plain_model_logps(model, input_ids, attention_mask, labels, forward_kwargs) -> torch.Tensor:
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **forward_kwargs).logits
    return plain_sequence_logps(logits, labels)


def _plain_linear_head(head) -> bool:
    # isinstance: FSDP2 subclasses the head's class. A weight that is not the whole [out, in] matrix is a
    # ZeRO-3 shard (a DTensor shows its whole shape; model_sequence_logps checks it after the forward).
    # Any ZeRO-3 parameter (ds_id), even one kept whole: DeepSpeed's backward hooks expect the head's
    # output in the graph, and releasing the head without it stops the backward.
    return (isinstance(head, torch.nn.Linear) and head.weight.is_floating_point()
            and tuple(head.weight.shape) == (head.out_features, head.in_features)
            and not hasattr(head.weight, "ds_id"))


def _postprocesses_logits(config) -> bool:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(
        getattr(config, "final_logit_softcapping", None)
        or getattr(config, "logit_scale", None) not in (None, 1, 1.0)
        or getattr(config, "logits_scaling", None) not in (None, 1, 1.0)
    )


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the model's own head matmul would use: autocast's when autocast is on."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = (h @ weight.t()).float()
    return logits if bias is None else logits + bias.float()


class _ChunkedTokenLogps(torch.autograd.Function):
    """``log_softmax(h @ W^T + b)[i, target_i]`` for flat valid positions ``h [N, H]``, chunk by chunk.

    A custom Function rather than ``torch.utils.checkpoint`` per chunk, for the lower peak: forward
    keeps only the ``[N]`` log-sum-exps; backward recomputes one chunk's logits and turns them *in
    place* into ``d logp / d logits = onehot(target) - softmax``, so one ``[chunk, V]`` float32 block
    lives at a time (checkpoint would hold the logits, log-softmax output and its gradient, 3 such
    blocks), and ``grad W`` accumulates with ``addmm_`` straight into one ``[V, H]`` buffer instead
    of autograd summing a fresh ``[V, H]`` gradient per chunk. Gradients:
    ``grad h = (g * (onehot - p)) @ W``, ``grad W = sum_chunks (g * (onehot - p))^T @ h``,
    ``grad b = sum_chunks sum_rows g * (onehot - p)``. ``grad W`` accumulates in ``W``'s dtype
    (bf16 chunk sums when the head is bf16, as bf16 training stores that gradient anyway).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        dtype = _compute_dtype(hidden, weight)
        w = weight.to(dtype)
        n = hidden.shape[0]
        token_logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            logits = _chunk_logits(hidden[start:end].to(dtype), w, bias)
            lse[start:end] = torch.logsumexp(logits, dim=-1)
            token_logps[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1) - lse[start:end]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size, ctx.dtype = chunk_size, dtype
        return token_logps

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype, chunk_size = ctx.dtype, ctx.chunk_size
        w = weight.to(dtype)
        grad_out = grad_out.float()
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end].to(dtype)
            g_rows = grad_out[start:end]
            grad_logits = _chunk_logits(h, w, bias)
            grad_logits.sub_(lse[start:end, None]).exp_().mul_(-g_rows[:, None])
            grad_logits[torch.arange(end - start, device=h.device), targets[start:end]] += g_rows
            if need_b:
                grad_b += grad_logits.sum(0)
            grad_logits = grad_logits.to(dtype)
            if need_h:
                grad_h[start:end] = grad_logits @ w
            if need_w:
                if grad_w.dtype == dtype:
                    grad_w.addmm_(grad_logits.t(), h)
                else:  # fp32 master weights under autocast: low-precision GEMM, then accumulate
                    grad_w += grad_logits.t() @ h
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None
