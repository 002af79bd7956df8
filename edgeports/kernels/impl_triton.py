"""The triton implementation: GPU kernels for every op of notes/KERNELS.md (the default for CUDA tensors).

Kernels live in triton_scan.py (Mamba1 selective_scan, selective_state_update), triton_ssd.py (Mamba2 SSD)
and triton_conv.py (causal conv1d and its update); this module checks inputs and launches them. triton is
imported only when a kernel runs, so importing this module (for discovery) costs nothing.

Inputs: 16-bit or float32 activations on a CUDA device (or CPU tensors under TRITON_INTERPRET=1, the
interpreter the CPU tests use); SSM states are float32, as the contract says. float64 is the oracle's
precision and is refused (use impl="ref").
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os

import torch

from edgeports.errors import EdgeportsError

__all__ = ["IMPL", "available", "causal_conv1d", "causal_conv1d_update", "causal_conv1d_update_", "selective_scan",
           "selective_state_update", "selective_state_update_", "ssd_chunk_scan"]

IMPL = "triton"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_CAPABILITY = (8, 0)  # bf16 tensor-core products (tl.dot) need Ampere or newer


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> tuple[bool, str]:
    """(True, versions) when triton is importable and a CUDA GPU of compute capability >= 8.0 is visible
    (or the triton CPU interpreter is on); otherwise (False, why)."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton)"
    if _interpreting():
        return True, "triton CPU interpreter (TRITON_INTERPRET=1)"
    if not torch.cuda.is_available():
        return False, "no CUDA device (the triton kernels need an NVIDIA GPU)"
    cap = torch.cuda.get_device_capability()
    if cap < MIN_CAPABILITY:
        return False, f"GPU compute capability {cap[0]}.{cap[1]} < {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}"
    import triton

    return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"


def _kernels(name: str):
    return importlib.import_module(f"edgeports.kernels.triton_{name}")


def _check(op: str, main: torch.Tensor, ndim: int, *tensors: torch.Tensor | None) -> contextlib.AbstractContextManager:
    """Validate the activation's rank and dtype and that every tensor is on its device; return a context that
    makes that device current (triton launches on the current one)."""
    if main.dim() != ndim:
        raise EdgeportsError(f"{op}: expected a {ndim}-d input, got shape {tuple(main.shape)}")
    if main.dtype not in _DTYPES:
        raise EdgeportsError(f"{op} (triton) takes float16/bfloat16/float32 inputs, got {main.dtype}; "
                             "use impl='ref' or 'torch' for float64")
    if not main.is_cuda and not _interpreting():
        raise EdgeportsError(f"{op} (triton) needs CUDA tensors, got {main.device}; use impl='torch' on the CPU")
    for t in tensors:
        if t is not None and t.device != main.device:
            raise EdgeportsError(f"{op}: all tensors must be on {main.device}, one is on {t.device}")
    if main.is_cuda and main.device.index != torch.cuda.current_device():
        return torch.cuda.device(main.device)
    return contextlib.nullcontext()


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """Mamba1 prefill scan (see edgeports.kernels.selective_scan)."""
    with _check("selective_scan", u, 3, delta, A, B, C, D, z, delta_bias, initial_state):
        return _kernels("scan").selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One Mamba1/Mamba2 decode step (see edgeports.kernels.selective_state_update)."""
    with _check("selective_state_update", x, 3, state, dt, A, B, C, D, z, dt_bias):
        return _kernels("scan").selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def selective_state_update_(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """selective_state_update writing the new state into `state` (contiguous float32); returns y."""
    with _check("selective_state_update", x, 3, state, dt, A, B, C, D, z, dt_bias):
        return _kernels("scan").selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                                       out_state=state)[0]


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, dt_min=0.0,
                   dt_max=math.inf, initial_state=None):
    """Mamba2 chunked SSD prefill (see edgeports.kernels.ssd_chunk_scan)."""
    with _check("ssd_chunk_scan", x, 4, dt, A, B, C, D, z, dt_bias, initial_state):
        if x.shape[2] % B.shape[2]:
            raise EdgeportsError(f"ssd_chunk_scan: heads ({x.shape[2]}) must be a multiple of groups ({B.shape[2]})")
        return _kernels("ssd").ssd_chunk_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_min, dt_max,
                                              initial_state)


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    """Depthwise causal conv1d over a sequence (see edgeports.kernels.causal_conv1d)."""
    with _check("causal_conv1d", x, 3, weight, bias, initial_state):
        return _kernels("conv").causal_conv1d(x, weight, bias, initial_state, activation)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One decode step of causal_conv1d (see edgeports.kernels.causal_conv1d_update)."""
    with _check("causal_conv1d_update", x, 2, conv_state, weight, bias):
        return _kernels("conv").causal_conv1d_update(x, conv_state, weight, bias, activation)


def causal_conv1d_update_(x, conv_state, weight, bias=None, activation=None):
    """causal_conv1d_update writing the new state into `conv_state` (contiguous); returns y."""
    with _check("causal_conv1d_update", x, 2, conv_state, weight, bias):
        return _kernels("conv").causal_conv1d_update(x, conv_state, weight, bias, activation, out_state=conv_state)[0]
