"""Triton kernels for the depthwise causal conv1d of the Mamba blocks (prefill and one decode step).

Both are single passes over memory: each program reads a [BLOCK_D, BLOCK_T] tile of x plus the W-1 steps
before it (from x or, before t = 0, from the carried conv state), applies the W taps, the bias and SiLU in
float32, and writes y; programs holding the end of the sequence also write the new conv state.
Imported lazily by impl_triton (triton is an optional dependency).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from edgeports.kernels.triton_scan import check_tile_offsets, silu


@triton.jit
def _tap(x_row, s_row, t0, j, L, mask_d, s_xl, s_sw, W: tl.constexpr, HAS_S0: tl.constexpr):
    """Inputs at positions t0 + j (t0: a scalar, j: offsets within the tile; a negative position reads the
    carried state, whose last column is t = -1)."""
    t = t0 + j  # [J] positions (int32: L < 2^31)
    from_x = (t >= 0) & (t < L)
    # t0 * s_xl in 64 bits: it passes 2^31 in long prompts of row-strided views (the in_proj output);
    # the in-tile part j * s_xl stays 32-bit (check_tile_offsets), so per-element math is unchanged
    v = tl.load(x_row + tl.cast(t0, tl.int64) * s_xl + j[None, :] * s_xl, mask=mask_d[:, None] & from_x[None, :],
                other=0.0)
    from_s = (t < 0) & (t >= 1 - W)
    if HAS_S0:
        v += tl.load(s_row + (t + W - 1)[None, :] * s_sw, mask=mask_d[:, None] & from_s[None, :], other=0.0)
    return v


@triton.jit
def _conv_fwd(
    x_ptr, w_ptr, bias_ptr, s0_ptr, y_ptr, sT_ptr,
    L, DIM,
    s_xb, s_xd, s_xl, s_wd, s_ww, s_sb, s_sd, s_sw,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_S0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    # addresses: the tile's origin (b, d0, t0) in 64 bits, offsets within the tile in 32
    d0 = pid_d.to(tl.int64) * BLOCK_D
    t0 = pid_t * BLOCK_T
    dd = tl.arange(0, BLOCK_D)  # [BD] channel within the tile
    jt = tl.arange(0, BLOCK_T)  # [BT] step within the tile
    offs_d = pid_d * BLOCK_D + dd
    t = t0 + jt  # [BT]
    mask_d = offs_d < DIM
    x_row = x_ptr + b * s_xb + d0 * s_xd + dd[:, None] * s_xd  # [BD,1]
    s_row = x_row  # unused unless HAS_S0
    if HAS_S0:
        s_row = s0_ptr + b * s_sb + d0 * s_sd + dd[:, None] * s_sd
    acc = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * s_wd + k * s_ww, mask=mask_d, other=0.0).to(tl.float32)  # [BD]
        xk = _tap(x_row, s_row, t0, jt + (k - (W - 1)), L, mask_d, s_xl, s_sw, W, HAS_S0)  # [BD,BT]
        acc += wk[:, None] * xk.to(tl.float32)
    if SILU:
        acc = silu(acc)
    y_row = y_ptr + (b * DIM + d0) * L + dd[:, None] * L  # y is contiguous [Bt,D,L]
    tl.store(y_row + t[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask_d[:, None] & (t < L)[None, :])
    if pid_t == tl.num_programs(0) - 1:  # the new state: the last W-1 inputs of cat(state, x)
        j = tl.arange(0, BLOCK_W)
        last = _tap(x_row, s_row, L - (W - 1), j, L, mask_d, s_xl, s_sw, W, HAS_S0)
        s_off = b * DIM * (W - 1) + offs_d[:, None] * (W - 1) + j[None, :]
        tl.store(sT_ptr + s_off, last.to(sT_ptr.dtype.element_ty), mask=mask_d[:, None] & (j < W - 1)[None, :])


def conv_config(dim: int, L: int, channels_contiguous: bool = False) -> dict:
    """Tile [BLOCK_D, BLOCK_T] of 2048 elements: long along whichever axis x is contiguous in (H100 sweep in
    benchmarks/NOTES-kernels.md: 16x128 for [Bt,D,L] inputs, 64x32 for [Bt,L,D] views)."""
    if channels_contiguous:
        block_t = max(16, min(32, triton.next_power_of_2(L)))
    else:
        block_t = max(16, min(128, triton.next_power_of_2(L)))
    return dict(BLOCK_D=max(1, 2048 // block_t), BLOCK_T=block_t, num_warps=4)


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None, config: dict | None = None):
    """Launch _conv_fwd; shapes as edgeports.kernels.causal_conv1d (any strides)."""
    bt, dim, L = x.shape
    W = weight.shape[1]
    y = torch.empty((bt, dim, L), dtype=x.dtype, device=x.device)
    sT = torch.empty((bt, dim, W - 1), dtype=x.dtype, device=x.device)
    cfg = dict(conv_config(dim, L, x.stride(1) == 1 and L > 1), **(config or {}))
    bd, span = cfg["BLOCK_D"], cfg["BLOCK_T"] + W  # in-tile steps run from -(W-1) to BLOCK_T-1
    s0 = initial_state.stride() if initial_state is not None else (0, 0, 0)
    check_tile_offsets("causal_conv1d", (span, x.stride(2)), (bd, x.stride(1)), (bd, s0[1]), (span, s0[2]), (bd, L))
    grid = (max(1, triton.cdiv(L, cfg["BLOCK_T"])), triton.cdiv(dim, cfg["BLOCK_D"]), bt)
    _conv_fwd[grid](
        x, weight, bias, initial_state, y, sT, L, dim,
        *x.stride(), *weight.stride(), *s0,
        W=W, HAS_BIAS=bias is not None, SILU=activation == "silu", HAS_S0=initial_state is not None,
        BLOCK_W=max(2, triton.next_power_of_2(W - 1)), **cfg,
    )
    return y, sT


@triton.jit
def _conv_update_fwd(
    x_ptr, s_ptr, w_ptr, bias_ptr, y_ptr, sn_ptr,
    DIM,
    s_xb, s_xd, s_sb, s_sd, s_sw, s_wd, s_ww,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr,
    INPLACE: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    j = tl.arange(0, BLOCK_W)  # window position: 0..W-2 the state (oldest first), W-1 the new input
    mask_d = offs_d < DIM
    m_s = mask_d[:, None] & (j < W - 1)[None, :]
    win = tl.load(s_ptr + b * s_sb + offs_d[:, None] * s_sd + j[None, :] * s_sw, mask=m_s, other=0.0)
    x = tl.load(x_ptr + b * s_xb + offs_d * s_xd, mask=mask_d, other=0.0)  # [BD]
    win = tl.where((j == W - 1)[None, :], x[:, None].to(win.dtype), win)  # [BD,BW]
    wts = tl.load(w_ptr + offs_d[:, None] * s_wd + j[None, :] * s_ww, mask=mask_d[:, None] & (j < W)[None, :],
                  other=0.0)
    acc = tl.sum(win.to(tl.float32) * wts.to(tl.float32), axis=1)  # [BD]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SILU:
        acc = silu(acc)
    tl.store(y_ptr + b * DIM + offs_d, acc.to(y_ptr.dtype.element_ty), mask=mask_d)
    # the window slides by one: new state[j] = window[j + 1], read again from memory shifted by one position
    shifted = tl.load(s_ptr + b * s_sb + offs_d[:, None] * s_sd + (j + 1)[None, :] * s_sw,
                      mask=mask_d[:, None] & (j + 1 < W - 1)[None, :], other=0.0)
    shifted = tl.where((j == W - 2)[None, :], x[:, None].to(shifted.dtype), shifted)
    if INPLACE:  # the state is overwritten: every thread of the program has read its window before any writes
        tl.debug_barrier()
    tl.store(sn_ptr + b * DIM * (W - 1) + offs_d[:, None] * (W - 1) + j[None, :],
             shifted.to(sn_ptr.dtype.element_ty), mask=m_s)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, config: dict | None = None,
                         out_state: torch.Tensor | None = None):
    """Launch _conv_update_fwd; shapes as edgeports.kernels.causal_conv1d_update. out_state: a contiguous
    [Bt,D,W-1] to write the new state into (`conv_state` itself for an in-place step: a program reads its
    channels' window, behind a barrier, before it writes them)."""
    bt, dim = x.shape
    W = weight.shape[1]
    y = torch.empty((bt, dim), dtype=x.dtype, device=x.device)
    new_state = torch.empty((bt, dim, W - 1), dtype=conv_state.dtype, device=x.device) if out_state is None \
        else out_state
    cfg = dict(dict(BLOCK_D=256, num_warps=4), **(config or {}))
    grid = (triton.cdiv(dim, cfg["BLOCK_D"]), bt)
    _conv_update_fwd[grid](
        x, conv_state, weight, bias, y, new_state, dim,
        *x.stride(), *conv_state.stride(), *weight.stride(),
        W=W, HAS_BIAS=bias is not None, SILU=activation == "silu",
        BLOCK_W=max(2, triton.next_power_of_2(W)), INPLACE=new_state is conv_state, **cfg,
    )
    return y, new_state
