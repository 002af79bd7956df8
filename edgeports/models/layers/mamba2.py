"""The Mamba2 mixer, as transformers' Mamba2Mixer computes it; general enough for the hybrids
(Zamba2, Falcon-H1): n_groups, head dims, an optional gated norm, dt limits, muP input scaling.

    zxbcdt = in_proj(x) [* in_scale]  ->  [z | xBC | dt]
    xBC -> causal conv1d (silu) -> [x | B | C]
    y = ssd_chunk_scan(x, dt, A = -exp(A_log), B, C, D, dt_bias, softplus, clamp(dt_min, dt_max))
    y = norm(y, z)  (gated RMSNorm)   or   y * silu(z)  (norm=None, fused into the scan)  ->  out_proj
    (a norm that gates first, rmsnorm(y * silu(z)), gets the scan's gated y and no z: the same function)

State slots: "conv" [B, conv_dim, W-1] (model dtype; conv_dim = d_inner + 2 G N) and "ssm" [B, H, P, N]
(float32). Decode runs causal_conv1d_update + selective_state_update with per-head A / D / dt_bias expanded
over (P, N); like transformers and mamba_ssm's step, decode does not clamp dt to (dt_min, dt_max).
Parameter names follow transformers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeports import kernels
from edgeports.models.layers.mamba import (
    BlockFold,
    conv_slot,
    depthwise_conv,
    inverse_softplus_dt,
    linear_gemv,
    project_out,
    run_conv,
    split_linear,
    ssm_constants,
)
from edgeports.models.layers.norm import GatedRMSNorm
from edgeports.models.lm import Ctx
from edgeports.models.state import StateSlot


class Mamba2Mixer(nn.Module):
    """Mamba2 (SSD) mixer: x[B,L,hidden] -> y[B,L,hidden] with conv and ssm states.

    norm: a module called as norm(y, z) (e.g. layers.norm.GatedRMSNorm), or None for y * silu(z).
    in_scale: optional [in_proj out] vector multiplying the in_proj output (Falcon-H1's muP vector); kept
    as a non-persistent buffer (not a checkpoint weight).
    """

    def __init__(self, hidden: int, d_inner: int, n_heads: int, d_state: int = 128, n_groups: int = 1,
                 d_conv: int = 4, conv_bias: bool = True, bias: bool = False, out_bias: bool | None = None,
                 chunk_size: int = 256, dt_min: float = 0.0, dt_max: float = math.inf, norm: nn.Module | None = None,
                 in_scale: torch.Tensor | None = None):
        super().__init__()
        if d_inner % n_heads or n_heads % n_groups:
            raise ValueError(f"Mamba2Mixer: d_inner {d_inner} must split into {n_heads} heads, "
                             f"and the heads into {n_groups} groups")
        self.d_inner, self.n_heads, self.head_dim = d_inner, n_heads, d_inner // n_heads
        self.d_state, self.n_groups, self.chunk_size = d_state, n_groups, chunk_size
        self.dt_min, self.dt_max = float(dt_min), float(dt_max)
        self.conv_dim = d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(hidden, d_inner + self.conv_dim + n_heads, bias=bias)
        self.conv1d = depthwise_conv(self.conv_dim, d_conv, conv_bias)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(n_heads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n_heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(n_heads))
        self.norm = norm
        self.out_proj = nn.Linear(d_inner, hidden, bias=bias if out_bias is None else out_bias)
        self.register_buffer("in_scale", in_scale, persistent=False)

    def state_slots(self, batch: int, max_len: int) -> list[StateSlot]:
        """conv [B,conv_dim,W-1] (model dtype), ssm [B,H,P,N] float32."""
        return [conv_slot(self.conv1d, batch),
                StateSlot("ssm", "ssm", (batch, self.n_heads, self.head_dim, self.d_state), torch.float32)]

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx,
                fold: BlockFold | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x[B,L,hidden], [conv, ssm] -> y[B,L,hidden], [conv, ssm] (with a BlockFold: the block's output)."""
        conv_state, ssm_state = states
        bt, L, _ = x.shape
        H, P, G, N = self.n_heads, self.head_dim, self.n_groups, self.d_state
        # z [B,L,D_inner], xBC [B,conv_dim,L] (the conv's layout), dt [B,L,H]
        z, xBC, dt = split_linear(self.in_proj, x, (self.d_inner, self.conv_dim, H), (False, True, False), ctx,
                                  self.in_scale, fold)
        xBC, conv_state = run_conv(self.conv1d, xBC, conv_state, ctx)  # [B,conv_dim,L]
        xs, B, C = xBC.transpose(1, 2).split([self.d_inner, G * N, G * N], dim=-1)
        A, D, dt_bias = ssm_constants(self, self.dt_bias)  # [H] each
        # the scan applies y * silu(z) where that comes first: without a norm, or a gated norm that gates before it
        # normalises (Mamba2, Zamba2): the norm then reads the kernel's gated output, not y and z again
        gate_in_scan = self.norm is None or not getattr(self.norm, "norm_before_gate", True)
        gate = z if gate_in_scan else None
        if ctx.decode:
            y, ssm_state = kernels.selective_state_update(
                ssm_state, xs.reshape(bt, H, P), dt.reshape(bt, H, 1).expand(bt, H, P),
                A[:, None, None].expand(H, P, N), B.reshape(bt, G, N), C.reshape(bt, G, N),
                D[:, None].expand(H, P), None if gate is None else gate.reshape(bt, H, P),
                dt_bias[:, None].expand(H, P), True, impl=ctx.kernels, inplace=ctx.inplace_states)
        else:
            y, ssm_state = kernels.ssd_chunk_scan(
                xs.reshape(bt, L, H, P), dt, A, B.reshape(bt, L, G, N), C.reshape(bt, L, G, N), self.chunk_size,
                D, None if gate is None else gate.reshape(bt, L, H, P), dt_bias, True, self.dt_min, self.dt_max,
                None if ctx.first else ssm_state)
        y = y.reshape(bt, L, self.d_inner)
        dtype = self.out_proj.weight.dtype  # x's, but for a fold's float32 residual stream
        if ctx.gemvs and gate_in_scan and isinstance(self.norm, GatedRMSNorm) and self.norm.is_plain_rms():
            # decode with edgeports::gemv: the (ungated, one-group) norm folds into out_proj's GEMV
            out = linear_gemv(self.out_proj, y.to(dtype), self.norm, None if fold is None else fold.residual)
            return out, [conv_state, ssm_state]
        if self.norm is not None:
            y = self.norm(y, None if gate_in_scan else z)
        return project_out(self.out_proj, y.to(dtype), fold), [conv_state, ssm_state]
