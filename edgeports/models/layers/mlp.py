"""Gated MLP (SwiGLU and friends): down(act(gate(x)) * up(x)), separate or fused gate/up projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# transformers' ACT2FN names for the activations our archs use
ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def activation(name: str):
    """The activation function for a transformers `hidden_act` name."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r} (known: {', '.join(ACTIVATIONS)})") from None


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)).

    `fused=False`: separate `gate_proj`, `up_proj` (Llama, Qwen2). `fused=True`: one `gate_up_proj` whose
    output is [gate | up] along the last dim (Phi3), one GEMM instead of two.
    """

    def __init__(self, dim: int, hidden: int, act: str = "silu", bias: bool = False, fused: bool = False,
                 gate_mult: float = 1.0, out_mult: float = 1.0):
        super().__init__()
        self.fused = fused
        # Falcon-H1's muP multipliers: act(gate(x) * gate_mult) and down(...) * out_mult
        self.gate_mult, self.out_mult = gate_mult, out_mult
        self.hidden = hidden
        if fused:
            self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=bias)
        else:
            self.gate_proj = nn.Linear(dim, hidden, bias=bias)
            self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.act_name = act
        self.act = activation(act)

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """x[..., D] -> [..., D]. `delta` [..., 2F] is added to the fused [gate | up] projection (the
        per-use LoRA adapters of Zamba2's shared MLP)."""
        if self.fused:
            gu = self.gate_up_proj(x)
            gate, up = (gu if delta is None else gu + delta).chunk(2, dim=-1)  # [..., F] each
        else:
            if delta is not None:
                raise ValueError("GatedMLP: delta needs fused=True")
            gate, up = self.gate_proj(x), self.up_proj(x)
        if self.gate_mult != 1.0:
            gate = gate * self.gate_mult
        y = self.down_proj(self.act(gate) * up)
        return y * self.out_mult if self.out_mult != 1.0 else y

    def extra_repr(self) -> str:
        return f"act={self.act_name}, fused={self.fused}"
