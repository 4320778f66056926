"""Less activation memory for SwiGLU MLPs (Llama, Mistral, Qwen2/3, SmolLM...).

Their MLP computes ``down(silu(gate(x)) * up(x))``. Written that way, autograd keeps four tensors of
``[tokens, intermediate]`` per layer for the backward: ``gate(x)`` (for silu), ``silu(gate(x))`` and
``up(x)`` (for the product) and the product itself (for ``down``). :class:`SiluTimesUp` computes
``silu(g) * u`` in one autograd function that keeps only ``g`` and ``u`` and recomputes ``silu(g)``
in the backward, so three are kept: a quarter of the MLP's activations, about a tenth of a decoder
layer's, for one elementwise pass per layer. The arithmetic is the same (gradients equal
to float rounding: tests/train/test_swiglu.py); Liger's fused MLP makes the same trade.

Only MLPs that have exactly this shape are changed (``gate_proj``, ``up_proj``, ``down_proj`` and a
SiLU ``act_fn``); any other model trains as it is.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import SiLUActivation


class SiluTimesUp(torch.autograd.Function):
    """``silu(g) * u``, keeping ``g`` and ``u`` for the backward instead of ``silu(g)`` too."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, u)
        return nn.functional.silu(g) * u

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, u = ctx.saved_tensors
        # torch's own fused kernels: silu's derivative sigmoid(g) (1 + g (1 - sigmoid(g))) times grad * u, and
        # silu(g) again; one elementwise pass more than autograd's backward of the unfused MLP
        return torch.ops.aten.silu_backward(grad * u, g), grad * nn.functional.silu(g)


def _is_swiglu(module: nn.Module) -> bool:
    return (all(isinstance(getattr(module, name, None), nn.Module) for name in ("gate_proj", "up_proj", "down_proj"))
            and isinstance(getattr(module, "act_fn", None), (SiLUActivation, nn.SiLU)))


def _swiglu_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(SiluTimesUp.apply(mlp.gate_proj(x), mlp.up_proj(x)))


def recompute_silu(model: nn.Module) -> int:
    """Give every SwiGLU MLP of `model` the forward above (per instance); returns how many."""
    count = 0
    for module in model.modules():
        if _is_swiglu(module):
            module.forward = _swiglu_forward.__get__(module)
            count += 1
    return count
