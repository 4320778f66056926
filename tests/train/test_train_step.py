"""The global-scope step is the exact gradient of the loss over the whole global batch.

A tiny in-memory Llama and random token rows; reference log-probs are random numbers, so the policy
and reference rank the samples differently and the sort set matters (with the policy equal to the
reference, paired AOT reduces to DPO and every scope gives the same gradient).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aot_cli.losses import kto_loss, kto_reference_point, preference_loss
from aot_cli.train.batching import KLRows, MicroBatch, collate, split_micro_batches
from aot_cli.train.logprobs import model_sequence_logps
from aot_cli.train.step import GraphBudget, GraphMeter, global_scope_step, micro_scope_step, policy_logps

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


def _loss_fn(name: str, beta: float = 0.5, **kwargs):
    return lambda pa, pb, ra, rb, kl=None: preference_loss(name, pa, pb, ra, rb, beta=beta, kl=kl, **kwargs)


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


# --- unpaired data with unequal counts, and KTO ---------------------------------------------------------

N_POS, N_NEG = 11, 5  # 16 samples: one global batch of 8 "couples"


def _unpaired_rows(seed: int):
    """Positives, negatives, their random references, and one mismatched (KL) row per sample with its
    random reference; the KL rows are token rows like any other (the step does not build them)."""
    rng = np.random.default_rng(seed)

    def rows(n):
        return [(rng.integers(1, 64, int(rng.integers(6, 13))).tolist(), int(rng.integers(2, 5))) for _ in range(n)]

    pos, neg = rows(N_POS), rows(N_NEG)
    kl = {("a", i): r for i, r in enumerate(rows(N_POS))} | {("b", i): r for i, r in enumerate(rows(N_NEG))}
    refs = {k: torch.tensor(rng.normal(-60, 8, n), dtype=torch.float32) for k, n in (("a", N_POS), ("b", N_NEG))}
    kl_refs = {k: float(v) for k, v in zip(kl, rng.normal(-60, 8, len(kl)))}
    return pos, neg, refs, kl, kl_refs


def _unpaired_micro_batches(micro: int, *, with_kl: bool, seed: int = 1) -> list[MicroBatch]:
    """The 16 samples split as training splits them: micro-batches of 2 x `micro` rows holding 2
    or 3 positives (micro 2), or all of them at once (micro 8)."""
    pos, neg, refs, kl, kl_refs = _unpaired_rows(seed)
    lengths = (np.array([len(r[0]) for r in pos]), np.array([len(r[0]) for r in neg]))
    batches = []
    for a, b in split_micro_batches(np.arange(N_POS), np.arange(N_NEG), *lengths, micro_batch=micro, paired=False):
        ids, mask, labels = collate([pos[i] for i in a] + [neg[i] for i in b], pad_id=0)
        batch = MicroBatch(ids, mask, labels, a, b, refs["a"][a], refs["b"][b])
        if with_kl:
            keys = [("a", int(i)) for i in a] + [("b", int(i)) for i in b]
            batch.kl = KLRows(*collate([kl[key] for key in keys], pad_id=0), np.arange(len(keys)),
                              torch.tensor([kl_refs[key] for key in keys]))
        batches.append(batch)
    return batches


def _unpaired_update(step, micro: int, name: str, **kwargs):
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    batches = _unpaired_micro_batches(micro, with_kl=name == "kto")
    out = step(model, batches, _loss_fn(name, **kwargs), chunk_size=7)
    optimizer.step()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    return delta, out, batches


@pytest.mark.parametrize("name, kwargs", [("aot_unpaired", {}), ("aot_unpaired", {"dominance": "second"}),
                                          ("aot_unpaired", {"surrogate": "squared_hinge"}),
                                          ("kto", {"desirable_weight": 1.3})])
def test_global_scope_with_unequal_counts_equals_one_big_batch(name, kwargs):
    """11 positives and 5 negatives: micro-batches of 4 rows hold 2 or 3 positives each, so the sides'
    shares differ from micro-batch to micro-batch; the global step still equals the loss on all 16."""
    small_batches = _unpaired_micro_batches(2, with_kl=False)
    assert sorted({b.n_a for b in small_batches}) == [2, 3] and len(small_batches) == 4
    big, out_big, _ = _unpaired_update(micro_scope_step, 8, name, **kwargs)  # one micro-batch: the plain loss
    small, out_small, _ = _unpaired_update(global_scope_step, 2, name, **kwargs)
    assert big.norm() > 0
    assert _rel(small, big) < 1e-4
    assert out_small.loss.item() == pytest.approx(out_big.loss.item(), rel=1e-5)
    assert out_small.policy_a.shape == (N_POS,) and out_small.policy_b.shape == (N_NEG,)
    assert torch.allclose(out_small.policy_a.sort().values, out_big.policy_a.sort().values, atol=1e-4)
    assert out_small.couples == 8


def test_kto_step_gradient_equals_kto_loss_on_the_batch():
    """The two-pass KTO step (4 micro-batches) leaves in .grad the gradient of kto_loss computed directly on
    the whole batch: policy log-probs with gradient, the mismatched rows' log-probs without (z0 is a
    constant), over all 16 mismatched rows."""
    model = _model()
    batches = _unpaired_micro_batches(2, with_kl=True)
    loss_fn = _loss_fn("kto", beta=0.5, desirable_weight=1.3, undesirable_weight=0.8)
    out = global_scope_step(model, batches, loss_fn, chunk_size=None)
    stepped = torch.cat([p.grad.flatten() for p in model.parameters()])

    model.zero_grad()
    logps = [model_sequence_logps(model, b.input_ids, b.attention_mask, b.labels) for b in batches]
    with torch.no_grad():
        policy_kl = torch.cat([model_sequence_logps(model, b.kl.input_ids, b.kl.attention_mask, b.kl.labels)
                               for b in batches])
    ref_kl = torch.cat([b.kl.ref for b in batches])
    loss = kto_loss(torch.cat([x[:b.n_a] for x, b in zip(logps, batches)]),
                    torch.cat([x[b.n_a:] for x, b in zip(logps, batches)]),
                    torch.cat([b.ref_a for b in batches]), torch.cat([b.ref_b for b in batches]),
                    policy_kl, ref_kl, beta=0.5, desirable_weight=1.3, undesirable_weight=0.8)
    loss.backward()
    direct = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert direct.norm() > 0
    assert _rel(stepped, direct) < 1e-4
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    z0 = kto_reference_point(policy_kl, ref_kl).item()
    assert z0 > 0 and out.kl == pytest.approx(z0, rel=1e-5)  # the logged reference point is the batch's


def test_kto_micro_scope_takes_z0_per_micro_batch():
    """TRL's scope: each micro-batch's loss uses the reference point of its own mismatched rows; the logged
    z0 is the mean of those; and the update differs from the global scope's."""
    model = _model()
    batches = _unpaired_micro_batches(2, with_kl=True)
    out = micro_scope_step(model, batches, _loss_fn("kto"), chunk_size=None)
    with torch.no_grad():
        per_micro = [kto_reference_point(model_sequence_logps(model, b.kl.input_ids, b.kl.attention_mask,
                                                              b.kl.labels), b.kl.ref).item() for b in batches]
    assert out.kl == pytest.approx(sum(per_micro) / len(per_micro), rel=1e-5)
    assert max(per_micro) - min(per_micro) > 1.0  # the micro-batches' estimates do differ
    micro_update, _, _ = _unpaired_update(micro_scope_step, 2, "kto")
    global_update, _, _ = _unpaired_update(global_scope_step, 2, "kto")
    assert _rel(micro_update, global_update) > 1e-3


