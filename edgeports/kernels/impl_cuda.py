"""The "cuda" implementation: the CUDA kernels of the TensorRT plugins (exporters/plugins/kernels), called
through ctypes on torch CUDA tensors.

The same C entry points run inside the TensorRT engine, so testing this implementation against `ref`
tests the plugins' arithmetic without TensorRT. The library is found or built by
`edgeports.exporters.plugin_build` (nvcc, cached per GPU architecture). Inputs are made contiguous
(A/D/dt_bias of selective_state_update are passed with their strides, so expand()ed views cost nothing);
outputs are fresh tensors; states are float32. Supported dtypes: float32, float16, bfloat16.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

import torch

from edgeports.errors import EdgeportsError

__all__ = ["IMPL", "available", "causal_conv1d", "causal_conv1d_update", "selective_scan", "selective_state_update",
           "ssd_chunk_scan"]

IMPL = "cuda"
ABI_VERSION = 1  # EDGEPORTS_SSM_ABI_VERSION of edgeports_ssm.h
_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_ACT = {None: 0, "silu": 1}


# ---- ctypes mirror of exporters/plugins/include/edgeports_ssm.h -------------------------------------
class EpIn(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int32)]


class EpOut(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int32)]


def _fields(ints: list[str], ins: list[str], outs: list[str], extra: list | None = None) -> list:
    return ([(n, ctypes.c_int32) for n in ints] + (extra or []) + [(n, EpIn) for n in ins]
            + [(n, EpOut) for n in outs])


class SelectiveScanParams(ctypes.Structure):
    _fields_ = _fields(["batch", "dim", "dstate", "seqlen", "delta_softplus"],
                       ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"], ["y", "final_state"])


class SsdParams(ctypes.Structure):
    _fields_ = _fields(["batch", "seqlen", "nheads", "headdim", "ngroups", "dstate", "dt_softplus"],
                       ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state"], ["y", "final_state"],
                       [("dt_min", ctypes.c_float), ("dt_max", ctypes.c_float)])


class SsuParams(ctypes.Structure):
    _fields_ = _fields(["batch", "nheads", "headdim", "ngroups", "dstate", "dt_softplus"],
                       ["state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias"], ["y", "new_state"],
                       [("a_stride", ctypes.c_int64 * 3), ("d_stride", ctypes.c_int64 * 2),
                        ("dt_bias_stride", ctypes.c_int64 * 2)])


class ConvParams(ctypes.Structure):
    _fields_ = _fields(["batch", "dim", "seqlen", "width", "activation"], ["x", "weight", "bias", "initial_state"],
                       ["y", "final_state"])


class ConvUpdateParams(ctypes.Structure):
    _fields_ = _fields(["batch", "dim", "width", "activation"], ["x", "conv_state", "weight", "bias"],
                       ["y", "new_conv_state"])


_P = ctypes.c_void_p
_SIGNATURES = {  # name -> (restype, argtypes)
    "edgeports_ssm_abi_version": (ctypes.c_int, []),
    "edgeports_ssm_error_string": (ctypes.c_char_p, [ctypes.c_int]),
    "edgeports_selective_scan_workspace": (ctypes.c_size_t, [ctypes.POINTER(SelectiveScanParams)]),
    "edgeports_selective_scan": (ctypes.c_int, [ctypes.POINTER(SelectiveScanParams), _P, ctypes.c_size_t, _P]),
    "edgeports_ssd_chunk_scan_workspace": (ctypes.c_size_t, [ctypes.POINTER(SsdParams)]),
    "edgeports_ssd_chunk_scan": (ctypes.c_int, [ctypes.POINTER(SsdParams), _P, ctypes.c_size_t, _P]),
    "edgeports_selective_state_update": (ctypes.c_int, [ctypes.POINTER(SsuParams), _P]),
    "edgeports_causal_conv1d": (ctypes.c_int, [ctypes.POINTER(ConvParams), _P]),
    "edgeports_causal_conv1d_update": (ctypes.c_int, [ctypes.POINTER(ConvUpdateParams), _P]),
}


def load_library(path) -> ctypes.CDLL:
    """Open a kernels library and declare its entry points; checks the ABI version."""
    lib = ctypes.CDLL(str(path))
    for name, (res, args) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    if lib.edgeports_ssm_abi_version() != ABI_VERSION:
        raise EdgeportsError(f"{path}: ABI version {lib.edgeports_ssm_abi_version()}, expected {ABI_VERSION} (rebuild it)")
    return lib


@functools.cache
def _default_lib() -> ctypes.CDLL:
    from edgeports.exporters.plugin_build import find_kernels

    return load_library(find_kernels(build=True))


_override: list[ctypes.CDLL] = []  # using_library()'s stack


@contextlib.contextmanager
def using_library(lib: ctypes.CDLL):
    """Within the block the ops call `lib` (a load_library() result) instead of the default library: the
    variant benchmarks time builds of the same sources with different tuning flags through this binding."""
    _override.append(lib)
    try:
        yield lib
    finally:
        _override.pop()


def _lib() -> ctypes.CDLL:
    return _override[-1] if _override else _default_lib()


def available() -> tuple[bool, str]:
    """Needs a CUDA device and either a built library or nvcc to build one on first use."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    from edgeports.exporters import plugin_build

    try:
        path = plugin_build.find_kernels(build=False)
        return True, f"prebuilt {path}"
    except EdgeportsError:
        pass
    if plugin_build.nvcc() is None:
        return False, f"{plugin_build.KERNELS_LIB} is not built and nvcc is not here to build it"
    return True, "built with nvcc on first use"


