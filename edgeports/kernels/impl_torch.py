"""The torch implementation: chunked, loop-free over time where possible, exportable (CPU and ONNX path).

- ssd_chunk_scan (Mamba2): the SSD algorithm with no loop at all: segment sums within chunks and a
  [chunks+1, chunks+1] decay matrix over chunks for passing states (per head the decay is a scalar, so
  that matrix stays small).
- selective_scan (Mamba1): per-channel-per-state decay makes a matrix over chunks too large, so it
  scans over chunks of CHUNK_M1 steps, with a log-depth (Hillis-Steele) parallel scan inside each chunk;
  only one chunk's [T,Bt,D,N] states are alive at a time. Under tracing (torch.compile, torch.export, the
  dynamo ONNX exporter) the scan over chunks is torch's `scan` higher-order op, so the graph does not grow
  with L (ONNX: one `Scan` node); in eager it is a Python loop over chunks (eager `scan` would compile its
  body with dynamo on every new shape).
  Eager on the CPU runs the recurrence step by step instead (_m1_sequential): the parallel scan does
  ~3 log2(T) full passes over [T,Bt,D,N] per chunk, memory-bound work (mamba-130m's whole 1k prefill:
  ~20 s on two cores); one multiply-add per step over a cache-resident [Bt,D,N] state is L*D*N work in
  all, the exp of the decays being most of it (that prefill: ~1.3 s).
- causal_conv1d: a depthwise F.conv1d over cat(initial_state, x).

Dynamic L (torch.export with a Dim for L, min 1): chunking a symbolic L is written so that export need
not prove anything about L % T, which its solver cannot (see _num_chunks and _chunk). Verified on torch
2.13 and 2.11, with and without the opt_einsum package (see ssd_chunk_scan): export with L dynamic from 1,
and the dynamo ONNX export run by onnxruntime, match `ref` at L = 1, 5, T, T+1, 300.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeports.kernels._common import gate, transform_dt
from edgeports.kernels._common import state_update as selective_state_update  # one step: nothing to chunk

__all__ = ["CHUNK_M1", "CHUNK_M1_SEQ", "IMPL", "available", "causal_conv1d", "causal_conv1d_update", "selective_scan",
           "selective_state_update", "ssd_chunk_scan"]

IMPL = "torch"
CHUNK_M1 = 64  # Mamba1 steps per chunk: log2(64) = 6 parallel-scan levels over [Bt,D,64,N] per chunk
CHUNK_M1_SEQ = 16  # CPU eager: steps whose decays/inputs [T,Bt,D,N] are built at once (stay in cache)


def available() -> tuple[bool, str]:
    """Always available (plain torch)."""
    return True, "pure torch, chunked"


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def _symbolic(L) -> bool:
    return isinstance(L, torch.SymInt)


def _num_chunks(L, T: int, opaque: bool = True):
    """Chunks of T steps that cover L: ceil(L/T) for a concrete L. For a symbolic L (dynamic-shape
    tracing), L//T + 2, a padded tail of identity steps: nc >= 2 is provable, which dynamo assumes of a
    scanned dim and contiguity checks would otherwise guard on.

    opaque (export only): make nc an unbacked (data-dependent) symbol. As an expression of L, every later
    reshape asks sympy to prove things like (6q + 12) % (q + 2) == 0, which it cannot, so export would
    specialise L; with an opaque nc, 6*nc % nc == 0 is trivial. torch.compile just adds guards instead
    (no item() needed there). The `scan` op cannot take an unbacked length (it guards on length == 0), so
    selective_scan, which reshapes nothing by nc, passes opaque=False.
    """
    if not _symbolic(L):
        return -(-L // T)
    if not (opaque and torch.compiler.is_exporting()):
        return L // T + 2
    nc = (torch.scalar_tensor(L, dtype=torch.int64) // T + 2).item()
    torch._check(nc >= 2)
    return nc


def _chunk(t: torch.Tensor, T: int, dim: int, nc) -> torch.Tensor:
    """Split the time dim `dim` of t into (nc, T) at (dim, dim+1), zero-padding the tail.

    A concrete L pads to nc*T and reshapes. A symbolic L pads by a constant (enough for the nc of
    _num_chunks) and gathers the steps [nc, T] with one advanced index: a gather needs no bound proven,
    where a reshape or a strided view of the padded tensor would guard on L % T. Padded steps must be
    identity steps (callers pad dt with 0).
    """
    L = t.shape[dim]
    tail = [0, 0] * (t.dim() - 1 - dim)
    if not _symbolic(L):
        return F.pad(t, tail + [0, nc * T - L]).unflatten(dim, (nc, T))
    steps = torch.arange(nc, device=t.device)[:, None] * T + torch.arange(T, device=t.device)  # [nc,T]
    return F.pad(t, tail + [0, 2 * T])[(slice(None),) * dim + (steps,)]


def _unchunk(t: torch.Tensor, L, dim: int) -> torch.Tensor:
    """Inverse of _chunk: dims (dim, dim+1) = (nc, T) -> the first L steps along `dim`."""
    if not _symbolic(L):
        return t.flatten(dim, dim + 1).narrow(dim, 0, L)
    T = t.shape[dim + 1]
    pos = torch.arange(L, device=t.device)
    return t[(slice(None),) * dim + (pos // T, pos % T)]  # a gather: nothing about L % T to prove


def _same_len(L, dim: int, *tensors: torch.Tensor) -> None:
    """Tell the tracer up front that every input's time dim is the same symbol (simpler guards later)."""
    for t in tensors:
        torch._check(t.shape[dim] == L)


