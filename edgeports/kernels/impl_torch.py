"""The torch implementation: chunked, loop-free over time where possible, exportable (CPU and ONNX path).

- ssd_chunk_scan (Mamba2): the SSD algorithm with no loop at all: segment sums within chunks and a
  [chunks+1, chunks+1] decay matrix over chunks for passing states (per head the decay is a scalar, so
  that matrix stays small).
- selective_scan (Mamba1): per-channel-per-state decay makes a matrix over chunks too large, so it
  scans over chunks of CHUNK_M1 steps, with a log-depth (Hillis-Steele) parallel scan inside each chunk.
  Only one chunk's [Bt,D,T,N] states are alive at a time. Under tracing (torch.compile, torch.export,
  the dynamo ONNX exporter) the scan over chunks is torch's `scan` higher-order op, so the graph does not
  grow with L (ONNX: one `Scan` node); in eager it is a Python loop over chunks, because eager `scan`
  compiles its body with dynamo on every new shape.
- causal_conv1d: a depthwise F.conv1d over cat(initial_state, x).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from edgeports.kernels._common import gate, transform_dt
from edgeports.kernels._common import state_update as selective_state_update  # one step: nothing to chunk

__all__ = ["CHUNK_M1", "IMPL", "available", "causal_conv1d", "causal_conv1d_update", "selective_scan",
           "selective_state_update", "ssd_chunk_scan"]

IMPL = "torch"
CHUNK_M1 = 64  # Mamba1 steps per chunk: log2(64) = 6 parallel-scan levels over [Bt,D,64,N] per chunk


def available() -> tuple[bool, str]:
    """Always available (plain torch)."""
    return True, "pure torch, chunked"


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def _block(L, chunk: int) -> int:
    # eager with a concrete short L: a smaller block does less padded work; a symbolic L keeps the chunk
    return min(chunk, L) if isinstance(L, int) and L > 0 else chunk


# ---- Mamba1 ---------------------------------------------------------------------------------------
def _shift(t: torch.Tensor, k: int, fill: float) -> torch.Tensor:
    """t[:, :, i] <- t[:, :, i-k] along dim 2 (of 4), `fill` for i < k."""
    return F.pad(t[:, :, : t.shape[2] - k], (0, 0, k, 0), value=fill)


def _linear_scan(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of h_t = a_t h_{t-1} + b_t along dim 2, as (prod a, accumulated b); log2(T) levels.

    Composing (a1, b1) then (a2, b2) gives (a2 a1, a2 b1 + b2); every factor is a decay <= 1, so no overflow.
    """
    k = 1
    while k < a.shape[2]:
        b = b + a * _shift(b, k, 0.0)
        a = a * _shift(a, k, 1.0)
        k *= 2
    return a, b


def _m1_chunk(h: torch.Tensor, xs: tuple[torch.Tensor, ...], A: torch.Tensor):
    """One chunk: h [Bt,D,N]; dt, dtu [Bt,D,T]; B, C [Bt,N,T] -> (h at the chunk end, y [Bt,D,T])."""
    dt, dtu, B, C = xs
    a = torch.exp(dt[..., None] * A[:, None, :])  # [Bt,D,T,N]
    b = dtu[..., None] * B.transpose(1, 2)[:, None]  # [Bt,D,T,N]
    a, b = _linear_scan(a, b)
    hs = a * h[:, :, None, :] + b  # [Bt,D,T,N]: the state after every step of the chunk
    y = (hs * C.transpose(1, 2)[:, None]).sum(-1)  # [Bt,D,T]
    return hs[:, :, -1].clone(), y  # clone: scan forbids a carry aliasing an output


def _chunks(t: torch.Tensor, T: int) -> torch.Tensor:
    """[Bt,X,L] (L a multiple of T) -> [L/T,Bt,X,T]."""
    return t.reshape(t.shape[0], t.shape[1], -1, T).permute(2, 0, 1, 3)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """Mamba1 scan: chunks of CHUNK_M1 steps, parallel inside, sequential (loop or `scan` op) across."""
    bt, d, L = u.shape
    uf, A = u.float(), A.float()
    dt = transform_dt(delta.float(), delta_bias, delta_softplus, bias_dim=1)  # [Bt,D,L]
    T = _block(L, CHUNK_M1)
    pad = (-L) % T
    # padded steps get dt = 0: decay exp(0) = 1 and input 0, so they leave the state unchanged
    xs = tuple(_chunks(F.pad(t, (0, pad)), T) for t in (dt, dt * uf, B.float(), C.float()))  # [nc,Bt,*,T]
    h = initial_state.float() if initial_state is not None else uf.new_zeros((bt, d, A.shape[1]))
    step = functools.partial(_m1_chunk, A=A)
    if _tracing():
        from torch._higher_order_ops.scan import scan

        h, ys = scan(step, h, xs)  # ys [nc,Bt,D,T]
    else:
        outs = []
        for i in range(xs[0].shape[0]):
            h, y_c = step(h, tuple(x[i] for x in xs))
            outs.append(y_c)
        ys = torch.stack(outs)
    y = ys.permute(1, 2, 0, 3).reshape(bt, d, -1)[:, :, :L]  # [Bt,D,L]
    if D is not None:
        y = y + D.float()[:, None] * uf
    return gate(y, z).to(u.dtype), h


