"""The reference implementation: a sequential Python loop over time, float32 (float64 for float64 inputs).

It is the test oracle for every other implementation, written to read like the equations of
notes/KERNELS.md, not to be fast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeports.kernels._common import acc_dtype, gate, heads_of_groups, transform_dt
from edgeports.kernels._common import state_update as selective_state_update  # already per-step

__all__ = ["IMPL", "available", "causal_conv1d", "causal_conv1d_update", "selective_scan", "selective_state_update",
           "ssd_chunk_scan"]

IMPL = "ref"


def available() -> tuple[bool, str]:
    """Always available (plain torch)."""
    return True, "pure torch, sequential"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """Mamba1 scan, one time step at a time. Shapes as in edgeports.kernels.selective_scan."""
    f = acc_dtype(u)
    bt, d, L = u.shape
    dt = transform_dt(delta.to(f), delta_bias, delta_softplus, bias_dim=1)  # [Bt,D,L]
    A, B, C, uf = A.to(f), B.to(f), C.to(f), u.to(f)
    h = initial_state.to(f) if initial_state is not None else u.new_zeros((bt, d, A.shape[1]), dtype=f)
    ys = []
    for t in range(L):
        dt_t = dt[:, :, t, None]  # [Bt,D,1]
        h = torch.exp(dt_t * A) * h + dt_t * B[:, None, :, t] * uf[:, :, t, None]  # [Bt,D,N]
        ys.append((h * C[:, None, :, t]).sum(-1))  # [Bt,D]
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros((bt, d, 0))
    if D is not None:
        y = y + D.to(f)[:, None] * uf
    y = gate(y, z)
    return y.to(u.dtype), h


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, dt_min=0.0,
                   dt_max=float("inf"), initial_state=None):
    """Mamba2 recurrence one time step at a time (chunk_size is ignored: it only blocks the fast forms)."""
    f = acc_dtype(x)
    bt, L, H, P = x.shape
    dt = transform_dt(dt.to(f), dt_bias, dt_softplus, clamp=(dt_min, dt_max))  # [Bt,L,H]
    B = heads_of_groups(B.to(f), H, 2)  # [Bt,L,H,N]
    C = heads_of_groups(C.to(f), H, 2)
    xf, A = x.to(f), A.to(f)
    h = initial_state.to(f) if initial_state is not None else x.new_zeros((bt, H, P, B.shape[-1]), dtype=f)
    ys = []
    for t in range(L):
        dt_t = dt[:, t, :, None, None]  # [Bt,H,1,1]
        h = torch.exp(dt_t * A[:, None, None]) * h + dt_t * xf[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros((bt, 0, H, P))  # [Bt,L,H,P]
    if D is not None:
        y = y + D.to(f)[:, None] * xf
    y = gate(y, z)
    return y.to(x.dtype), h


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    """Depthwise causal conv as the explicit sum over taps of the padded input."""
    f = acc_dtype(x)
    bt, d, L = x.shape
    W = weight.shape[1]
    init = initial_state if initial_state is not None else x.new_zeros((bt, d, W - 1))
    xpad = torch.cat([init.to(x.dtype), x], dim=-1).to(f)  # [Bt,D,W-1+L]
    y = sum(weight[:, k, None].to(f) * xpad[:, :, k:k + L] for k in range(W))
    if bias is not None:
        y = y + bias.to(f)[:, None]
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype), xpad[:, :, xpad.shape[-1] - (W - 1):].to(x.dtype)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One step: the conv over [conv_state, x], then the window slides by one."""
    y, new_state = causal_conv1d(x[:, :, None], weight, bias, conv_state, activation)
    return y[:, :, 0], new_state.to(conv_state.dtype)
