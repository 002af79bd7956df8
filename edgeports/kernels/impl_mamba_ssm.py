"""The reference CUDA kernels of state-spaces/mamba (mamba_ssm) and Dao-AILab/causal-conv1d, behind our op
contract, for comparison benchmarks. Available only where both packages import and CUDA is present; the
packages are imported inside the functions, never at module import.

Adaptations to the contract (functional, float32 states):
- selective_scan: mamba_ssm's selective_scan_fn takes no initial state, so an initial_state is an error.
- selective_state_update / causal_conv1d_update update their state in place: they run on a clone.
- causal_conv1d with an initial state runs the kernel over cat(initial_state, x) and drops the first W-1
  outputs (the kernel's own initial_states path needs channel-last inputs).
- ssd_chunk_scan passes dt_limit=(dt_min, dt_max); mamba_ssm skips the clamp for the default (0, inf), which
  differs from the contract only for a negative dt without softplus.
"""

from __future__ import annotations

import importlib.util

import torch

from edgeports.errors import EdgeportsError

IMPL = "mamba_ssm"


def available() -> tuple[bool, str]:
    """Both mamba_ssm and causal_conv1d importable and a CUDA device present."""
    for pkg in ("mamba_ssm", "causal_conv1d"):
        if importlib.util.find_spec(pkg) is None:
            return False, f"{pkg} not importable (pip install edgeports[mamba])"
    if not torch.cuda.is_available():
        return False, "no CUDA device (the mamba_ssm kernels are CUDA-only)"
    return True, "mamba_ssm + causal_conv1d CUDA kernels"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """mamba_ssm.ops.selective_scan_interface.selective_scan_fn (no initial state)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    if initial_state is not None:
        raise EdgeportsError("mamba_ssm's selective_scan_fn takes no initial state (chunked Mamba1 prefill); "
                             "use impl='triton' or 'torch'")
    y, last = selective_scan_fn(u, delta, A.float(), B, C, None if D is None else D.float(), z,
                                None if delta_bias is None else delta_bias.float(), delta_softplus,
                                return_last_state=True)
    return y, last.float()


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """mamba_ssm.ops.triton.selective_state_update, on a copy of the state."""
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update as ssu

    new_state = state.float().clone()
    y = ssu(new_state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    return y.to(x.dtype), new_state


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, dt_min=0.0,
                   dt_max=float("inf"), initial_state=None):
    """mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined with final states."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    y, final = mamba_chunk_scan_combined(x, dt, A.float(), B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                         initial_states=initial_state, dt_softplus=dt_softplus,
                                         dt_limit=(dt_min, dt_max), return_final_states=True)
    return y, final.float()


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    """causal_conv1d.causal_conv1d_fn; the final state is the last W-1 inputs."""
    from causal_conv1d import causal_conv1d_fn

    W, L = weight.shape[1], x.shape[2]
    xin = x if initial_state is None else torch.cat([initial_state.to(x.dtype), x], dim=-1)
    y = causal_conv1d_fn(xin.contiguous(), weight, bias, activation=activation)[..., xin.shape[-1] - L:]
    tail = xin if initial_state is not None else torch.cat([x.new_zeros(x.shape[0], x.shape[1], W - 1), x], -1)
    return y, tail[..., tail.shape[-1] - (W - 1):].clone()


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """causal_conv1d.causal_conv1d_update, on a copy of the state."""
    from causal_conv1d import causal_conv1d_update as ccu

    new_state = conv_state.clone()
    return ccu(x, new_state, weight, bias, activation), new_state
