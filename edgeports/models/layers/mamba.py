"""The Mamba (v1) mixer, as transformers' MambaMixer computes it, and the residual block SSM models share.

    in_proj -> [x | z];  x -> causal conv1d (silu) -> x_proj -> [dt_rank | B | C];  dt = dt_proj.weight @ dt_rank
    y = selective_scan(x, dt, A = -exp(A_log), B, C, D, z, delta_bias = dt_proj.bias, softplus)  -> out_proj

State slots: "conv" [B, D_inner, W-1] (the last W-1 conv inputs, model dtype) and "ssm" [B, D_inner, N]
(float32). Prefill runs edgeports.kernels.causal_conv1d + selective_scan; decode causal_conv1d_update +
selective_state_update (H=1, P=D_inner, one group). Parameter names follow transformers.

Layouts: the kernels take the mixer's tensors channel-first ([B, D, L]); transformers projects to [B, L, D] and
transposes, views in eager. In an exported prefill (norm.onnx_form) those transposes, and the splits of the
projections, would be real copies of [L, D]-sized tensors, so there each part is its own MatMul computed in the
layout its consumer takes (`split_linear`, `_x_proj_channel_first`): W @ x^T for the channel-first ones, which
ONNX Runtime fuses into one GEMM with a transposed operand. Eager and decode steps keep transformers' form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeports import kernels
from edgeports.kernels import gemv
from edgeports.models.layers.norm import RMSNorm, in_onnx_form
from edgeports.models.lm import FOLDED_PREFIX, Block, Ctx
from edgeports.models.state import StateSlot


def conv_slot(conv: nn.Conv1d, batch: int) -> StateSlot:
    """The "conv" slot of a depthwise conv: the last W-1 inputs of each channel, in the weights' dtype."""
    return StateSlot("conv", "conv", (batch, conv.in_channels, conv.kernel_size[0] - 1), conv.weight.dtype)


