"""`edgeports::gemv`: a projection of one activation row as one Triton kernel with a fixed configuration,
`RowGemvs`, the context that routes a program's one-row `F.linear` calls to it, and
`edgeports::rms_norm_gemv`, the same kernel with an RMS norm of its input folded in (what a layer calls itself
where a norm feeds a projection and nothing else: Mamba2's gated norm before out_proj, an SSM block's norm before
in_proj; see Ctx.gemvs). Both ops may add a residual to their output inside the kernel (an SSM block's residual
add folded into out_proj), so a Mamba block's decode step needs no norm or add kernel of its own.

The compile backend's CUDA decode step traces under RowGemvs (exporters/compile.py, option `gemv`), so every
projection of the step (q/k/v, MLP, Mamba in/x/dt/out, the LM head) is this kernel instead of the reduction
Inductor would generate for an M=1 matmul. The op is a `torch.library.triton_op`: torch.compile and
AOTInductor see the Triton kernel inside it and compile it into their programs (an AOT package needs no
Python to run it). Off CUDA the op is F.linear (the CPU tests check the routing with it). The kernel and its
configurations: edgeports/kernels/triton_gemv.py.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from edgeports.errors import EdgeportsError

Tensor = torch.Tensor


@torch.library.triton_op("edgeports::gemv", mutates_args=())
def _gemv_op(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None = None) -> Tensor:
    from edgeports.kernels import triton_gemv  # triton is optional: imported when the op runs on CUDA

    return triton_gemv.gemv(x, weight, bias, residual=residual)


@_gemv_op.register_kernel("cpu")
def _(x, weight, bias, residual=None):
    return _plus_residual(F.linear(x, weight, bias), residual)


@torch.library.triton_op("edgeports::rms_norm_gemv", mutates_args=())
def _rms_norm_gemv_op(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor, bias: Tensor | None,
                      residual: Tensor | None = None) -> Tensor:
    from edgeports.kernels import triton_gemv

    return triton_gemv.gemv(x, weight, bias, norm_weight=norm_weight, eps=eps, residual=residual)


@_rms_norm_gemv_op.register_kernel("cpu")
def _(x, norm_weight, eps, weight, bias, residual=None):
    xf = x.float()
    normed = norm_weight.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    y = F.linear(normed, weight.float(), None if bias is None else bias.float())
    return _plus_residual(y, residual, weight.dtype)


def _plus_residual(y: Tensor, residual: Tensor | None, dtype: torch.dtype | None = None) -> Tensor:
    """The CPU forms' end, as the kernel's: y (+ residual, added in float32) in the residual's dtype, else in
    `dtype` (default: y's)."""
    if residual is None:
        return y if dtype is None else y.to(dtype)
    return (residual.float().reshape(y.shape) + y.float()).to(residual.dtype)


def rms_norm_gemv(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor, bias: Tensor | None = None,
                  residual: Tensor | None = None) -> Tensor:
    """F.linear(rmsnorm(x) * norm_weight, weight, bias) for x [..., K] holding one row, as one kernel
    (`edgeports::rms_norm_gemv`): each program of the GEMV sums x^2 as it streams x, so the norm costs no
    kernel of its own. Float32 throughout (an eager norm rounds its output to x's dtype first); x may be a
    float32 residual stream in front of lower-precision weights -> [..., N] in the weight's dtype, or with
    `residual` (N elements) residual + that, in the residual's dtype."""
    _check_one_row("rms_norm_gemv", x)
    _check_residual("rms_norm_gemv", residual, weight.shape[0])
    return torch.ops.edgeports.rms_norm_gemv(x, norm_weight, float(eps), weight, bias, residual)


def gemv(x: Tensor, weight: Tensor, bias: Tensor | None = None, residual: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias) for x [..., K] holding one row, as `edgeports::gemv` -> [..., N]; with
    `residual` (N elements) residual + that, added in float32 inside the kernel, in the residual's dtype (a
    residual block's add without a kernel of its own)."""
    _check_one_row("gemv", x)
    _check_residual("gemv", residual, weight.shape[0])
    return torch.ops.edgeports.gemv(x, weight, bias, residual)


def _one_row(x: Tensor) -> bool:
    return x.dim() >= 1 and x.shape[:-1].numel() == 1


def _check_one_row(op: str, x: Tensor) -> None:
    if not _one_row(x):
        raise EdgeportsError(f"{op} takes one activation row, got x of shape {tuple(x.shape)}")


def _check_residual(op: str, residual: Tensor | None, n: int) -> None:
    if residual is not None and residual.numel() != n:
        raise EdgeportsError(f"{op}: the residual has {residual.numel()} elements, the projection {n} outputs")


def available() -> tuple[bool, str]:
    """Whether the Triton GEMV can run here: triton installed and a CUDA GPU."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, ""


_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)  # `@` arrives as Tensor.matmul


class RowGemvs(TorchFunctionMode):
    """Within this mode, a projection of one activation row runs `edgeports::gemv`: `F.linear(x, W, b)`, and
    `x @ W.t()` (a matmul by a transposed [N, K] weight, as Mamba's dt projection writes it). Every other call
    runs as it is. Works in eager, under torch.compile and under torch.export."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if weight.dim() == 2 and _one_row(x):
                return torch.ops.edgeports.gemv(x, weight, bias)
        elif func in _MATMULS and len(args) == 2 and not kwargs:
            x, w_t = args  # w_t [K, N], the transpose of a weight laid out [N, K]
            if x.dim() >= 2 and _one_row(x) and w_t.dim() == 2 and w_t.stride(0) == 1:
                return torch.ops.edgeports.gemv(x, w_t.t(), None)
        return func(*args, **kwargs)
