"""Triton kernels for Mamba2's chunked SSD (`ssd_chunk_scan`), four launches:

1. chunk_state  per (chunk, head): dt transform (bias, softplus, clamp), the within-chunk cumulative
                log-decay cs, and the chunk's own end state S_c = sum_t x_t (x) B_t * dt_t * exp(cs_end - cs_t)
                ([P, N], a tensor-core product over time, built up in sub-blocks with a running rescale).
2. chunk_cb     per (chunk, group): CB = C_c B_c^T ([T, T], the lower triangle), shared by the group's heads.
3. state_pass   per (head, slice of P*N): the only sequential part, over chunks: prev_c = state before chunk c,
                state <- exp(cs_end_c) state + S_c; writes the final state (float32).
4. chunk_scan   per (chunk, head, tile of rows x P): y = exp(cs_t) C_t prev_c   (inter-chunk)
                                                       + sum_{s<=t} CB_ts exp(cs_t - cs_s) dt_s x_s   (intra-chunk)
                                                       + D x_t, then * silu(z_t).
The internal chunk length T is a blocking choice (the result does not depend on it). Products take 16-bit
operands for 16-bit inputs (float32 accumulation) and exact float32 ("ieee") for float32 inputs.
Imported lazily by impl_triton (triton is an optional dependency).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from edgeports.kernels.triton_scan import LOG2E, check_tile_offsets, silu, softplus


@triton.jit
def _chunk_state(
    x_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, dto_ptr, cs_ptr, st_ptr,
    L, H, P, NSTATE, NCHUNK, HEADS_PER_GROUP, dt_min, dt_max,
    s_xb, s_xl, s_xh, s_xp, s_tb, s_tl, s_th, s_bb, s_bl, s_bg, s_bn,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, T: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr,
):
    # addresses: the tile's origin (b, h, g, first step) in 64 bits - a step times a row stride passes 2^31 at
    # long L for the in_proj output's views - plus offsets within the tile in 32 bits (check_tile_offsets)
    c = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    g = h // HEADS_PER_GROUP
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    A = tl.load(A_ptr + h).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h).to(tl.float32)
    row = (b * H + h) * NCHUNK + c  # dt/cs scratch: [Bt, H, NCHUNK, T] float32
    state = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    cs_off = tl.zeros((), dtype=tl.float32)  # cumulative log-decay of the chunk before this sub-block
    for k0 in tl.range(0, T, BLOCK_K, num_stages=STAGES):  # a runtime loop, so its loads are pipelined
        t0 = tl.cast(c * T + k0, tl.int64)
        t = c * T + k0 + offs_k  # [BK]
        valid = t < L
        dt = tl.load(dt_ptr + b * s_tb + t0 * s_tl + offs_k * s_tl + h * s_th, mask=valid, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = softplus(dt)
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
        dt = tl.where(valid, dt, 0.0)  # steps past L: no decay, no input
        cs_loc = tl.cumsum(dt * A, axis=0)  # [BK]
        cs_end = tl.sum(dt * A, axis=0)
        tl.store(dto_ptr + row * T + k0 + offs_k, dt)
        tl.store(cs_ptr + row * T + k0 + offs_k, cs_off + cs_loc)
        w = dt * tl.exp2((cs_end - cs_loc) * LOG2E)  # [BK] decay to the end of this sub-block
        x = tl.load(x_ptr + b * s_xb + t0 * s_xl + offs_k[:, None] * s_xl + h * s_xh + offs_p[None, :] * s_xp,
                    mask=valid[:, None] & (offs_p < P)[None, :], other=0.0)  # [BK,BP]
        Bm = tl.load(B_ptr + b * s_bb + t0 * s_bl + offs_k[:, None] * s_bl + g * s_bg + offs_n[None, :] * s_bn,
                     mask=valid[:, None] & (offs_n < NSTATE)[None, :], other=0.0)  # [BK,BN]
        xw = (x.to(tl.float32) * w[:, None]).to(x.dtype)
        state = state * tl.exp2(cs_end * LOG2E) + tl.dot(tl.trans(xw), Bm.to(xw.dtype), input_precision=PREC)  # [BP,BN]
        cs_off += cs_end
    st_off = (((b * NCHUNK + c) * H + h) * P + offs_p[:, None]) * NSTATE + offs_n[None, :]  # [Bt,NCHUNK,H,P,N]
    tl.store(st_ptr + st_off, state, mask=(offs_p < P)[:, None] & (offs_n < NSTATE)[None, :])


@triton.jit
def _chunk_cb(
    B_ptr, C_ptr, cb_ptr,
    L, G, NSTATE, NCHUNK,
    s_bb, s_bl, s_bg, s_bn, s_cb, s_cl, s_cg, s_cn,
    T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
):
    pid_mn = tl.program_id(0)
    c = tl.program_id(1)
    bg = tl.program_id(2)
    b = (bg // G).to(tl.int64)
    g = (bg % G).to(tl.int64)
    nm = T // BLOCK_M
    pm = pid_mn // nm
    pn = pid_mn % nm
    if pn > pm:  # above the diagonal: never read (causal)
        return
    jm = tl.arange(0, BLOCK_M)  # step within the tile
    offs_m = pm * BLOCK_M + jm
    offs_s = pn * BLOCK_M + jm
    offs_n = tl.arange(0, BLOCK_N)
    tm = c * T + offs_m
    ts = c * T + offs_s
    # the tiles' first steps times the row strides in 64 bits (see _chunk_state)
    tm0 = tl.cast(c * T + pm * BLOCK_M, tl.int64)
    ts0 = tl.cast(c * T + pn * BLOCK_M, tl.int64)
    Cm = tl.load(C_ptr + b * s_cb + tm0 * s_cl + jm[:, None] * s_cl + g * s_cg + offs_n[None, :] * s_cn,
                 mask=(tm < L)[:, None] & (offs_n < NSTATE)[None, :], other=0.0)  # [BM,BN]
    Bm = tl.load(B_ptr + b * s_bb + ts0 * s_bl + jm[:, None] * s_bl + g * s_bg + offs_n[None, :] * s_bn,
                 mask=(ts < L)[:, None] & (offs_n < NSTATE)[None, :], other=0.0)
    cb = tl.dot(Cm, tl.trans(Bm.to(Cm.dtype)), input_precision=PREC)  # [BM,BM]
    row = (b * NCHUNK + c) * G + g  # [Bt, NCHUNK, G, T, T]
    tl.store(cb_ptr + (row * T + offs_m[:, None]) * T + offs_s[None, :], cb)


@triton.jit
def _state_pass(
    st_ptr, cs_ptr, s0_ptr, prev_ptr, fin_ptr,
    H, PN, NCHUNK,
    T: tl.constexpr, HAS_S0: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < PN
    if HAS_S0:
        s = tl.load(s0_ptr + (b * H + h) * PN + offs, mask=mask, other=0.0)
    else:
        s = tl.zeros((BLOCK,), dtype=tl.float32)
    # chunk c+1's inputs are loaded during iteration c (the loop is a chain of dependent steps, so each
    # iteration would otherwise wait a full memory latency)
    stride_c = H * PN
    off = (b * NCHUNK * H + h) * PN + offs  # [Bt, NCHUNK, H, P*N] at chunk 0
    cs_row = cs_ptr + (b * H + h) * NCHUNK * T + T - 1  # each chunk's total log-decay
    st_n = tl.load(st_ptr + off, mask=mask, other=0.0)
    cs_n = tl.load(cs_row)
    for c in range(NCHUNK):
        st_c, cs_c = st_n, cs_n
        more = c + 1 < NCHUNK
        st_n = tl.load(st_ptr + off + stride_c, mask=mask & more, other=0.0)
        cs_n = tl.load(cs_row + T, mask=more, other=0.0)
        tl.store(prev_ptr + off, s.to(prev_ptr.dtype.element_ty), mask=mask)
        s = tl.exp2(cs_c * LOG2E) * s + st_c
        off += stride_c
        cs_row += T
    tl.store(fin_ptr + (b * H + h) * PN + offs, s, mask=mask)


@triton.jit
def _chunk_scan(
    x_ptr, z_ptr, C_ptr, D_ptr, dto_ptr, cs_ptr, cb_ptr, prev_ptr, y_ptr,
    L, H, P, NSTATE, NCHUNK, G, HEADS_PER_GROUP,
    s_xb, s_xl, s_xh, s_xp, s_zb, s_zl, s_zh, s_zp, s_cb, s_cl, s_cg, s_cn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, T: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
):
    # heads vary fastest over the launch order: the programs that read one chunk's CB tiles (shared by
    # the group's heads) run together, so those tiles come from L2 (at 64k tokens CB is larger than L2;
    # chunk-major order re-read it from memory once per head)
    bh = tl.program_id(0)
    pid_mp = tl.program_id(1)
    c = tl.program_id(2)
    # addresses: the tile's origin (b, h, g, first step, first p) in 64 bits, offsets within it in 32 (see
    # _chunk_state)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    g = h // HEADS_PER_GROUP
    n_p = tl.cdiv(P, BLOCK_P)
    pm = pid_mp // n_p
    pp = pid_mp % n_p
    jm = tl.arange(0, BLOCK_M)
    jp = tl.arange(0, BLOCK_P)
    offs_m = pm * BLOCK_M + jm  # rows (steps) within the chunk
    offs_p = pp * BLOCK_P + jp
    tm0 = tl.cast(c * T + pm * BLOCK_M, tl.int64)  # the tile's first step
    p0 = tl.cast(pp * BLOCK_P, tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    tm = c * T + offs_m
    mask_m = tm < L
    mask_p = offs_p < P
    row = (b * H + h) * NCHUNK + c
    cs_m = tl.load(cs_ptr + row * T + offs_m)  # [BM]
    # inter-chunk: the state entering the chunk, decayed to each row
    Cm = tl.load(C_ptr + b * s_cb + tm0 * s_cl + jm[:, None] * s_cl + g * s_cg + offs_n[None, :] * s_cn,
                 mask=mask_m[:, None] & (offs_n < NSTATE)[None, :], other=0.0)  # [BM,BN]
    prev = tl.load(prev_ptr + ((((b * NCHUNK + c) * H + h) * P + offs_p[None, :]) * NSTATE + offs_n[:, None]),
                   mask=mask_p[None, :] & (offs_n < NSTATE)[:, None], other=0.0)  # [BN,BP]
    acc = tl.dot(Cm, prev.to(Cm.dtype), input_precision=PREC) * tl.exp2(cs_m * LOG2E)[:, None]  # [BM,BP]
    # intra-chunk: causal, so only source blocks up to this row block
    cb_row = cb_ptr + (((b * NCHUNK + c) * G + g) * T + offs_m[:, None]) * T  # [BM,1]
    x_base = x_ptr + b * s_xb + h * s_xh + p0 * s_xp + jp[None, :] * s_xp  # [1,BP]
    for k0 in range(0, (pm + 1) * BLOCK_M, BLOCK_K):
        ks = k0 + offs_k  # [BK]
        cs_k = tl.load(cs_ptr + row * T + ks)
        dt_k = tl.load(dto_ptr + row * T + ks)
        cb = tl.load(cb_row + ks[None, :])  # [BM,BK] (blocks above the diagonal are unwritten: masked below)
        causal = offs_m[:, None] >= ks[None, :]
        decay = tl.exp2(tl.where(causal, cs_m[:, None] - cs_k[None, :], float("-inf")) * LOG2E)
        w = tl.where(causal, cb * decay * dt_k[None, :], 0.0)  # [BM,BK]
        tk = c * T + ks
        xk = tl.load(x_base + tl.cast(c * T + k0, tl.int64) * s_xl + offs_k[:, None] * s_xl,
                     mask=(tk < L)[:, None] & mask_p[None, :], other=0.0)  # [BK,BP]
        acc += tl.dot(w.to(xk.dtype), xk, input_precision=PREC)
    mask = mask_m[:, None] & mask_p[None, :]
    if HAS_D:
        xm = tl.load(x_base + tm0 * s_xl + jm[:, None] * s_xl, mask=mask, other=0.0).to(tl.float32)
        acc += tl.load(D_ptr + h).to(tl.float32) * xm
    if HAS_Z:
        zm = tl.load(z_ptr + b * s_zb + tm0 * s_zl + jm[:, None] * s_zl + h * s_zh + p0 * s_zp + jp[None, :] * s_zp,
                     mask=mask, other=0.0)
        acc *= silu(zm.to(tl.float32))
    y_off = ((b * L + tm[:, None]) * H + h) * P + offs_p[None, :]  # y is contiguous [Bt,L,H,P]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask)


def ssd_config(L: int, P: int, N: int, dtype: torch.dtype) -> dict:
    """Chunk length and tiles. 16-bit: chunks of 256 (mamba2's own), 64x64 output tiles; float32 (exact
    products, a test and CPU path) uses smaller tiles to keep registers in bounds."""
    T = 256 if dtype != torch.float32 else 64
    T = min(T, max(16, triton.next_power_of_2(L)))
    bm = min(64, T)
    return dict(T=T, BLOCK_M=bm, BLOCK_K=min(32, bm), BLOCK_P=min(64, max(16, triton.next_power_of_2(P))),
                num_warps=4, num_stages=3)


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, dt_min=0.0,
                   dt_max=float("inf"), initial_state=None, config: dict | None = None):
    """Launch the four SSD kernels; shapes as edgeports.kernels.ssd_chunk_scan. chunk_size is not used: the
    result does not depend on it, and the kernels pick their own chunk length (config["T"])."""
    bt, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    cfg = dict(ssd_config(L, P, N, x.dtype), **(config or {}))
    T, nw, ns = cfg["T"], cfg["num_warps"], cfg["num_stages"]
    nchunk = triton.cdiv(L, T)
    f32 = dict(dtype=torch.float32, device=x.device)
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    BN = max(16, triton.next_power_of_2(N))
    BP = max(16, triton.next_power_of_2(P))
    bk, bm_cb, bp = min(T, cfg.get("STATE_K", 64)), min(T, 64), min(cfg["BLOCK_P"], BP)
    span = max(bk, bm_cb, cfg["BLOCK_M"], cfg["BLOCK_K"])  # steps within a tile of any of the kernels
    zs = z.stride() if z is not None else (0, 0, 0, 0)
    check_tile_offsets("ssd_chunk_scan", *((span, t.stride(1)) for t in (x, dt, B, C)), (span, zs[1]),
                       (BP, x.stride(3)), (BP, zs[3]), (BN, B.stride(3)), (BN, C.stride(3)))
    dto = torch.empty((bt, H, nchunk, T), **f32)
    cs = torch.empty((bt, H, nchunk, T), **f32)
    states = torch.empty((bt, nchunk, H, P, N), **f32)
    _chunk_state[(nchunk, bt * H)](
        x, dt, A, B, dt_bias, dto, cs, states,
        L, H, P, N, nchunk, H // G, float(dt_min), float(dt_max),
        *x.stride(), *dt.stride(), *B.stride(),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), T=T, BLOCK_K=bk,
        BLOCK_P=BP, BLOCK_N=BN, PREC=prec, STAGES=cfg.get("STATE_STAGES", 2), num_warps=nw, num_stages=ns,
    )
    cb = torch.empty((bt, nchunk, G, T, T), **f32)
    _chunk_cb[((T // bm_cb) ** 2, nchunk, bt * G)](
        B, C, cb, L, G, N, nchunk, *B.stride(), *C.stride(),
        T=T, BLOCK_M=bm_cb, BLOCK_N=BN, PREC=prec, num_warps=nw, num_stages=ns,
    )
    # the states entering each chunk are rounded to the input dtype (they are product operands anyway)
    prev = torch.empty((bt, nchunk, H, P, N), dtype=x.dtype if x.dtype != torch.float64 else torch.float32,
                       device=x.device)
    final = torch.empty((bt, H, P, N), **f32)
    s0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else None
    blk = cfg.get("PASS_BLOCK", 512)
    _state_pass[(triton.cdiv(P * N, blk), bt * H)](
        states, cs, s0, prev, final, H, P * N, nchunk, T=T, HAS_S0=s0 is not None, BLOCK=blk, num_warps=4,
    )
    y = torch.empty((bt, L, H, P), dtype=x.dtype, device=x.device)
    grid = (bt * H, (T // cfg["BLOCK_M"]) * triton.cdiv(P, bp), nchunk)
    _chunk_scan[grid](
        x, z, C, D, dto, cs, cb, prev, y,
        L, H, P, N, nchunk, G, H // G,
        *x.stride(), *zs, *C.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, T=T, BLOCK_M=cfg["BLOCK_M"], BLOCK_P=bp,
        BLOCK_K=cfg["BLOCK_K"], BLOCK_N=BN, PREC=prec, num_warps=nw, num_stages=ns,
    )
    return y, final
