"""Triton kernel for the decode step's projections: y[N] = W[N, K] @ x[K] (+ bias), one activation row.

At decode every projection reads its whole weight to produce one row, so it is bound by memory bandwidth,
and its time is the weight's bytes over the bandwidth it reaches. Inductor lowers these M=1 matmuls to
generic reductions whose tuned configuration varies from one compile to the next (H100, mamba-2.8b's in_proj:
18.5 µs in one compile, 25.7 µs in another); this kernel has a fixed configuration per weight shape,
`config_for(N, K)`, chosen from `benchmarks/gemv.py` runs.

Each program owns BLOCK_N rows and streams their [BLOCK_N, BLOCK_K] tiles of W (read once: evict-first)
against the matching part of x, accumulating in float32. Imported lazily by edgeports.kernels.gemv (triton is
an optional dependency).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class GemvConfig:
    """One launch configuration: rows per program, K tile, warps."""

    block_n: int
    block_k: int
    warps: int


def config_for(n: int, k: int, sms: int = 132) -> GemvConfig:
    """The launch configuration for an [n, k] weight on a GPU with `sms` multiprocessors. From a sweep on the
    H100 (benchmarks/gemv.py, fp16, the projections of mamba-2.8b, mamba2-2.7b and llama-3.2-1b): K tiles of
    1024 and 2048 weights per program's tile were within 3% of each shape's best (of 40 configurations, K split
    in slices included, which never won); a weight with few rows (x_proj: 192) gets one row per program and 8
    warps, so that its few programs still keep enough loads in flight (3.2 against 4.3 µs)."""
    block_k = min(1024, max(16, triton.next_power_of_2(k)))
    block_n = max(1, 2048 // block_k)
    if triton.cdiv(n, block_n) < 2 * sms:
        return GemvConfig(1, block_k, 8)
    return GemvConfig(block_n, block_k, 4)


@triton.jit
def _gemv_kernel(x_ptr, g_ptr, w_ptr, b_ptr, r_ptr, y_ptr, N, K, stride_wn, eps,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
                 NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] rows of W
    n_mask = rn < N
    rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn  # [BN, 1]
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    sq = tl.zeros((BLOCK_K,), dtype=tl.float32)  # NORM: x^2, summed at the end
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)  # [BK]
        if EVEN_K:  # only the rows can be ragged
            w = tl.load(rows + rk[None, :], mask=n_mask[:, None], other=0.0, eviction_policy="evict_first")
            x = tl.load(x_ptr + rk).to(tl.float32)
            if NORM:
                g = tl.load(g_ptr + rk).to(tl.float32)
        else:
            k_mask = rk < K
            w = tl.load(rows + rk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0,
                        eviction_policy="evict_first")
            x = tl.load(x_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)
            if NORM:
                g = tl.load(g_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)
        if NORM:  # every program walks all of x, so each has the whole mean square at the end
            sq += x * x
            x = x * g
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)  # [BN]
    if NORM:  # W (g * x / rms(x)) = (W (g * x)) / rms(x)
        y = y * tl.rsqrt(tl.sum(sq, axis=0) / K + eps)
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:  # a residual block's add, in float32 before y is rounded
        y += tl.load(r_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_mask)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: GemvConfig | None = None, norm_weight: torch.Tensor | None = None,
         eps: float = 0.0, residual: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for an x of one row (x [..., K] with one row in all; weight [N, K] with unit
    stride along K; bias [N]) -> [..., N] in the weight's dtype, accumulated in float32. With `norm_weight` [K],
    x is RMS-normalised first: F.linear(norm_weight * x / sqrt(mean(x^2) + eps), weight, bias), in float32
    throughout (x may be float32 where the weight is not: a float32 residual stream). With `residual` (N
    elements) the result is residual + F.linear(...), added in float32, in the residual's dtype. Launches
    through torch.library.wrap_triton, so torch.compile and AOTInductor compile the kernel into their programs."""
    n, k = weight.shape
    x1 = _unit_stride(x.reshape(k))
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    g = _unit_stride(norm_weight) if norm_weight is not None else x1
    cfg = config or config_for(n, k, _sm_count(x.device))
    r = _unit_stride(residual.reshape(n)) if residual is not None else x1
    out = torch.empty(n, device=x.device, dtype=weight.dtype if residual is None else residual.dtype)
    torch.library.wrap_triton(_gemv_kernel)[(triton.cdiv(n, cfg.block_n),)](
        x1, g, weight, bias if bias is not None else x1, r, out, n, k, weight.stride(0), float(eps),
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, HAS_BIAS=bias is not None, EVEN_K=k % cfg.block_k == 0,
        NORM=norm_weight is not None, HAS_RESIDUAL=residual is not None, num_warps=cfg.warps)
    return out.view(*x.shape[:-1], n)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the triton CPU interpreter (tests): configure as for an H100
    return torch.cuda.get_device_properties(device).multi_processor_count
