"""Padding-free micro-batches: the packed layout by hand, and packed values equal to padded ones
(log-probs per row, a whole training step's update, the reference passes) to 1e-5."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from aot_cli.losses import preference_loss
from aot_cli.train import run
from aot_cli.train.batching import KLRows, MicroBatch, collate
from aot_cli.train.config import Config as TrainConfig
from aot_cli.train.logprobs import IGNORE_INDEX as X
from aot_cli.train.logprobs import build_labels, model_sequence_logps
from aot_cli.train import packing
from aot_cli.train.packing import pack, packed_sequence_logps, resolve
from aot_cli.train.reference import OnlineReference, side_logps
from aot_cli.train.step import GraphBudget, global_scope_step, micro_scope_step


def _model(attn: str = "sdpa"):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn)
    return LlamaForCausalLM(config).train()


def _rows(n: int, seed: int) -> list[tuple[list[int], int]]:
    """Rows of 1 to 14 tokens (a row of one token has no label), prompts of 1 to 3 tokens."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(1, 64, int(rng.integers(1, 15))).tolist(), int(rng.integers(1, 4))) for _ in range(n)]


def test_pack_by_hand():
    # rows [5 6 7] (prompt 1) and [8 9] (prompt 1), right-padded with 0
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    labels = build_labels(ids, mask, [1, 1])
    assert labels.tolist() == [[6, 7, X], [9, X, X]]
    packed = pack(ids, mask, labels)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    # row 0 predicts 6 and 7 at packed positions 0 and 1, row 1 predicts 9 at position 3; the last
    # token of row 0 (position 2) has no label, so nothing predicts across the row boundary
    assert packed.labels.tolist() == [[6, 7, X, X, X], [X, X, X, 9, X]]
    assert packed.cu_seqlens.tolist() == [0, 3, 5] and packed.longest == 3


def test_pack_left_padding_gives_the_same_sequence():
    right = collate([([5, 6, 7], 1), ([8, 9], 1)], pad_id=0)
    ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    left = pack(ids, mask, build_labels(ids, mask, [1, 1]))
    expected = pack(*right)
    for field in ("input_ids", "position_ids", "labels"):
        assert torch.equal(getattr(left, field), getattr(expected, field))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("chunk_size", [1024, 3, 0])
def test_packed_logps_and_gradients_equal_padded(attn, chunk_size):
    model = _model(attn)
    ids, mask, labels = collate(_rows(8, seed=1), pad_id=0)
    padded = model_sequence_logps(model, ids, mask, labels, chunk_size=chunk_size)
    weights = torch.linspace(-1, 1, len(padded))
    (padded * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    packed = packed_sequence_logps(model, ids, mask, labels, chunk_size=chunk_size)
    (packed * weights).sum().backward()
    assert padded.abs().min() == 0 and padded.abs().max() > 10  # a row without completion, and real sums
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-5)


def test_rows_of_a_packed_sequence_do_not_see_each_other():
    """Changing the tokens of row 0 leaves every other row's log-prob unchanged (block-diagonal attention)."""
    model = _model().eval()
    rows = _rows(4, seed=2)
    base = packed_sequence_logps(model, *collate(rows, pad_id=0))
    rows[0] = ([63 - t for t in rows[0][0]] + [1, 2, 3], rows[0][1])
    changed = packed_sequence_logps(model, *collate(rows, pad_id=0))
    assert abs(changed[0] - base[0]) > 1e-3
    torch.testing.assert_close(changed[1:], base[1:], rtol=0, atol=1e-5)


@pytest.fixture
def varlen_calls(monkeypatch):
    """The row counts of each per-row attention call (:func:`aot_cli.train.packing.rows_sdpa`)."""
    calls = []
    rows_sdpa = packing.rows_sdpa

    def spy(query, key, value, bounds, **kwargs):
        calls.append(len(bounds) - 1)
        return rows_sdpa(query, key, value, bounds, **kwargs)

    monkeypatch.setattr(packing, "rows_sdpa", spy)
    return calls