# ---- marshalling -----------------------------------------------------------------------------------
def _dt(t: torch.Tensor) -> int:
    if t.dtype not in _DTYPES:
        raise EdgeportsError(f"cuda kernels take float32/float16/bfloat16 tensors, got {t.dtype}")
    if not t.is_cuda:
        raise EdgeportsError("cuda kernels need CUDA tensors")
    return _DTYPES[t.dtype]


def _in(t: torch.Tensor | None) -> EpIn:
    return EpIn(None, 0) if t is None else EpIn(t.data_ptr(), _dt(t))


def _out(t: torch.Tensor) -> EpOut:
    return EpOut(t.data_ptr(), _dt(t))


def _c(*ts):
    return tuple(None if t is None else t.contiguous() for t in ts)


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _check(rc: int, op: str) -> None:
    if rc == 0:
        return
    msg = _lib().edgeports_ssm_error_string(rc).decode()
    if rc < 0:
        raise EdgeportsError(f"cuda {op}: {msg}")
    raise RuntimeError(f"cuda {op}: CUDA error {rc}: {msg}")


def _call_with_workspace(op: str, params, device: torch.device, ref: torch.Tensor) -> None:
    lib = _lib()
    nbytes = getattr(lib, f"edgeports_{op}_workspace")(ctypes.byref(params))
    ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
    _check(getattr(lib, f"edgeports_{op}")(ctypes.byref(params), ws.data_ptr(), nbytes, _stream(ref)), op)