def _budget_update(limit: int, micro: int = 2, steps: int = 2, dropout: float = 0.0):
    """SGD deltas of `steps` global-scope steps with a GraphBudget of `limit` bytes, the budget, and
    and (no-grad, with-grad) forwards run (the budget learns a graph's size in step 1, uses it from step 2 on)."""
    model = _model(dropout)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    graphs, calls = GraphBudget(limit), []
    model.register_forward_hook(lambda *args: calls.append(torch.is_grad_enabled()))
    torch.manual_seed(7)
    for _ in range(steps):
        global_scope_step(model, _micro_batches(micro), _loss_fn("aot"), chunk_size=7, graphs=graphs)
        optimizer.step()
        optimizer.zero_grad()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    return delta, graphs, (calls.count(False), calls.count(True))


def test_kept_graphs_give_the_replayed_update_and_the_single_batch_one():
    """Keeping every pass-1 graph (a budget that holds the step) skips all replays and gives the same
    two updates as replaying every micro-batch but the last, and as one micro-batch of 16."""
    replayed, _, replay_forwards = _budget_update(0)
    kept, graphs, kept_forwards = _budget_update(2**40)
    # pass 1 runs no forward without grad, so nothing is replayed: the replay run's grad forwards are
    # its replays (as many as its no-grad ones) and the last micro-batches
    assert replay_forwards[0] > 0 and kept_forwards == (0, replay_forwards[1])
    assert graphs.per_position > 0
    assert _rel(kept, replayed) < 1e-5
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(2):
        micro_scope_step(model, _micro_batches(G), _loss_fn("aot"), chunk_size=7)
        optimizer.step()
        optimizer.zero_grad()
    single = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert _rel(kept, single) < 1e-4


def test_graph_budget_keeps_what_fits_and_replays_the_rest():
    """A budget of about three graphs keeps some micro-batches and replays the others, with the same
    update; with dropout too (kept and replayed micro-batches see the masks of their pass-1 forward)."""
    _, learned, _ = _budget_update(2**40, steps=1)
    three = int(3.5 * learned.per_position * 2 * 12)  # 2 rows of at most 12 positions each
    replayed, _, replay_forwards = _budget_update(0)
    partial, graphs, forwards = _budget_update(three)
    assert 0 < forwards[0] < replay_forwards[0]
    assert _rel(partial, replayed) < 1e-5
    # pass 1 draws every micro-batch's masks in order and replays restore them: one step is the same update
    dropped, _, _ = _budget_update(0, steps=1, dropout=0.3)
    kept, _, _ = _budget_update(three, steps=1, dropout=0.3)
    without_dropout, _, _ = _budget_update(three, steps=1)
    assert _rel(kept, dropped) < 1e-5 and _rel(kept, without_dropout) > 1e-3


def test_graph_meter_counts_saved_activations_not_weights():
    """A linear layer saves its input (counted) and its weight (not counted): 4 x 8 float32 = 128 bytes."""
    layer = torch.nn.Linear(8, 3)
    meter = GraphMeter(layer)
    x = torch.randn(4, 8, requires_grad=True)
    with meter.measure():
        layer(x).sum()
    assert meter.bytes == 4 * 8 * 4
