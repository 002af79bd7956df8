"""Math shared by the ref and torch implementations (one place for the dt transform and gating)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 accumulation, or float64 when the inputs already are (the oracle can run in double)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def transform_dt(dt: torch.Tensor, bias: torch.Tensor | None, softplus: bool, bias_dim: int = -1,
                 clamp: tuple[float, float] | None = None) -> torch.Tensor:
    """dt (+ bias broadcast along `bias_dim`) -> softplus if asked -> clamp to `clamp` if given, in dt's dtype.

    Only ssd_chunk_scan clamps (always, per the contract, even to the default (0, inf)).
    """
    if bias is not None:
        bias = bias.to(dt.dtype)
        if bias.dim() == 1:
            shape = [1] * dt.dim()
            shape[bias_dim] = bias.shape[0]
            bias = bias.view(shape)
        dt = dt + bias  # a bias with trailing dims ([H,P] for selective_state_update) broadcasts as is
    if softplus:
        dt = F.softplus(dt)
    if clamp is not None:
        dt = dt.clamp(min=clamp[0], max=clamp[1])
    return dt


def gate(y: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """y * silu(z) (z cast to y's dtype), or y unchanged."""
    return y if z is None else y * F.silu(z.to(y.dtype))


def heads_of_groups(t: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """Expand groups to heads along `dim`: head h reads group h // (heads // groups)."""
    groups = t.shape[dim]
    return t if groups == heads else t.repeat_interleave(heads // groups, dim=dim)


def state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """selective_state_update's math (one step; ref and torch share it: there is no time loop to remove).

    state [Bt,H,P,N] f32; x, dt, z [Bt,H,P]; A [H,P,N]; B, C [Bt,G,N]; D, dt_bias [H,P].
    """
    f = acc_dtype(x)
    H = x.shape[1]
    dt = transform_dt(dt.to(f), dt_bias, dt_softplus)  # [Bt,H,P]
    B = heads_of_groups(B.to(f), H, 1)[:, :, None, :]  # [Bt,H,1,N]
    C = heads_of_groups(C.to(f), H, 1)[:, :, None, :]
    xf = x.to(f)
    h = torch.exp(dt[..., None] * A.to(f)) * state.to(f) + dt[..., None] * B * xf[..., None]  # [Bt,H,P,N]
    y = (h * C).sum(-1)  # [Bt,H,P]
    if D is not None:
        y = y + D.to(f) * xf
    return gate(y, z).to(x.dtype), h
