"""Inference-time rewrites of a loaded model, in place: fused parallel projections and folded SSM constants.

Fusing: q/k/v into one `qkv_proj`, gate/up into one `gate_up_proj`.

At decode every projection is a bandwidth-bound GEMV (one row of activations against the whole weight), and
a GEMV's efficiency grows with its size: one [q|k|v] GEMM reads the same bytes as three but launches one
kernel with more work per launch. The fused layouts are the ones Phi-3 ships with (`Attention(fused_qkv=True)`,
`GatedMLP(fused=True)`), so the model code has no second path to keep right; only the weight names change
(`q_proj`, `k_proj`, `v_proj` -> `qkv_proj`; `gate_proj`, `up_proj` -> `gate_up_proj`), which is why weight
loading (transformers names) happens before fusing, never after.

Folding: the SSM mixers' A = -exp(A_log), D and dt bias in float32 (what their kernels take) stored once as
buffers (edgeports.models.layers.mamba.fold_ssm_constants). Unfolded, a compiled decode step recomputes them
from the parameters every token and passes the kernels fresh, fully expanded tensors. The weights keep their
names; the buffers are not part of the state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeports.models.layers.attention import Attention
from edgeports.models.layers.mamba import FOLDED_CONSTANTS, fold_ssm_constants
from edgeports.models.layers.mlp import GatedMLP


def _concat(parts: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the parts' outputs side by side (same input, same dtype and device)."""
    w = parts[0].weight
    fused = nn.Linear(w.shape[1], sum(p.out_features for p in parts), bias=parts[0].bias is not None,
                      device=w.device, dtype=w.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts]))  # [sum(out), in]
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused.requires_grad_(w.requires_grad)


def has_unfused_projections(model: nn.Module) -> bool:
    """Whether fuse_projections would change `model`."""
    return any(isinstance(m, Attention) and not m.fused_qkv or isinstance(m, GatedMLP) and not m.fused
               for m in model.modules())


def fuse_projections(model: nn.Module) -> int:
    """Fuse every unfused Attention (q/k/v) and GatedMLP (gate/up) in `model`, in place; a module used in
    several places (Zamba2's shared blocks) is fused once. Returns how many modules changed."""
    changed = 0
    for module in model.modules():  # each module object once
        if isinstance(module, Attention) and not module.fused_qkv:
            module.qkv_proj = _concat([module.q_proj, module.k_proj, module.v_proj])
            del module.q_proj, module.k_proj, module.v_proj
            module.fused_qkv = True
        elif isinstance(module, GatedMLP) and not module.fused:
            module.gate_up_proj = _concat([module.gate_proj, module.up_proj])
            del module.gate_proj, module.up_proj
            module.fused = True
        else:
            continue
        changed += 1
    return changed


def _ssm_mixers(model: nn.Module):
    for module in model.modules():
        if isinstance(getattr(module, "A_log", None), nn.Parameter):
            yield module


def has_unfolded_constants(model: nn.Module) -> bool:
    """Whether fold_constants would add buffers to `model` (an SSM mixer without them)."""
    return any(not hasattr(m, FOLDED_CONSTANTS[0]) for m in _ssm_mixers(model))


def fold_constants(model: nn.Module) -> int:
    """Fold the SSM constants of every mixer of `model` that has them (an `A_log` parameter; the dt bias is
    `dt_bias` or `dt_proj.bias`, as transformers names them); again after any change of weights or dtype.
    Returns how many mixers were folded."""
    folded = 0
    for module in _ssm_mixers(model):
        fold_ssm_constants(module, module.dt_bias if hasattr(module, "dt_bias") else module.dt_proj.bias)
        folded += 1
    return folded