# ---- the five ops ----------------------------------------------------------------------------------
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """Mamba1 scan (contract: edgeports.kernels.selective_scan)."""
    u, delta, A, B, C, D, z, delta_bias, initial_state = _c(u, delta, A, B, C, D, z, delta_bias, initial_state)
    bt, d, L = u.shape
    n = A.shape[1]
    y = torch.empty_like(u)
    final = torch.empty((bt, d, n), dtype=torch.float32, device=u.device)
    with torch.cuda.device(u.device):
        p = SelectiveScanParams(bt, d, n, L, int(bool(delta_softplus)), _in(u), _in(delta), _in(A), _in(B), _in(C),
                                _in(D), _in(z), _in(delta_bias), _in(initial_state), _out(y), _out(final))
        _call_with_workspace("selective_scan", p, u.device, u)
    return y, final


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, dt_min=0.0,
                   dt_max=float("inf"), initial_state=None):
    """Mamba2 SSD (contract: edgeports.kernels.ssd_chunk_scan); chunk_size does not change the result."""
    x, dt, A, B, C, D, z, dt_bias, initial_state = _c(x, dt, A, B, C, D, z, dt_bias, initial_state)
    bt, L, h, p_ = x.shape
    g, n = B.shape[2], B.shape[3]
    y = torch.empty_like(x)
    final = torch.empty((bt, h, p_, n), dtype=torch.float32, device=x.device)
    with torch.cuda.device(x.device):
        p = SsdParams(bt, L, h, p_, g, n, int(bool(dt_softplus)), float(dt_min), float(dt_max), _in(x), _in(dt),
                      _in(A), _in(B), _in(C), _in(D), _in(z), _in(dt_bias), _in(initial_state), _out(y), _out(final))
        _call_with_workspace("ssd_chunk_scan", p, x.device, x)
    return y, final


def _strides(t: torch.Tensor | None, n: int, shape: tuple[int, ...]):
    if t is None:
        return (ctypes.c_int64 * n)()
    return (ctypes.c_int64 * n)(*t.expand(shape).stride())


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step (contract: edgeports.kernels.selective_state_update)."""
    state, x, dt, B, C, z = _c(state, x, dt, B, C, z)
    bt, h, p_, n = state.shape
    g = B.shape[1]
    y = torch.empty_like(x)
    new = torch.empty((bt, h, p_, n), dtype=torch.float32, device=x.device)
    with torch.cuda.device(x.device):
        p = SsuParams(bt, h, p_, g, n, int(bool(dt_softplus)), _strides(A, 3, (h, p_, n)), _strides(D, 2, (h, p_)),
                      _strides(dt_bias, 2, (h, p_)), _in(state), _in(x), _in(dt), _in(A), _in(B), _in(C), _in(D),
                      _in(z), _in(dt_bias), _out(y), _out(new))
        _check(_lib().edgeports_selective_state_update(ctypes.byref(p), _stream(x)), "selective_state_update")
    return y, new


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    """Depthwise causal conv (contract: edgeports.kernels.causal_conv1d); final_state in x's dtype."""
    if initial_state is not None:
        initial_state = initial_state.to(x.dtype)  # as ref: the window is cat(initial_state, x) in x's dtype
    x, weight, bias, initial_state = _c(x, weight, bias, initial_state)
    bt, d, L = x.shape
    w = weight.shape[1]
    y = torch.empty_like(x)
    final = torch.empty((bt, d, w - 1), dtype=x.dtype, device=x.device)
    with torch.cuda.device(x.device):
        p = ConvParams(bt, d, L, w, _ACT[activation], _in(x), _in(weight), _in(bias), _in(initial_state), _out(y),
                       _out(final))
        _check(_lib().edgeports_causal_conv1d(ctypes.byref(p), _stream(x)), "causal_conv1d")
    return y, final


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One conv step (contract: edgeports.kernels.causal_conv1d_update); new state in conv_state's dtype."""
    state_dtype = conv_state.dtype
    x, conv_state, weight, bias = _c(x, conv_state.to(x.dtype), weight, bias)  # as ref: window in x's dtype
    bt, d = x.shape
    w = weight.shape[1]
    y = torch.empty_like(x)
    new = torch.empty((bt, d, w - 1), dtype=state_dtype, device=x.device)
    with torch.cuda.device(x.device):
        p = ConvUpdateParams(bt, d, w, _ACT[activation], _in(x), _in(conv_state), _in(weight), _in(bias), _out(y),
                             _out(new))
        _check(_lib().edgeports_causal_conv1d_update(ctypes.byref(p), _stream(x)), "causal_conv1d_update")
    return y, new