def test_sdpa_attends_row_by_row_in_packed_forwards_only(varlen_calls):
    model = _model("sdpa")
    packed_sequence_logps(model, *collate(_rows(5, seed=7), pad_id=0))
    assert varlen_calls == [5, 5]  # both layers, five rows
    model_sequence_logps(model, *collate(_rows(5, seed=7), pad_id=0))
    assert len(varlen_calls) == 2


def test_sliding_window_shorter_than_a_row_takes_the_dense_mask(varlen_calls):
    model = _model("sdpa")
    for layer in model.model.layers:  # Llama has no sliding window: pass one, as Mistral's layers do
        forward = layer.self_attn.forward
        layer.self_attn.forward = (lambda *a, forward=forward, **k: forward(*a, sliding_window=4, **k))
    ids, mask, labels = collate(_rows(5, seed=8), pad_id=0)
    packed = packed_sequence_logps(model, ids, mask, labels)
    assert varlen_calls == []
    torch.testing.assert_close(packed, model_sequence_logps(model, ids, mask, labels), rtol=0, atol=1e-5)


def test_packed_forward_under_gradient_checkpointing(varlen_calls):
    """Backward replays the forward of each layer: the replay attends row by row too."""
    model = _model("sdpa")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, mask, labels = collate(_rows(6, seed=9), pad_id=0)
    model_sequence_logps(model, ids, mask, labels).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    packed_sequence_logps(model, ids, mask, labels).sum().backward()
    assert varlen_calls == [6] * 4  # two layers, forward and replay
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-5)


def _micro_batches(padding_free: bool, micro: int = 4, pairs: int = 8, kl: bool = False) -> list[MicroBatch]:
    """Paired micro-batches with random reference log-probs (and, ``kl``, KTO's mismatched rows)."""
    rows_a, rows_b, rows_kl = _rows(pairs, seed=3), _rows(pairs, seed=4), _rows(2 * pairs, seed=10)
    rng = np.random.default_rng(5)
    refs = torch.tensor(rng.normal(-40, 8, 2 * pairs), dtype=torch.float32)
    kl_refs = torch.tensor(rng.normal(-40, 8, 2 * pairs), dtype=torch.float32)
    batches = []
    for lo in range(0, pairs, micro):
        idx = np.arange(lo, lo + micro)
        ids, mask, labels = collate([rows_a[i] for i in idx] + [rows_b[i] for i in idx], pad_id=0)
        batch = MicroBatch(ids, mask, labels, idx, idx, refs[idx], refs[pairs + idx], padding_free=padding_free)
        if kl:
            positions = np.concatenate([idx, pairs + idx])
            batch.kl = KLRows(*collate([rows_kl[p] for p in positions], pad_id=0), positions, kl_refs[positions])
        batches.append(batch)
    return batches


@pytest.mark.parametrize("loss", ["aot", "kto"])
@pytest.mark.parametrize("step", [global_scope_step, micro_scope_step])
def test_training_step_update_equals_padded(step, loss):
    def update(padding_free: bool):
        model = _model()
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loss_fn = (lambda pa, pb, ra, rb, kl=None: preference_loss(loss, pa, pb, ra, rb, beta=0.5, kl=kl))
        out = step(model, _micro_batches(padding_free, kl=loss == "kto"), loss_fn, chunk_size=5)
        optimizer.step()
        return [p.detach() - b for p, b in zip(model.parameters(), before)], out

    padded, out_padded = update(False)
    packed, out_packed = update(True)
    assert sum(d.abs().sum() for d in padded) > 0
    assert out_packed.loss.item() == pytest.approx(out_padded.loss.item(), abs=1e-5)
    if step is global_scope_step:  # kept first-pass graphs (--graph-memory) of packed forwards: the same update
        graphs = GraphBudget()
        graphs.limit = 2**40
        model = _model()
        before = [p.detach().clone() for p in model.parameters()]
        loss_fn = (lambda pa, pb, ra, rb, kl=None: preference_loss(loss, pa, pb, ra, rb, beta=0.5, kl=kl))
        step(model, _micro_batches(True, kl=loss == "kto"), loss_fn, chunk_size=5, graphs=graphs)
        torch.optim.AdamW(model.parameters(), lr=1e-2).step()
        for p, b, d_padded in zip(model.parameters(), before, padded):
            torch.testing.assert_close(p.detach() - b, d_padded, rtol=0, atol=1e-5)
    if loss == "kto":
        assert out_packed.kl == pytest.approx(out_padded.kl, abs=1e-5)
    torch.testing.assert_close(out_packed.policy_a, out_padded.policy_a, rtol=0, atol=1e-5)
    for d_packed, d_padded in zip(packed, padded):
        torch.testing.assert_close(d_packed, d_padded, rtol=0, atol=1e-5)


