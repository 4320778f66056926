"""aot_cli.train.logprobs: label shift, chunked log-probs equal the plain ones (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from aot_cli.train import logprobs
from aot_cli.train.logprobs import (
    IGNORE_INDEX,
    build_labels,
    model_sequence_logps,
    plain_sequence_logps,
    sequence_logps,
)

B, T, H, V = 3, 7, 8, 11


def test_build_labels_right_and_left_padding():
    # right padding: prompt [5, 6], completion [7, 8], pad; position t predicts token t + 1
    labels = build_labels(torch.tensor([[5, 6, 7, 8, 0]]), torch.tensor([[1, 1, 1, 1, 0]]), [2])
    assert labels.tolist() == [[IGNORE_INDEX, 7, 8, IGNORE_INDEX, IGNORE_INDEX]]
    # left padding: the prompt length counts attended tokens only
    labels = build_labels(torch.tensor([[0, 5, 6, 7, 8]]), torch.tensor([[0, 1, 1, 1, 1]]), torch.tensor([2]))
    assert labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX]]


def _case(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen, dtype=dtype)
    weight = torch.randn(V, H, generator=gen, dtype=dtype)
    bias = torch.randn(V, generator=gen, dtype=dtype)
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[0, :3] = IGNORE_INDEX  # prompt
    labels[1, 5:] = IGNORE_INDEX  # padding
    labels[2, :] = IGNORE_INDEX  # no completion token at all
    return hidden, weight, bias, labels


def test_plain_sequence_logps_hand_numbers():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[0, 1, IGNORE_INDEX]])
    expected = torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.8))
    assert plain_sequence_logps(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 100])
@pytest.mark.parametrize("with_bias", [True, False])
def test_chunked_values_and_gradients_equal_plain(chunk_size, with_bias):
    hidden, weight, bias, labels = _case()
    bias = bias if with_bias else None
    leaves = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
    g = torch.tensor([0.3, -1.7, 2.0], dtype=torch.float64)

    chunked = sequence_logps(leaves[0], leaves[1], labels, lm_head_bias=leaves[2] if with_bias else None,
                             chunk_size=chunk_size)
    chunked_grads = torch.autograd.grad((chunked * g).sum(), leaves)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    logits = ref_leaves[0] @ ref_leaves[1].T + (ref_leaves[2] if with_bias else 0)
    plain = plain_sequence_logps(logits, labels)
    plain_grads = torch.autograd.grad((plain * g).sum(), ref_leaves)

    assert chunked.dtype == torch.float32
    assert torch.allclose(chunked, plain, atol=1e-5)
    assert chunked[2].item() == 0.0  # zero valid tokens -> 0
    for got, want in zip(chunked_grads, plain_grads):
        assert torch.allclose(got, want, atol=1e-5)


def test_masked_positions_change_nothing():
    hidden, weight, _, labels = _case(dtype=torch.float32)
    hidden = hidden.requires_grad_()
    out = sequence_logps(hidden, weight, labels, chunk_size=2)
    (grad,) = torch.autograd.grad(out.sum(), hidden)
    masked = labels == IGNORE_INDEX
    assert bool((grad[masked] == 0).all()) and bool((grad[~masked] != 0).any())
    changed = hidden.detach().clone()
    changed[masked] = 1e3
    assert torch.equal(sequence_logps(changed, weight, labels, chunk_size=2), out.detach())


def test_batch_without_completion_tokens_gives_zeros_and_zero_gradients():
    hidden, weight, _, labels = _case(dtype=torch.float32)
    hidden = hidden.requires_grad_()
    out = sequence_logps(hidden, weight, torch.full_like(labels, IGNORE_INDEX))
    out.sum().backward()
    assert out.tolist() == [0.0, 0.0, 0.0] and bool((hidden.grad == 0).all())


def test_frozen_head_gets_no_gradient():
    hidden, weight, _, labels = _case(dtype=torch.float32)
    hidden = hidden.requires_grad_()
    sequence_logps(hidden, weight, labels, chunk_size=3).sum().backward()
    assert hidden.grad is not None and weight.grad is None


def test_bfloat16_and_autocast_use_the_heads_numerics():
    hidden, weight, _, labels = _case(dtype=torch.float32)
    h16, w16 = hidden.bfloat16(), weight.bfloat16()
    plain = plain_sequence_logps(h16 @ w16.T, labels)
    assert torch.allclose(sequence_logps(h16, w16, labels, chunk_size=3), plain, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = plain_sequence_logps(hidden @ weight.T, labels)
        chunked = sequence_logps(hidden, weight, labels, chunk_size=3)
    assert torch.allclose(chunked, plain, atol=1e-4)


def _tiny_llama(tie: bool, cls=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    return (cls or LlamaForCausalLM)(config).eval()


def _batch():
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 100, (3, 9), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    labels = build_labels(input_ids, attention_mask, [3, 2, 9])
    return input_ids, attention_mask, labels


@pytest.mark.parametrize("tie", [True, False])
def test_model_sequence_logps_matches_full_logits(tie):
    model = _tiny_llama(tie)
    input_ids, attention_mask, labels = _batch()
    head_outputs = []
    handle = model.lm_head.register_forward_hook(lambda m, i, out: head_outputs.append(out.shape))
    chunked = model_sequence_logps(model, input_ids, attention_mask, labels, chunk_size=4)
    handle.remove()
    assert head_outputs == [(3, 1, 100)]  # the head ran once, on the last position only (never all of them)
    chunked.sum().backward()
    chunked_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    plain = plain_sequence_logps(logits, labels)
    plain.sum().backward()

    assert torch.allclose(chunked, plain, atol=1e-5)
    assert chunked[2].item() == 0.0  # prompt fills the row: no completion token
    for name, p in model.named_parameters():
        assert torch.allclose(chunked_grads[name], p.grad, atol=1e-5), name


def test_head_of_a_linear_subclass_takes_the_chunked_path(monkeypatch):
    """FSDP2 turns the head into an ``FSDPLinear``, a subclass of ``nn.Linear``: still the chunked head."""
    model = _tiny_llama(tie=False)
    model.lm_head.__class__ = type("FSDPLinear", (torch.nn.Linear,), {})
    seen = []
    chunked_head = logprobs.sequence_logps
    monkeypatch.setattr(logprobs, "sequence_logps", lambda h, w, *a, **k: seen.append(w) or chunked_head(h, w, *a, **k))
    input_ids, attention_mask, labels = _batch()
    chunked = model_sequence_logps(model, input_ids, attention_mask, labels, chunk_size=4)
    assert seen == [model.lm_head.weight]
    with torch.no_grad():
        plain = plain_sequence_logps(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    assert torch.allclose(chunked, plain, atol=1e-5)


def test_model_sequence_logps_through_peft():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(tie=False), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    input_ids, attention_mask, labels = _batch()
    chunked = model_sequence_logps(model, input_ids, attention_mask, labels, chunk_size=4)
    with torch.no_grad():
        plain = plain_sequence_logps(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    assert torch.allclose(chunked, plain, atol=1e-5)
    chunked.sum().backward()  # the frozen head is skipped, LoRA weights get gradients
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_model_that_rescales_logits_falls_back_to_the_plain_path():
    from transformers import LlamaForCausalLM

    class DoubledLogits(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = 2 * out.logits
            return out

    model = _tiny_llama(tie=False, cls=DoubledLogits)
    input_ids, attention_mask, labels = _batch()
    with torch.no_grad():
        got = model_sequence_logps(model, input_ids, attention_mask, labels, chunk_size=4)
        want = plain_sequence_logps(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
        assert torch.allclose(got, want, atol=1e-5)
        model.config.final_logit_softcapping = 30.0  # a known post-processing: plain path up front
        assert torch.allclose(model_sequence_logps(model, input_ids, attention_mask, labels), want, atol=1e-5)


def test_chunk_size_zero_and_sharded_heads_take_the_plain_path():
    """``--logps-chunk-size 0`` runs the model's own head (FSDP / ZeRO-3, where the head weight is only
    whole inside its forward); a head whose weight is not a whole ``[out, in]`` matrix is never chunked."""
    from aot_cli.train.logprobs import _plain_linear_head

    model = _tiny_llama(tie=False)
    input_ids, attention_mask, labels = _batch()
    head_outputs = []
    handle = model.lm_head.register_forward_hook(lambda m, i, out: head_outputs.append(out.shape))
    with torch.no_grad():
        got = model_sequence_logps(model, input_ids, attention_mask, labels, chunk_size=0)
        want = plain_sequence_logps(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    handle.remove()
    assert head_outputs[0] == (3, 9, 100) and torch.allclose(got, want)
    sharded = torch.nn.Linear(32, 100, bias=False)
    sharded.weight = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves outside the forward
    assert _plain_linear_head(model.lm_head) and not _plain_linear_head(sharded)


def test_autocast_forward_keeps_the_chunked_path():
    """A forward wrapped in autocast (accelerate's mixed precision, bf16 full fine-tuning) runs its head in
    bf16: the chunked head must use the same numerics, not fall back to a second, full-logits forward."""
    model = _tiny_llama(tie=False)
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    input_ids, attention_mask, labels = _batch()
    head_outputs = []
    handle = model.lm_head.register_forward_hook(lambda m, i, out: head_outputs.append(tuple(out.shape)))
    got = model_sequence_logps(model, input_ids, attention_mask, labels, chunk_size=4)
    handle.remove()
    assert (3, 9, 100) not in head_outputs  # the full logits were never computed
    with torch.no_grad():
        want = plain_sequence_logps(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    assert torch.allclose(got.detach(), want, atol=2e-2)
    got.sum().backward()
    assert model.lm_head.weight.grad.dtype == torch.float32 and model.lm_head.weight.grad.abs().sum() > 0


def test_logit_budget_caps_the_chunk_and_keeps_the_values(monkeypatch):
    """A budget of 3 x V logits per chunk: chunks of 3 tokens even when 100 are asked, and the same
    values and gradients as one 100-token chunk (9 valid positions: chunks of 3, 3, 3)."""
    hidden, weight, _, labels = _case()
    leaves = [t.clone().requires_grad_() for t in (hidden, weight)]
    whole = sequence_logps(*leaves, labels, chunk_size=100)
    whole_grads = torch.autograd.grad(whole.sum(), leaves)
    sizes = []
    original = logprobs._chunk_logits
    monkeypatch.setattr(logprobs, "_chunk_logits", lambda h, w, b: sizes.append(len(h)) or original(h, w, b))
    monkeypatch.setattr(logprobs, "LOGITS_PER_CHUNK", 3 * V + 2)
    capped = sequence_logps(*leaves, labels, chunk_size=100)
    capped_grads = torch.autograd.grad(capped.sum(), leaves)
    assert sizes == [3, 3, 3] * 2  # forward, then backward
    assert torch.allclose(capped, whole, atol=1e-6)
    for got, want in zip(capped_grads, whole_grads):
        assert torch.allclose(got, want, atol=1e-6)
