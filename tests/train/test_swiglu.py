"""The SwiGLU MLP that recomputes silu in its backward: the same values and gradients as the model's
own MLP, one ``[tokens, intermediate]`` tensor per layer less kept for the backward."""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from aot_cli.train.config import Config as TrainConfig
from aot_cli.train.model import build_policy
from aot_cli.train.step import GraphMeter
from aot_cli.train.swiglu import SiluTimesUp, _swiglu_forward, recompute_silu

TOKENS, INTERMEDIATE, LAYERS = 3 * 40, 176, 2


def _llama(hidden_act: str = "silu") -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                                        hidden_act=hidden_act))


def test_the_hand_written_backward_is_silu_times_up_s():
    g = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SiluTimesUp.apply, (g, u))
    x = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64, requires_grad=True)
    SiluTimesUp.apply(x, torch.ones_like(x)).sum().backward()
    # silu'(0) = 1/2; silu'(1) = s(1) (1 + 1 - s(1)); silu'(-2) = s(-2) (1 - 2 (1 - s(-2)))
    s1, s2 = 1 / (1 + torch.e ** -1), 1 / (1 + torch.e ** 2)
    expected = torch.tensor([0.5, s1 * (2 - s1), s2 * (1 - 2 * (1 - s2))], dtype=torch.float64)
    assert torch.allclose(x.grad, expected, atol=1e-12)


def test_same_loss_and_gradients_with_one_tensor_per_layer_less_kept():
    plain = _llama()
    lean = copy.deepcopy(plain)
    assert recompute_silu(lean) == LAYERS
    ids = torch.randint(0, 300, (3, 40))
    results = []
    for model in (plain, lean):
        meter = GraphMeter(model)
        with meter.measure():
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.item(), meter.bytes, {n: p.grad for n, p in model.named_parameters()}))
    (plain_loss, plain_bytes, plain_grads), (lean_loss, lean_bytes, lean_grads) = results
    assert lean_loss == plain_loss
    assert plain_bytes - lean_bytes == LAYERS * TOKENS * INTERMEDIATE * 4  # silu(gate) in float32, per layer
    for name, grad in plain_grads.items():
        assert torch.allclose(lean_grads[name], grad, rtol=1e-5, atol=1e-7), name


def test_other_mlps_are_left_as_they_are():
    model = _llama(hidden_act="gelu")
    forwards = [m.forward for m in model.modules()]
    assert recompute_silu(model) == 0
    assert [m.forward for m in model.modules()] == forwards


def test_the_policy_trains_with_it_lora_and_full(tiny_model_dir, tmp_path):
    for lora in (True, False):
        policy = build_policy(TrainConfig(model=str(tiny_model_dir), data=tmp_path, output=tmp_path / "r", lora=lora))
        mlps = [m for m in policy.modules() if type(m).__name__ == "LlamaMLP"]
        assert mlps and all(m.forward.__func__ is _swiglu_forward for m in mlps)
        if lora:  # the forward calls peft's LoRA layers, which replaced the projections
            assert all(type(m.gate_proj).__module__.startswith("peft") for m in mlps)