# ---- Mamba2 ---------------------------------------------------------------------------------------
def _segsum(x: torch.Tensor) -> torch.Tensor:
    """x [..., T] -> [..., T, T]: out[i, j] = x[j+1] + ... + x[i] for j <= i, -inf above the diagonal.

    Built from a masked cumsum (not differences of a cumsum), which keeps exp() of it exact near 0.
    """
    T = x.shape[-1]
    x = x[..., None].expand(*x.shape, T)  # [..., i, j] = x[i]
    ones = torch.ones(T, T, dtype=torch.bool, device=x.device)
    x = x.masked_fill(~torch.tril(ones, -1), 0.0)
    out = torch.cumsum(x, dim=-2)
    return out.masked_fill(~torch.tril(ones), float("-inf"))


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, dt_min=0.0,
                   dt_max=float("inf"), initial_state=None):
    """Mamba2 SSD, loop-free. Heads are split as (G groups, R = H/G heads per group) so B and C are never
    expanded to heads."""
    bt, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    R = H // G
    T = _block(L, chunk_size)
    pad = (-L) % T
    dt = transform_dt(dt.float(), dt_bias, dt_softplus, clamp=(dt_min, dt_max))  # [Bt,L,H]
    # padded steps get dt = 0 (after the transform): identity steps, so the final state is exact
    dt = F.pad(dt, (0, 0, 0, pad))
    xf = x.float()
    X = (F.pad(xf, (0, 0, 0, 0, 0, pad)) * dt[..., None]).reshape(bt, -1, T, G, R, P)  # [Bt,c,T,G,R,P]
    Bc = F.pad(B.float(), (0, 0, 0, 0, 0, pad)).reshape(bt, -1, T, G, N)  # [Bt,c,T,G,N]
    Cc = F.pad(C.float(), (0, 0, 0, 0, 0, pad)).reshape(bt, -1, T, G, N)
    a = (dt * A.float()).reshape(bt, -1, T, H).permute(0, 3, 1, 2)  # [Bt,H,c,T] log-decays
    a_cs = torch.cumsum(a, dim=-1)
    nc = a.shape[2]
    grp = (bt, G, R, nc, T)

    # 1. within chunks: y_l = sum_{s<=l} (C_l . B_s) exp(a_{s+1} + ... + a_l) X_s
    CB = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc)[:, :, None]  # [Bt,G,1,c,T,T]
    M = CB * torch.exp(_segsum(a)).reshape(*grp, T)  # [Bt,G,R,c,T,T]
    y = torch.einsum("bgrcls,bcsgrp->bclgrp", M, X)
    # 2. each chunk's own end state (from zero)
    decay_to_end = torch.exp(a_cs[..., -1:] - a_cs).reshape(grp)  # [Bt,G,R,c,T]
    states = torch.einsum("bclgn,bgrcl,bclgrp->bcgrpn", Bc, decay_to_end, X)  # [Bt,c,G,R,P,N]
    # 3. pass states across chunks with a [c+1, c+1] decay matrix (entry 0 is the initial state)
    h0 = initial_state.float() if initial_state is not None else xf.new_zeros((bt, H, P, N))
    states = torch.cat([h0.reshape(bt, 1, G, R, P, N), states], dim=1)
    decay_chunk = torch.exp(_segsum(F.pad(a_cs[..., -1], (1, 0)))).reshape(bt, G, R, nc + 1, nc + 1)
    states = torch.einsum("bgrzc,bcgrpn->bzgrpn", decay_chunk, states)  # [Bt,c+1,G,R,P,N]
    final = states[:, -1].reshape(bt, H, P, N)
    # 4. the state entering each chunk, decayed to each position and read out by C
    y = y + torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", Cc, states[:, :-1], torch.exp(a_cs).reshape(grp))
    y = y.reshape(bt, -1, H, P)[:, :L]
    if D is not None:
        y = y + D.float()[:, None] * xf
    return gate(y, z).to(x.dtype), final.contiguous()


# ---- causal conv ----------------------------------------------------------------------------------
def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    """Depthwise causal conv: F.conv1d(groups=D) over cat(initial_state or zeros, x)."""
    bt, d, L = x.shape
    W = weight.shape[1]
    init = initial_state.to(x.dtype) if initial_state is not None else x.new_zeros((bt, d, W - 1))
    xpad = torch.cat([init, x], dim=-1)  # [Bt,D,W-1+L]
    y = F.conv1d(xpad, weight.to(x.dtype)[:, None, :], None if bias is None else bias.to(x.dtype), groups=d)
    if activation == "silu":
        y = F.silu(y)
    return y, xpad[:, :, L:].clone()  # the last W-1 columns (xpad has W-1+L)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One step: dot of the window [conv_state, x] with the taps (float32 sum), then slide the window."""
    window = torch.cat([conv_state.to(x.dtype), x[:, :, None]], dim=-1)  # [Bt,D,W]
    y = (window.float() * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype), window[:, :, 1:].to(conv_state.dtype)