class _ListSide:
    """A side held in memory: ``get`` and ``lengths``, what the reference pass reads."""

    def __init__(self, rows):
        self.rows, self.lengths = rows, np.array([len(ids) for ids, _ in rows])

    def __len__(self):
        return len(self.rows)

    def get(self, index):
        return self.rows[index]


def test_reference_passes_equal_padded():
    model = _model().eval()
    side = _ListSide(_rows(9, seed=6))
    kwargs = dict(pad_id=0, batch_rows=4, chunk_size=1024, device="cpu")
    padded, packed = side_logps(model, side, **kwargs), side_logps(model, side, padding_free=True, **kwargs)
    assert sorted(packed) == list(range(9))
    np.testing.assert_allclose([packed[i] for i in range(9)], [padded[i] for i in range(9)], rtol=0, atol=1e-5)

    online = OnlineReference.__new__(OnlineReference)  # the frozen-copy case, without loading one from disk
    online.frozen, online.chunk_size = model, 1024
    batches = [_micro_batches(padding_free, kl=True)[0] for padding_free in (False, True)]
    for batch in batches:
        online.fill(batch)
    torch.testing.assert_close(batches[1].ref_a, batches[0].ref_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(batches[1].ref_b, batches[0].ref_b, rtol=0, atol=1e-5)
    torch.testing.assert_close(batches[1].kl.ref, batches[0].kl.ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("setting", "attn", "device", "expected"), [
    ("auto", "sdpa", "cpu", True), ("auto", "sdpa", "meta", False), ("auto", "eager", "cpu", False),
    ("auto", "flash_attention_2", "meta", True), ("on", "eager", "cpu", True),
    ("off", "flash_attention_2", "cpu", False)])
def test_resolve_auto_is_on_with_flash_attention_and_with_sdpa_on_the_cpu(setting, attn, device, expected):
    """auto packs where it was measured to pay: flash attention, and sdpa on the CPU ("meta" stands for
    a device that is not the CPU)."""
    model = torch.nn.Linear(1, 1, device=device)
    model.config = SimpleNamespace(_attn_implementation=attn)
    assert resolve(setting, model) is expected


def test_resolve_reads_through_wrappers():
    wrapper = torch.nn.Module()
    wrapper.module = _model("eager")
    wrapper.module.config._attn_implementation = "flash_attention_2"
    assert resolve("auto", wrapper) is True


def test_train_padding_free_on_equals_off(tiny_model_dir, paired_data, tmp_path):
    """Through `aot train` (precomputed reference, global scope): the same run with and without
    packing ends with the same adapter weights; the manifest records the setting."""
    weights = {}
    for setting in ("off", "on"):
        out = tmp_path / setting
        run.run(TrainConfig(model=str(tiny_model_dir), data=paired_data, output=out, batch_size=2, grad_accum=2,
                            lr=1e-3, warmup_ratio=0.0, max_steps=2, save_steps=0, max_length=64,
                            max_prompt_length=32, padding_free=setting))
        assert json.loads((out / "manifest.json").read_text())["config"]["padding_free"] == setting
        weights[setting] = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in weights["on"].values())
    for name, value in weights["off"].items():
        torch.testing.assert_close(weights["on"][name], value, rtol=0, atol=1e-5)