def run_conv(conv: nn.Conv1d, x: torch.Tensor, state: torch.Tensor, ctx: Ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv + SiLU over x[B,C,L] continuing `state` [B,C,W-1] -> (y[B,C,L], new state)."""
    weight = conv.weight[:, 0]  # [C,W]
    if ctx.decode:
        y, state = kernels.causal_conv1d_update(x[:, :, 0], state, weight, conv.bias, "silu", impl=ctx.kernels,
                                                inplace=ctx.inplace_states)
        return y[:, :, None], state
    return kernels.causal_conv1d(x, weight, conv.bias, None if ctx.first else state, "silu")


def channel_first_projections(ctx: Ctx) -> bool:
    """Whether to project straight into the kernels' layouts (see the module docstring): in an exported prefill.
    A decode step's [B, D, 1] transposes move nothing, and it keeps the graph it had."""
    return in_onnx_form() and not ctx.decode


@dataclass(frozen=True)
class BlockFold:
    """What a residual SSM block hands its mixer in a decode step whose projections are edgeports::gemv
    (ResidualMixerBlock): the block's RMS norm, which the mixer folds into in_proj's GEMV
    (edgeports::rms_norm_gemv), and the residual, which it adds in out_proj's GEMV. The mixer then gets the
    block's input x un-normalised and returns the block's output, residual included."""

    norm: RMSNorm
    residual: torch.Tensor  # [B,1,H]: the block's input, float32 with residual_in_fp32


def split_linear(linear: nn.Linear, x: torch.Tensor, sizes: Sequence[int], channel_first: Sequence[bool], ctx: Ctx,
                 scale: torch.Tensor | None = None, fold: BlockFold | None = None) -> list[torch.Tensor]:
    """linear(x) [* scale] for x[B,L,in], split into `sizes` along the out features: part i as [B,n_i,L] where
    channel_first[i], else [B,L,n_i]. scale: an optional [out] vector (Mamba2's in_scale); fold: linear(fold.norm(x))
    instead, as one edgeports::rms_norm_gemv (a decode step with gemvs).

    Eager: one linear, split and transposed (views, as transformers). Under channel_first_projections(ctx): one
    MatMul per part on its rows of the weight (sliced at export), the channel-first ones as W_i @ x^T, so that
    the graph holds no Split or Transpose of the [L, out] product."""
    sizes = list(sizes)
    if not channel_first_projections(ctx):  # always so in a decode step, where a fold comes
        y = linear(x) if fold is None else linear_gemv(linear, x, norm=fold.norm)
        y = y if scale is None else y * scale
        return [p.transpose(1, 2) if cf else p for p, cf in zip(y.split(sizes, dim=-1), channel_first, strict=True)]
    parts = []
    for w, b, s, cf in zip(*(_rows(t, sizes) for t in (linear.weight, linear.bias, scale)), channel_first,
                           strict=True):
        if cf:  # [n,in] @ [B,in,L]: the small [L,in] transpose folds into the MatMul (ORT's FusedMatMul transB)
            b, s = (None if t is None else t[:, None] for t in (b, s))
            p = w @ x.transpose(1, 2)
            p = p if b is None else p + b
        else:
            p = F.linear(x, w, b)
        parts.append(p if s is None else p * s)
    return parts


def _rows(t: torch.Tensor | None, sizes: list[int]) -> list[torch.Tensor | None]:
    """t's consecutive row blocks of `sizes` (Nones for no t), as slices: single-output ONNX nodes, which the
    exporter's constant folding turns into initializers where they are small (it skips a multi-output Split),
    as ONNX Runtime's does for any size when it loads the graph."""
    if t is None:
        return [None] * len(sizes)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [t[a:a + n] for a, n in zip(starts, sizes, strict=True)]


FOLDED_CONSTANTS = tuple(FOLDED_PREFIX + n for n in ("A", "D", "dt_bias"))


def ssm_constants(m: nn.Module, dt_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A = -exp(A_log), D, dt bias) in float32, as the scan kernels take them, for a mixer `m` with `A_log`
    and `D` parameters: the buffers fold_ssm_constants stored, else computed from the parameters (which a
    compiled decode step would otherwise recompute, and hand to the kernels as fresh tensors, every token).
    Buffers that a cast of the model made other than float32 lost digits: the parameters are used then."""
    folded = tuple(getattr(m, name, None) for name in FOLDED_CONSTANTS)
    if all(t is not None and t.dtype == torch.float32 for t in folded):
        return folded
    return _constants_of_parameters(m, dt_bias)


def _constants_of_parameters(m: nn.Module, dt_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return -torch.exp(m.A_log.float()), m.D.float(), dt_bias.float()


def fold_ssm_constants(m: nn.Module, dt_bias: torch.Tensor) -> None:
    """Store the constants of ssm_constants(m, dt_bias), computed from the parameters now, as non-persistent
    float32 buffers of `m` (FOLDED_CONSTANTS), read from then on instead of the parameters: call it after the
    weights are loaded and the dtype is set, and again if they change (edgeports.models.fuse.fold_constants
    does it for a whole model). Buffers already there with the same shape and device are written in place, so
    a compiled step or captured CUDA graph that reads them sees the new values."""
    with torch.no_grad():
        values = [t.float() for t in _constants_of_parameters(m, dt_bias)]
        for name, value in zip(FOLDED_CONSTANTS, values, strict=True):
            old = getattr(m, name, None)
            if old is not None and old.shape == value.shape and old.dtype == value.dtype and old.device == value.device:
                old.copy_(value)
            else:
                m.register_buffer(name, value.clone(), persistent=False)


def inverse_softplus_dt(n: int, lo: float = 1e-3, hi: float = 0.1, floor: float = 1e-4) -> torch.Tensor:
    """A dt bias whose softplus is log-uniform in [lo, hi] (the Mamba init; random weights stay realistic)."""
    dt = torch.exp(torch.rand(n) * (math.log(hi) - math.log(lo)) + math.log(lo)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def depthwise_conv(channels: int, width: int, bias: bool) -> nn.Conv1d:
    """The conv1d module of Mamba mixers (HF layout: weight [C,1,W]); only its parameters are used."""
    return nn.Conv1d(channels, channels, width, groups=channels, bias=bias, padding=width - 1)


class MambaMixer(nn.Module):
    """Mamba1 selective-SSM mixer: x[B,L,H] -> y[B,L,H] with conv and ssm states."""

    def __init__(self, hidden: int, d_inner: int, d_state: int = 16, d_conv: int = 4, dt_rank: int | None = None,
                 conv_bias: bool = True, bias: bool = False):
        super().__init__()
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = dt_rank or -(-hidden // 16)
        self.in_proj = nn.Linear(hidden, 2 * d_inner, bias=bias)
        self.conv1d = depthwise_conv(d_inner, d_conv, conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus_dt(d_inner))
        # S4D-real init (A = -[1..N] per channel), as transformers initialises it
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, hidden, bias=bias)

    def state_slots(self, batch: int, max_len: int) -> list[StateSlot]:
        """conv [B,D_inner,W-1] (model dtype), ssm [B,D_inner,N] float32."""
        return [conv_slot(self.conv1d, batch),
                StateSlot("ssm", "ssm", (batch, self.d_inner, self.d_state), torch.float32)]

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx,
                fold: BlockFold | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x[B,L,H], [conv, ssm] -> y[B,L,H], [conv, ssm] (with a BlockFold: the block's output)."""
        conv_state, ssm_state = states
        xs, z = split_linear(self.in_proj, x, (self.d_inner, self.d_inner), (True, True), ctx, fold=fold)  # [B,D,L]
        xs, conv_state = run_conv(self.conv1d, xs, conv_state, ctx)
        y, ssm_state = selective_ssm(self, xs, z, ssm_state, ctx)
        return project_out(self.out_proj, y.transpose(1, 2), fold), [conv_state, ssm_state]


def selective_ssm(m: nn.Module, xs: torch.Tensor, z: torch.Tensor, ssm_state: torch.Tensor, ctx: Ctx,
                  norms: tuple[nn.Module, nn.Module, nn.Module] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective SSM of a Mamba1 mixer `m` (its x_proj, dt_proj, A_log, D, dt_rank, d_state) on the conv
    output xs[B,D,L] gated by z[B,D,L], continuing ssm_state [B,D,N] -> (y[B,D,L], new ssm_state).

    norms: RMSNorms applied to (dt, B, C) after x_proj (Hymba's mamba_inner_layernorms).
    """
    if channel_first_projections(ctx):
        dt, B, C = _x_proj_channel_first(m, xs, norms)
        A, D, dt_bias = ssm_constants(m, m.dt_proj.bias)
        return kernels.selective_scan(xs, dt, A, B, C, D, z, dt_bias, True, None if ctx.first else ssm_state)
    ts, B, C = m.x_proj(xs.transpose(1, 2)).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    if norms is not None:
        ts, B, C = norms[0](ts), norms[1](B), norms[2](C)
    dt = (ts @ m.dt_proj.weight.t()).transpose(1, 2)  # [B,D,L]: the bias goes to the scan
    A, D, dt_bias = ssm_constants(m, m.dt_proj.bias)  # A [D,N]; D, dt_bias [D]
    if ctx.decode:  # one step: H=1 head of P=D_inner channels, one group; B, C [B,1,N] as they are
        y, ssm = kernels.selective_state_update(ssm_state[:, None], xs.transpose(1, 2), dt.transpose(1, 2),
                                                A[None], B, C, D[None], z.transpose(1, 2), dt_bias[None], True,
                                                impl=ctx.kernels, inplace=ctx.inplace_states)
        # in place, the state tensor itself goes back (a caller keeping the State in place sees nothing to copy)
        return y.transpose(1, 2), ssm_state if ctx.inplace_states else ssm[:, 0]  # [B,D,1], [B,D,N]
    return kernels.selective_scan(xs, dt, A, B.transpose(1, 2), C.transpose(1, 2), D, z, dt_bias,
                                  True, None if ctx.first else ssm_state)


def _x_proj_channel_first(m: nn.Module, xs: torch.Tensor, norms: tuple[nn.Module, nn.Module, nn.Module] | None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """selective_ssm's (dt [B,D,L] without its bias, B [B,N,L], C [B,N,L]) from xs[B,D,L] for an exported
    prefill: x_proj's three row blocks as separate MatMuls (no Split), dt = W_dt @ ts straight into [B,D,L]."""
    parts = _rows(m.x_proj.weight, [m.dt_rank, m.d_state, m.d_state])  # [R|N|N, D]
    assert m.x_proj.bias is None  # as in Mamba1 and Hymba (the eager form would add it)
    if norms is None:
        ts, B, C = (w @ xs for w in parts)  # [B,R|N|N,L]
    else:  # the norms run over R / N, the last dim of [B,L,R|N]; transposed back (R, N << D: small copies)
        ts, B, C = (norm(F.linear(xs.transpose(1, 2), w)).transpose(1, 2) for norm, w in zip(norms, parts,
                                                                                            strict=True))
    return m.dt_proj.weight @ ts, B, C


def linear_gemv(linear: nn.Linear, x: torch.Tensor, norm: nn.Module | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """linear(norm(x)) [+ residual] for x of one row as one kernel: edgeports::rms_norm_gemv with a norm (an
    RMS norm without a gate: its weight and eps), else edgeports::gemv."""
    if norm is None:
        return gemv.gemv(x, linear.weight, linear.bias, residual=residual)
    return gemv.rms_norm_gemv(x, norm.weight, norm.eps, linear.weight, linear.bias, residual=residual)


def project_out(linear: nn.Linear, y: torch.Tensor, fold: BlockFold | None) -> torch.Tensor:
    """A mixer's out_proj of y[B,L,in]; with a BlockFold, fold.residual + that as one edgeports::gemv."""
    return linear(y) if fold is None else linear_gemv(linear, y, residual=fold.residual)


class ResidualMixerBlock(Block):
    """x + mixer(norm(x)), as MambaBlock / Mamba2Block: with residual_in_fp32 the residual stream is float32
    from the first block on (the norm and mixer still run in the weights' dtype). In a decode step with gemvs
    the mixer folds the norm and the add into its projections (BlockFold)."""

    def __init__(self, norm: nn.Module, mixer: nn.Module, residual_in_fp32: bool = True):
        super().__init__()
        self.norm = norm
        self.mixer = mixer
        self.residual_in_fp32 = residual_in_fp32

    def state_slots(self, batch: int, max_len: int) -> list[StateSlot]:
        """The mixer's slots."""
        return self.mixer.state_slots(batch, max_len)

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x[B,L,H] -> x[B,L,H] (float32 if residual_in_fp32), new states."""
        residual = x.float() if self.residual_in_fp32 else x
        if ctx.gemvs and type(self.norm) is RMSNorm:
            return self.mixer(x, states, ctx, fold=BlockFold(self.norm, residual))
        h, states = self.mixer(self.norm(x.to(self.norm.weight.dtype)), states, ctx)
        return residual + h, states
