"""RMSNorm and the gated RMSNorm of Mamba2-style mixers (Mamba2, Zamba2, Falcon-H1 variants).

Both normalise in float32 and return the input dtype, as the transformers implementations do.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x[..., D] float32 -> x / sqrt(mean(x^2) + eps) over the last dim.

    Multiplies by rsqrt, as transformers does (bit for bit), except under `onnx_form()`: there it divides by the
    sqrt (within an ulp of it), because ONNX Runtime's SimplifiedLayerNormFusion matches Sqrt -> Div, not
    Reciprocal -> Mul, and so makes each exported norm one SimplifiedLayerNormalization node (its casts and
    weight Mul included) instead of seven elementwise kernels over the activations."""
    mean_square = x.pow(2).mean(-1, keepdim=True) + eps
    if _onnx_form:
        return x / torch.sqrt(mean_square)
    return x * torch.rsqrt(mean_square)


_onnx_form = False  # a module global read when the model is traced


@contextlib.contextmanager
def onnx_form():
    """Within the block, RMS norms compute in the form ONNX Runtime fuses (see _rms): the ONNX exporter traces
    under it. A plain module global (as edgeports.kernels.use), not thread-local: compiled programs guard on it,
    so do not run them in another thread during an export."""
    global _onnx_form
    old, _onnx_form = _onnx_form, True
    try:
        yield
    finally:
        _onnx_form = old


def in_onnx_form() -> bool:
    """True while `onnx_form()` is entered: layers that trace another form for ONNX (RMS norms here, the Mamba
    mixers' channel-first projections in layers/mamba.py) read this one flag."""
    return _onnx_form


class RMSNorm(nn.Module):
    """y = weight * (x / rms(x)), statistics in float32, the product in the input dtype (Llama/Qwen2/Phi3)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x[..., D] -> [..., D] in x's dtype."""
        return self.weight * _rms(x.float(), self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """RMSNorm with a SiLU gate, normalised over groups of `group_size` channels.

    - `norm_before_gate=False` (Mamba2, Zamba2; transformers' MambaRMSNormGated / Zamba2RMSNormGated):
      y = weight * rmsnorm(x * silu(gate)).
    - `norm_before_gate=True` (Falcon-H1's default): y = weight * rmsnorm(x) * silu(gate).
    - `group_size=None` normalises over the whole last dim (transformers' Mamba2); Zamba2 and Falcon-H1
      use d_inner // n_groups, as mamba_ssm's RMSNormGated does.
    - `weight_in_fp32=False` casts to the input dtype before multiplying by the weight (Mamba2, Zamba2);
      True multiplies in float32 and casts last (Falcon-H1). Identical in float32, ~1 ulp apart in bf16.
    """

    def __init__(self, dim: int, eps: float = 1e-6, group_size: int | None = None, norm_before_gate: bool = False,
                 weight_in_fp32: bool = False):
        super().__init__()
        group_size = group_size or dim
        if dim % group_size:
            raise ValueError(f"GatedRMSNorm: dim {dim} is not a multiple of group_size {group_size}")
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight_in_fp32 = weight_in_fp32

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """x[..., D], gate[..., D] or None -> [..., D] in x's dtype."""
        dtype = x.dtype
        h = x.float()
        g = F.silu(gate.float()) if gate is not None else None
        if g is not None and not self.norm_before_gate:
            h = h * g
        shape = h.shape
        if self.is_plain_rms():  # one group: no [..., 1, D] view, which keeps ORT from fusing the norm
            h = _rms(h, self.eps)
        else:
            h = _rms(h.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size), self.eps).reshape(shape)
        if self.weight_in_fp32:
            h = self.weight.float() * h
        else:
            h = self.weight * h.to(dtype)
        if g is not None and self.norm_before_gate:
            h = h * g
        return h.to(dtype)

    def is_plain_rms(self) -> bool:
        """Whether, called without a gate, this is weight * rmsnorm(x) over the whole last dim (one group)."""
        return self.group_size == self.weight.shape[0]

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")
