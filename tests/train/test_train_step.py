"""The global-scope step is the exact gradient of the loss over the whole global batch.

A tiny in-memory Llama and random token rows; reference log-probs are random numbers, so the policy
and reference rank the samples differently and the sort set matters (with the policy equal to the
reference, paired AOT reduces to DPO and every scope gives the same gradient).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aot_cli.losses import preference_loss
from aot_cli.train.batching import MicroBatch, collate
from aot_cli.train.step import global_scope_step, micro_scope_step, policy_logps

G = 16


def _model(dropout: float = 0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_dropout=dropout)
    return LlamaForCausalLM(config).train()


def _rows(seed: int):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(2 * G):
        n = int(rng.integers(6, 13))
        rows.append((rng.integers(1, 64, n).tolist(), int(rng.integers(2, 5))))
    refs = torch.tensor(rng.normal(-60, 8, 2 * G), dtype=torch.float32)
    return rows[:G], rows[G:], refs[:G], refs[G:]


def _micro_batches(micro: int, seed: int = 0, start: int = 0, count: int = G) -> list[MicroBatch]:
    rows_a, rows_b, ref_a, ref_b = _rows(seed)
    batches = []
    for lo in range(start, start + count, micro):
        idx = np.arange(lo, lo + micro)
        ids, mask, labels = collate([rows_a[i] for i in idx] + [rows_b[i] for i in idx], pad_id=0)
        batches.append(MicroBatch(ids, mask, labels, idx, idx, ref_a[idx], ref_b[idx]))
    return batches


def _loss_fn(name: str, beta: float = 0.5):
    return lambda pa, pb, ra, rb: preference_loss(name, pa, pb, ra, rb, beta=beta)


def _update(step, micro: int, name: str, lr: float = 1e-2):
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    out = step(model, _micro_batches(micro), _loss_fn(name), chunk_size=7)
    optimizer.step()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    return delta, out


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


@pytest.mark.parametrize("name", ["aot", "aot_unpaired", "dpo"])
def test_global_scope_micro2_accum8_equals_micro16(name):
    big, out_big = _update(micro_scope_step, G, name)  # one micro-batch of 16 = the plain loss
    small, out_small = _update(global_scope_step, 2, name)
    assert big.norm() > 0
    assert _rel(small, big) < 1e-4
    # the logged loss is the true global loss, and the gathered vectors are the same samples
    assert out_small.loss.item() == pytest.approx(out_big.loss.item(), rel=1e-5)
    assert torch.allclose(out_small.policy_a, out_big.policy_a, atol=1e-4)


def test_micro_scope_differs_with_small_micro_batches():
    big, _ = _update(micro_scope_step, G, "aot")
    small, _ = _update(micro_scope_step, 2, "aot")
    assert _rel(small, big) > 1e-2


def test_global_scope_replays_dropout_masks():
    """Pass 1 and pass 3 draw the same dropout masks: the step equals one plain backward through
    all micro-batches' forwards run in the same order from the same RNG state."""
    model = _model(dropout=0.3)
    batches = _micro_batches(4)
    torch.manual_seed(123)
    global_scope_step(model, batches, _loss_fn("aot"), chunk_size=None)
    cached = torch.cat([p.grad.flatten() for p in model.parameters()])

    model.zero_grad()
    torch.manual_seed(123)
    parts = [policy_logps(model, b, None) for b in batches]
    loss = _loss_fn("aot")(torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts]),
                           torch.cat([b.ref_a for b in batches]), torch.cat([b.ref_b for b in batches]))
    loss.backward()
    plain = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert _rel(cached, plain) < 1e-4


def test_logged_loss_is_global_loss_and_metrics_cover_all_samples():
    model = _model()
    batches = _micro_batches(4)
    out = global_scope_step(model, batches, _loss_fn("aot"), chunk_size=None)
    assert out.policy_a.shape == (G,) and out.ref_b.shape == (G,)
    expected = preference_loss("aot", out.policy_a, out.policy_b, out.ref_a, out.ref_b, beta=0.5)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.n_tokens == sum(b.n_tokens for b in batches)


def test_prompt_token_logits_do_not_change_the_loss():
    """Perturb the final hidden states (the logits' only input) at every position that does not
    predict a completion token: log-probs and loss stay the same; perturb one that does: they move."""
    model = _model().eval()
    batch = _micro_batches(4)[0]
    loss_fn = _loss_fn("aot")

    def loss_with(noise_mask):
        def perturb(module, args, output):
            return output + 5.0 * noise_mask[..., None] * torch.randn_like(output)

        handle = model.model.norm.register_forward_hook(perturb)
        try:
            with torch.no_grad():
                a, b = policy_logps(model, batch, chunk_size=5)
        finally:
            handle.remove()
        return a, b, loss_fn(a, b, batch.ref_a, batch.ref_b)

    clean = loss_with(torch.zeros(batch.labels.shape))
    prompt_and_padding = (batch.labels == -100).float()
    assert prompt_and_padding.sum() > batch.attention_mask.shape[0]  # prompts and padding exist
    masked = loss_with(prompt_and_padding)
    assert torch.allclose(masked[0], clean[0]) and torch.allclose(masked[1], clean[1])
    assert masked[2].item() == clean[2].item()
    one_completion_position = torch.zeros(batch.labels.shape)
    one_completion_position[0, (batch.labels[0] != -100).nonzero()[0, 0]] = 1.0
    assert not torch.allclose(loss_with(one_completion_position)[0], clean[0])


@pytest.mark.parametrize("micro, forwards", [(4, 4 + 3), (G, 1)])
def test_global_scope_forwards_last_micro_batch_once(micro, forwards):
    model = _model()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    global_scope_step(model, _micro_batches(micro), _loss_fn("aot"), chunk_size=None)
    assert len(calls) == forwards


def test_policy_logps_split_by_length_equals_one_forward():
    from aot_cli.train.logprobs import model_sequence_logps

    rng = np.random.default_rng(3)
    rows = [(rng.integers(1, 64, n).tolist(), 2) for n in (5, 6, 5, 7, 24, 22, 25, 23)]  # short chosen, long rejected
    ids, mask, labels = collate(rows, pad_id=0)
    batch = MicroBatch(ids, mask, labels, np.arange(4), np.arange(4))
    model = _model()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    a, b = policy_logps(model, batch, chunk_size=7)
    assert len(calls) == 2  # two forwards: 4 x 7 + 4 x 25 positions instead of 8 x 25
    grads = torch.autograd.grad((a * torch.arange(1.0, 5.0)).sum() - b.sum(), list(model.parameters()))
    whole = model_sequence_logps(model, ids, mask, labels, chunk_size=7)
    expected = torch.autograd.grad((whole[:4] * torch.arange(1.0, 5.0)).sum() - whole[4:].sum(),
                                   list(model.parameters()))
    assert torch.allclose(torch.cat([a, b]), whole, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_policy_logps_never_splits_across_processes(monkeypatch):
    """Under DDP every forward broadcasts buffers and a backward expects one forward: ranks whose
    micro-batches split differently would hang (measured: 2 gloo processes on real data never finished
    step 1), so several processes always run one forward per micro-batch."""
    rng = np.random.default_rng(3)
    rows = [(rng.integers(1, 64, n).tolist(), 2) for n in (5, 6, 5, 7, 24, 22, 25, 23)]
    ids, mask, labels = collate(rows, pad_id=0)
    batch = MicroBatch(ids, mask, labels, np.arange(4), np.arange(4))
    model = _model()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *args: 2)
    policy_logps(model, batch, chunk_size=7)
    assert len(calls) == 1