def _block(L, chunk: int) -> int:
    # eager with a concrete short L: a smaller block does less padded work; a symbolic L keeps the chunk
    return min(chunk, L) if isinstance(L, int) and L > 0 else chunk


# ---- Mamba1 ---------------------------------------------------------------------------------------
def _shift(t: torch.Tensor, k: int, fill: float) -> torch.Tensor:
    """t[i] <- t[i-k] along dim 0, `fill` for i < k.

    A concatenation, not F.pad: exported, F.pad is an ONNX Pad, and ONNX Runtime's CUDA Pad kernel took
    0.64 ms per call on a [64, 1, 5120, 16] fp32 chunk (about 30 GB/s; H100, onnxruntime-gpu 1.31.1), 90% of
    Mamba1's prefill there (2-layer mamba-2.8b at 1k: 276 of 308 ms). Concat is a copy."""
    return torch.cat([t.new_full((k, *t.shape[1:]), fill), t[: t.shape[0] - k]])


def _linear_scan(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of h_t = a_t h_{t-1} + b_t along dim 0, as (prod a, accumulated b); log2(T) levels.

    Composing (a1, b1) then (a2, b2) gives (a2 a1, a2 b1 + b2); every factor is a decay <= 1, so no overflow.
    """
    k = 1
    while k < a.shape[0]:
        b = b + a * _shift(b, k, 0.0)
        a = a * _shift(a, k, 1.0)
        k *= 2
    return a, b


def _m1_chunk(carry: tuple[torch.Tensor, torch.Tensor], xs: tuple[torch.Tensor, ...]):
    """One chunk, time-major. carry: (h [Bt,D,N], A [D,N]); xs: dt, dtu [T,Bt,D], B, C [T,Bt,N].
    -> ((h at the chunk end, A), y [T,Bt,D]).

    A rides in the carry rather than a closure: `scan` traces its body with dynamo, which cannot lift a
    closed-over constant tensor under export. Carries may not alias outputs, hence the clones.
    """
    h, A = carry
    dt, dtu, B, C = xs
    a = torch.exp(dt[..., None] * A)  # [T,Bt,D,N]
    b = dtu[..., None] * B[:, :, None, :]  # [T,Bt,D,N]
    a, b = _linear_scan(a, b)
    hs = a * h + b  # [T,Bt,D,N]: the state after every step of the chunk
    y = (hs * C[:, :, None, :]).sum(-1)  # [T,Bt,D]
    return (hs[-1].clone(), A.clone()), y


def _m1_sequential(h: torch.Tensor, A: torch.Tensor, dt: torch.Tensor, dtu: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence one step at a time (CPU eager). h [Bt,D,N], A [D,N]; dt, dtu [Bt,D,L]; B, C [Bt,N,L]
    -> (y [Bt,D,L], final h). Decays and inputs are built CHUNK_M1_SEQ steps at a time; each step is
    one in-place multiply-add that turns the chunk's input buffer into its states."""
    L = dt.shape[-1]
    dt, dtu, B, C = (t.permute(2, 0, 1) for t in (dt, dtu, B, C))  # time-major [L,Bt,*]
    ys = []
    for s in range(0, L, CHUNK_M1_SEQ):
        e = min(s + CHUNK_M1_SEQ, L)
        a = (dt[s:e, :, :, None] * A).exp_()  # [T,Bt,D,N]
        hs = dtu[s:e, :, :, None] * B[s:e, :, None, :]  # [T,Bt,D,N]: inputs, then (in place) states
        for t in range(e - s):
            h = hs[t].addcmul_(a[t], h)  # h_t = b_t + a_t h_{t-1}
        ys.append(torch.einsum("tbdn,tbn->tbd", hs, C[s:e]))  # [T,Bt,D] (einsum: 4x faster than matmul)
    y = torch.cat(ys).permute(1, 2, 0) if ys else dt.new_zeros((dt.shape[1], dt.shape[2], 0))
    return y, h.clone()  # h is a view of the last chunk's buffer


def _m1_chunked(h: torch.Tensor, A: torch.Tensor, dt: torch.Tensor, dtu: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunks of CHUNK_M1 steps, parallel inside, sequential (loop or `scan` op) across. Arguments and
    result as _m1_sequential."""
    L = dt.shape[-1]
    T = _block(L, CHUNK_M1)
    nc = _num_chunks(L, T, opaque=False)
    # time-major chunks [nc,T,Bt,*]; padded steps get dt = 0: decay 1, input 0, the state is unchanged
    xs = tuple(_chunk(t.permute(2, 0, 1), T, 0, nc) for t in (dt, dtu, B, C))
    if _tracing():
        from torch._higher_order_ops.scan import scan

        (h, _), ys = scan(_m1_chunk, (h, A), xs)  # ys [nc,T,Bt,D]
    else:
        outs = []
        for i in range(xs[0].shape[0]):
            (h, _), y_c = _m1_chunk((h, A), tuple(x[i] for x in xs))
            outs.append(y_c)
        ys = torch.stack(outs)
    return _unchunk(ys, L, 0).permute(1, 2, 0), h  # [Bt,D,L]


def _step_by_step(u: torch.Tensor) -> bool:
    """Whether selective_scan runs _m1_sequential: CPU eager (tests turn it off to run the chunked form)."""
    return not _tracing() and u.device.type == "cpu"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """Mamba1 scan: step by step in CPU eager (_m1_sequential), else chunks with a parallel scan inside
    (_m1_chunked: few launches on a GPU, a graph of constant size under tracing)."""
    bt, d, L = u.shape
    _same_len(L, 2, delta, B, C)
    uf, A = u.float(), A.float()
    dt = transform_dt(delta.float(), delta_bias, delta_softplus, bias_dim=1)  # [Bt,D,L]
    h = initial_state.float() if initial_state is not None else uf.new_zeros((bt, d, A.shape[1]))
    scan_fn = _m1_sequential if _step_by_step(u) else _m1_chunked
    y, h = scan_fn(h, A, dt, dt * uf, B.float(), C.float())
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
    expanded to heads.

    Every einsum has two operands: with three or more, torch.einsum asks opt_einsum (when that package is
    installed) for a contraction order, and opt_einsum needs every size as an int, which under export fails
    on the opaque chunk count ("GuardOnDataDependentSymNode ... u0") and would specialise a dynamic L. The
    pairs are the left-to-right order torch.einsum takes without opt_einsum (bit for bit the same on the CPU).
    """
    bt, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    R = H // G
    _same_len(L, 1, dt, B, C)
    T = _block(L, chunk_size)
    dt = transform_dt(dt.float(), dt_bias, dt_softplus, clamp=(dt_min, dt_max))  # [Bt,L,H]
    # chunks [Bt,c,T,...]; padded steps get dt = 0 (after the transform): identity steps, exact final state
    xf = x.float()
    nc = _num_chunks(L, T)
    X = _chunk(xf * dt[..., None], T, 1, nc).unflatten(3, (G, R))  # [Bt,c,T,G,R,P]
    Bc = _chunk(B.float(), T, 1, nc)  # [Bt,c,T,G,N]
    Cc = _chunk(C.float(), T, 1, nc)
    a = _chunk(dt * A.float(), T, 1, nc).permute(0, 3, 1, 2)  # [Bt,H,c,T] log-decays
    a_cs = torch.cumsum(a, dim=-1)
    grp = (bt, G, R, nc, T)

    # 1. within chunks: y_l = sum_{s<=l} (C_l . B_s) exp(a_{s+1} + ... + a_l) X_s
    CB = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc)[:, :, None]  # [Bt,G,1,c,T,T]
    M = CB * torch.exp(_segsum(a)).reshape(*grp, T)  # [Bt,G,R,c,T,T]
    y = torch.einsum("bgrcls,bcsgrp->bclgrp", M, X)
    # 2. each chunk's own end state (from zero)
    decay_to_end = torch.exp(a_cs[..., -1:] - a_cs).reshape(grp)  # [Bt,G,R,c,T]
    BD = torch.einsum("bclgn,bgrcl->bcgrnl", Bc, decay_to_end)  # [Bt,c,G,R,N,T]: a product, nothing summed
    states = torch.einsum("bcgrnl,bclgrp->bcgrpn", BD, X)  # [Bt,c,G,R,P,N]
    # 3. pass states across chunks with a [c+1, c+1] decay matrix (entry 0 is the initial state)
    h0 = initial_state.float() if initial_state is not None else xf.new_zeros((bt, H, P, N))
    states = torch.cat([h0.reshape(bt, 1, G, R, P, N), states], dim=1)
    decay_chunk = torch.exp(_segsum(F.pad(a_cs[..., -1], (1, 0)))).reshape(bt, G, R, nc + 1, nc + 1)
    states = torch.einsum("bgrzc,bcgrpn->bzgrpn", decay_chunk, states)  # [Bt,c+1,G,R,P,N]
    final = states[:, -1].reshape(bt, H, P, N)
    # 4. the state entering each chunk, decayed to each position and read out by C
    y_in = torch.einsum("bclgn,bcgrpn->bclgrp", Cc, states[:, :-1])  # [Bt,c,T,G,R,P]
    y = y + torch.einsum("bclgrp,bgrcl->bclgrp", y_in, torch.exp(a_cs).reshape(grp))  # a product
    y = _unchunk(y, L, 1).reshape(bt, L, H, P)
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
