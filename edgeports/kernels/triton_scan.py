"""Triton kernels for the Mamba recurrences with a per-state decay: Mamba1 `selective_scan` (prefill) and
`selective_state_update` (the decode step of Mamba1 and Mamba2).

selective_scan: one single-warp program owns BLOCK_D channels of one batch row and walks the sequence in
chunks of BLOCK_T steps, carrying the float32 state in registers. Tiles are laid out (time, state, channel),
so Triton puts channels and then states on lanes (4 channels x 8 lanes of 2 states by default) and a chunk's
steps inside each thread: the recurrence h_t = a_t h_{t-1} + b_t is an in-register `tl.associative_scan`
over time, and the carried state is folded into the chunk's first step. Per (channel, state, step) the work is
one exp2 and ~6 float32 ops, so the kernel is bound by instruction issue and the special-function unit, not
by memory; batch 1 needs the states split over lanes to give the GPU enough warps. Numbers and the variants
tried are in benchmarks/NOTES-kernels.md.

selective_state_update: one program per (batch, head, BLOCK_P rows); it reads the state once and writes the
new state once (the bytes that bound the decode step).

Imported lazily by impl_triton (triton is an optional dependency).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from edgeports.errors import EdgeportsError

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if _interpreting():  # the CPU interpreter has no libdevice: same math, numpy's log
    @triton.jit
    def _ln(x):
        return tl.log(x)
else:
    from triton.language.extra.cuda import libdevice

    @triton.jit
    def _ln(x):
        # one MUFU.LG2 instead of libdevice's ~20-instruction accurate logf (rel. error ~1e-7 either way)
        return libdevice.fast_log2f(x) * LN2


def check_tile_offsets(op: str, *pairs: tuple[int, int]) -> None:
    """Refuse a layout whose offsets within one tile do not fit in 32 bits; pairs: (tile extent, stride).

    The kernels form each address as the tile's origin (batch, head, first step, first channel) times its
    strides in 64 bits - that part passes 2^31 in long prompts of row-strided views such as Mamba2's in_proj
    output - plus the offsets within the tile in 32 bits, which keeps the per-element address math what it
    was. Triton passes a stride >= 2^31 as a 64-bit value, so only smaller ones can overflow in the tile.
    """
    for extent, stride in pairs:
        if stride < 2**31 and extent * stride >= 2**31:
            raise EdgeportsError(f"{op} (triton): a stride of {stride} elements over a tile of {extent} overflows "
                                 "32-bit offsets (a sequence or layout this large needs impl='torch')")


@triton.jit
def softplus(x):
    """log(1 + e^x), linear above 20 (as mamba_ssm: the log of a huge exp only loses precision there)."""
    return tl.where(x <= 20.0, _ln(1.0 + tl.exp2(x * LOG2E)), x)


@triton.jit
def silu(x):
    """x * sigmoid(x)."""
    return tl.fdiv(x, 1.0 + tl.exp2(-x * LOG2E))


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _selective_scan_fwd(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr,
    L, DIM, NSTATE,
    s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_ad, s_an,
    s_bb, s_bn, s_bl, s_cb, s_cn, s_cl, s_zb, s_zd, s_zl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # Tiles are laid out (time, state, channel): Triton fills lanes from the last axis, so channels go on
    # lanes first, then states (BLOCK_D=4: 4 channels x 8 lanes of 2 states), and a chunk's steps stay inside
    # each thread: the scan over time runs in registers; the sum over states adds a few lane shuffles.
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d0 = pid_d.to(tl.int64) * BLOCK_D  # the tile's origin in 64 bits, offsets within it in 32 (check_tile_offsets)
    dd = tl.arange(0, BLOCK_D)  # [BD] channel within the tile
    offs_d = pid_d * BLOCK_D + dd
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    offs_t = tl.arange(0, BLOCK_T)  # [BT]
    mask_d = offs_d < DIM
    mask_nd = (offs_n < NSTATE)[:, None] & mask_d[None, :]  # [BN,BD]
    # padded states get A = 0 and B = C = 0: they stay 0 and add nothing
    A2 = tl.load(A_ptr + offs_n[:, None] * s_an + offs_d[None, :] * s_ad, mask=mask_nd, other=0.0) * LOG2E
    hn_off = b * DIM * NSTATE + offs_d[None, :] * NSTATE + offs_n[:, None]  # [BN,BD] into [Bt,D,N]
    if HAS_H0:
        h = tl.load(h0_ptr + hn_off, mask=mask_nd, other=0.0)
    else:
        h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    u_col = u_ptr + b * s_ub + d0 * s_ud + dd[None, :] * s_ud  # [1,BD]
    dt_col = dt_ptr + b * s_tb + d0 * s_td + dd[None, :] * s_td
    if HAS_Z:
        z_col = z_ptr + b * s_zb + d0 * s_zd + dd[None, :] * s_zd
    y_col = y_ptr + (b * DIM + d0) * L + dd[None, :] * L  # y is contiguous [Bt,D,L]
    b_col = B_ptr + b * s_bb + offs_n[None, :] * s_bn  # [1,BN]
    c_col = C_ptr + b * s_cb + offs_n[None, :] * s_cn
    first = (offs_t == 0)[:, None, None]  # [BT,1,1]
    last = (offs_t == BLOCK_T - 1)[:, None, None]
    # the next chunk's inputs are loaded one iteration ahead (registers double-buffer them), so their
    # latency hides behind the current chunk's arithmetic
    m_td = (offs_t < L)[:, None] & mask_d[None, :]  # [BT,BD]
    m_tn = (offs_t < L)[:, None] & (offs_n < NSTATE)[None, :]  # [BT,BN]
    u_nx = tl.load(u_col + offs_t[:, None] * s_ul, mask=m_td, other=0.0)
    dt_nx = tl.load(dt_col + offs_t[:, None] * s_tl, mask=m_td, other=0.0)
    b_nx = tl.load(b_col + offs_t[:, None] * s_bl, mask=m_tn, other=0.0)
    c_nx = tl.load(c_col + offs_t[:, None] * s_cl, mask=m_tn, other=0.0)
    for t0 in range(0, L, BLOCK_T):
        t = t0 + offs_t  # [BT]
        m_td = (t < L)[:, None] & mask_d[None, :]
        u = u_nx.to(tl.float32)
        dt = dt_nx.to(tl.float32)
        Bm = b_nx.to(tl.float32)  # [BT,BN]
        Cm = c_nx.to(tl.float32)
        tn = t + BLOCK_T
        m_nx = (tn < L)[:, None] & mask_d[None, :]
        m_nxn = (tn < L)[:, None] & (offs_n < NSTATE)[None, :]
        # the chunk's first step times a stride in 64 bits (it passes 2^31 at long L for row-strided views:
        # Mamba1's z and dt), one scalar product per chunk; the steps within the chunk stay 32-bit
        n0 = tl.cast(t0 + BLOCK_T, tl.int64)
        u_nx = tl.load(u_col + n0 * s_ul + offs_t[:, None] * s_ul, mask=m_nx, other=0.0)
        dt_nx = tl.load(dt_col + n0 * s_tl + offs_t[:, None] * s_tl, mask=m_nx, other=0.0)
        b_nx = tl.load(b_col + n0 * s_bl + offs_t[:, None] * s_bl, mask=m_nxn, other=0.0)
        c_nx = tl.load(c_col + n0 * s_cl + offs_t[:, None] * s_cl, mask=m_nxn, other=0.0)
        if HAS_Z:
            zv = tl.load(z_col + tl.cast(t0, tl.int64) * s_zl + offs_t[:, None] * s_zl, mask=m_td, other=0.0)
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = softplus(dt)
        dt = tl.where(m_td, dt, 0.0)  # steps past L: decay 1, input 0, so the state is carried unchanged
        # a sum over a size-1 axis: Triton cannot recompute through it, so softplus runs once per (t, d) in the
        # load layout and its result is converted, instead of being recomputed by every state lane
        dt = tl.sum(dt[:, :, None], axis=2)
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])  # [BT,BN,BD]
        dBu = (dt * u)[:, None, :] * Bm[:, :, None]  # [BT,BN,BD]
        dBu = tl.where(first, dA * h[None, :, :] + dBu, dBu)  # fold the carried state into step 0
        _, hs = tl.associative_scan((dA, dBu), axis=0, combine_fn=_linear_combine)  # hs[t] = h_t
        y = tl.sum(hs * Cm[:, :, None], axis=1)  # [BT,BD]
        # the state after the chunk's last step (padded steps keep it); -0.0 lets the compiler drop the
        # other steps' terms (x + -0.0 == x exactly)
        h = tl.sum(tl.where(last, hs, -0.0), axis=0)
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            y *= silu(zv.to(tl.float32))
        tl.store(y_col + t[:, None], y.to(y_ptr.dtype.element_ty), mask=m_td)
    tl.store(hT_ptr + hn_off, h, mask=mask_nd)


def scan_config(dim: int, L: int, dtype: torch.dtype) -> dict:
    """Block sizes for _selective_scan_fwd (chosen from the H100 measurements in benchmarks/NOTES-kernels.md)."""
    # one warp = 4 channels x 8 lanes of 2 states; chunks of 16 steps per thread: 1280 warps at D=5120
    # (~2.4 per scheduler on an H100 at batch 1). Fastest of the H100 sweep at L=16k (NOTES-kernels.md)
    return dict(BLOCK_D=4, BLOCK_T=16 if L > 8 else 8, num_warps=1)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                   config: dict | None = None):
    """Launch _selective_scan_fwd; shapes as edgeports.kernels.selective_scan. `config` overrides block sizes."""
    bt, dim, L = u.shape
    nstate = A.shape[1]
    y = torch.empty((bt, dim, L), dtype=u.dtype, device=u.device)
    hT = torch.empty((bt, dim, nstate), dtype=torch.float32, device=u.device)
    h0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else None
    # B, C are shared by every channel, so each thread converts the whole chunk's values: converting them once
    # here (N/D of the bytes of u) saves ~20% of the kernel's instructions for 16-bit inputs
    B = B if B.dtype == torch.float32 else B.to(torch.float32)
    C = C if C.dtype == torch.float32 else C.to(torch.float32)
    zs = z.stride() if z is not None else (0, 0, 0)
    cfg = dict(scan_config(dim, L, u.dtype), **(config or {}))
    bd, bn, bt_ = cfg["BLOCK_D"], max(2, triton.next_power_of_2(nstate)), cfg["BLOCK_T"]
    check_tile_offsets("selective_scan", *((bt_, t.stride(2)) for t in (u, delta, B, C)), (bt_, zs[2]),
                       *((bd, s) for s in (u.stride(1), delta.stride(1), zs[1], L)), (bn, B.stride(1)),
                       (bn, C.stride(1)))
    grid = (triton.cdiv(dim, cfg["BLOCK_D"]), bt)
    _selective_scan_fwd[grid](
        u, delta, A, B, C, D, z, delta_bias, h0, y, hT,
        L, dim, nstate,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *zs,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), HAS_H0=h0 is not None, BLOCK_N=bn,
        **cfg,
    )
    return y, hT


@triton.jit
def _state_update_fwd(
    s_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, sn_ptr,
    H, P, NSTATE, HEADS_PER_GROUP,
    s_sb, s_sh, s_sp, s_sn, s_xb, s_xh, s_xp, s_tb, s_th, s_tp, s_ah, s_ap, s_an,
    s_bb, s_bg, s_bn, s_cb, s_cg, s_cn, s_dh, s_dp, s_zb, s_zh, s_zp, s_eh, s_ep,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_p = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    g = h // HEADS_PER_GROUP
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BP]
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    mask_p = offs_p < P
    mask_n = offs_n < NSTATE
    mask = mask_p[:, None] & mask_n[None, :]
    state = tl.load(s_ptr + b * s_sb + h * s_sh + offs_p[:, None] * s_sp + offs_n[None, :] * s_sn, mask=mask, other=0.0)
    x = tl.load(x_ptr + b * s_xb + h * s_xh + offs_p * s_xp, mask=mask_p, other=0.0).to(tl.float32)  # [BP]
    dt = tl.load(dt_ptr + b * s_tb + h * s_th + offs_p * s_tp, mask=mask_p, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h * s_eh + offs_p * s_ep, mask=mask_p, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)
    A = tl.load(A_ptr + h * s_ah + offs_p[:, None] * s_ap + offs_n[None, :] * s_an, mask=mask, other=0.0)
    Bv = tl.load(B_ptr + b * s_bb + g * s_bg + offs_n * s_bn, mask=mask_n, other=0.0).to(tl.float32)  # [BN]
    Cv = tl.load(C_ptr + b * s_cb + g * s_cg + offs_n * s_cn, mask=mask_n, other=0.0).to(tl.float32)
    state = state * tl.exp2(dt[:, None] * A * LOG2E) + (dt * x)[:, None] * Bv[None, :]  # [BP,BN]
    y = tl.sum(state * Cv[None, :], axis=1)  # [BP]
    if HAS_D:
        y += tl.load(D_ptr + h * s_dh + offs_p * s_dp, mask=mask_p, other=0.0).to(tl.float32) * x
    if HAS_Z:
        y *= silu(tl.load(z_ptr + b * s_zb + h * s_zh + offs_p * s_zp, mask=mask_p, other=0.0).to(tl.float32))
    base = (b * H + h) * P  # new state [Bt,H,P,N] and y [Bt,H,P] are contiguous
    tl.store(sn_ptr + (base + offs_p[:, None]) * NSTATE + offs_n[None, :], state, mask=mask)
    tl.store(y_ptr + base + offs_p, y.to(y_ptr.dtype.element_ty), mask=mask_p)


def state_update_config(P: int, N: int, total: int) -> dict:
    """State elements per 4-warp program: 512 (one 16-byte vector per thread) for a small state, so the one
    pass over it spreads over every SM even for Mamba1's single 'head'; 2048 once the state is large
    (batched decode), where fewer, longer programs keep more bytes in flight (H100 sweep, NOTES-kernels.md)."""
    block_n = max(2, triton.next_power_of_2(N))
    elems = 2048 if total >= (1 << 22) else 512
    return dict(BLOCK_P=max(1, min(triton.next_power_of_2(P), elems // block_n)), num_warps=4)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           config: dict | None = None, out_state: torch.Tensor | None = None):
    """Launch _state_update_fwd; shapes as edgeports.kernels.selective_state_update (views with stride 0 ok).
    out_state: a contiguous float32 [Bt,H,P,N] to write the new state into (`state` itself for an in-place step:
    each element is read and written by the same thread)."""
    bt, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    y = torch.empty((bt, H, P), dtype=x.dtype, device=x.device)
    new_state = torch.empty((bt, H, P, N), dtype=torch.float32, device=x.device) if out_state is None else out_state
    cfg = dict(state_update_config(P, N, bt * H * P * N), **(config or {}))
    grid = (triton.cdiv(P, cfg["BLOCK_P"]), H, bt)
    _state_update_fwd[grid](
        state, x, dt, A, B, C, D, z, dt_bias, y, new_state,
        H, P, N, H // G,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(),
        *(D.stride() if D is not None else (0, 0)), *(z.stride() if z is not None else (0, 0, 0)),
        *(dt_bias.stride() if dt_bias is not None else (0, 0)),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        BLOCK_N=max(2, triton.next_power_of_2(N)), **cfg,
    )
    return y, new_state
