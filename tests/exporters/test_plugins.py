"""The plugin CUDA kernels (exporters/plugins): compile checks on the CPU, correctness vs impl_ref on the GPU.

CPU (CI): the C header and the ctypes mirror agree field by field (compiled with the host C compiler);
the kernels build with nvcc and the library loads and validates its arguments without a GPU; the
TensorRT plugin sources compile against TensorRT's headers where those exist.
GPU (`-m gpu`): every op through `impl="cuda"` against `impl="ref"` in float64 on fresh random inputs,
float32/float16/bfloat16, optional inputs present and absent, sequences long enough for the chunked path.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import textwrap

import pytest
import torch

from edgeports import kernels
from edgeports.exporters import plugin_build
from edgeports.kernels import impl_cuda

STRUCTS = {
    "ep_selective_scan_params": impl_cuda.SelectiveScanParams,
    "ep_ssd_params": impl_cuda.SsdParams,
    "ep_ssu_params": impl_cuda.SsuParams,
    "ep_conv_params": impl_cuda.ConvParams,
    "ep_conv_update_params": impl_cuda.ConvUpdateParams,
}


def _host_cc() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@pytest.mark.skipif(_host_cc() is None, reason="no host C compiler")
def test_header_layout_matches_ctypes(tmp_path):
    lines = []
    for cname, cls in STRUCTS.items():
        lines.append(f'printf("{cname} size %zu\\n", sizeof({cname}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{cname}.{field} %zu\\n", offsetof({cname}, {field}));')
    src = tmp_path / "layout.c"
    src.write_text(textwrap.dedent("""
        #include <stddef.h>
        #include <stdio.h>
        #include "edgeports_ssm.h"
        int main(void) {
        %s
        return 0; }
        """) % "\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run([_host_cc(), "-std=c99", "-Wall", "-Werror", "-I", str(plugin_build.PLUGIN_DIR / "include"),
                    str(src), "-o", str(exe)], check=True)
    got = dict(line.rsplit(" ", 1) for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                              check=True).stdout.splitlines())
    for cname, cls in STRUCTS.items():
        assert int(got[f"{cname} size"]) == ctypes.sizeof(cls), cname
        for field, _ in cls._fields_:
            assert int(got[f"{cname}.{field}"]) == getattr(cls, field).offset, f"{cname}.{field}"


@pytest.fixture(scope="module")
def built_kernels(tmp_path_factory):
    if plugin_build.nvcc() is None:
        pytest.skip("nvcc not found: the CUDA kernels cannot be compile-checked here")
    # sm_87 is Jetson Orin, the smallest target the containers build for
    return plugin_build.build_kernels(archs=["87"], out_dir=tmp_path_factory.mktemp("kernels"))


def test_kernels_build_and_validate_without_gpu(built_kernels):
    lib = impl_cuda.load_library(built_kernels)
    assert lib.edgeports_ssm_abi_version() == impl_cuda.ABI_VERSION
    # argument validation happens before any CUDA call, so it runs on a machine with no GPU
    empty = [impl_cuda.SelectiveScanParams(), impl_cuda.SsdParams(), impl_cuda.SsuParams()]
    assert lib.edgeports_selective_scan(ctypes.byref(empty[0]), None, 0, None) == -1
    assert lib.edgeports_ssd_chunk_scan(ctypes.byref(empty[1]), None, 0, None) == -1
    assert lib.edgeports_selective_state_update(ctypes.byref(empty[2]), None) == -1
    assert lib.edgeports_causal_conv1d(ctypes.byref(impl_cuda.ConvParams()), None) == -1
    assert lib.edgeports_causal_conv1d_update(ctypes.byref(impl_cuda.ConvUpdateParams()), None) == -1
    assert lib.edgeports_selective_scan_workspace(ctypes.byref(empty[0])) == 0
    assert b"invalid arguments" in lib.edgeports_ssm_error_string(-1)
    # a required tensor present but dstate over the limit: unsupported, not a crash
    p = impl_cuda.SelectiveScanParams(1, 4, 65, 8, 0)
    for name in ("u", "delta", "A", "B", "C"):
        setattr(p, name, impl_cuda.EpIn(1, 0))
    p.y, p.final_state = impl_cuda.EpOut(1, 0), impl_cuda.EpOut(1, 0)
    assert lib.edgeports_selective_scan(ctypes.byref(p), None, 0, None) == -3


def _tensorrt_include() -> str | None:
    """TensorRT's include directory (or $EDGEPORTS_TRT_INCLUDE: any header set declaring its plugin API)."""
    if os.environ.get("EDGEPORTS_TRT_INCLUDE"):
        return os.environ["EDGEPORTS_TRT_INCLUDE"]
    roots = [os.environ.get(plugin_build.ENV_TRT_ROOT, ""), "/usr", "/usr/local/tensorrt"]
    for root in filter(None, roots):
        for inc in (f"{root}/include", f"{root}/include/x86_64-linux-gnu", f"{root}/include/aarch64-linux-gnu"):
            if os.path.isfile(f"{inc}/NvInferRuntime.h"):
                return inc
    return None


@pytest.mark.skipif(_tensorrt_include() is None, reason="TensorRT headers not found (set TENSORRT_ROOT)")
@pytest.mark.skipif(plugin_build.cuda_include() is None, reason="CUDA headers not found (the plugins include them)")
def test_plugin_sources_compile_against_tensorrt_headers():
    cuda_inc = plugin_build.cuda_include()
    for src in plugin_build.plugin_sources():
        subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
                        "-I", _tensorrt_include(), "-I", cuda_inc, "-I", str(plugin_build.PLUGIN_DIR / "include"),
                        str(src)], check=True)


# ---- GPU: correctness against the reference --------------------------------------------------------
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 2e-2)}  # rtol, atol/scale


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, state: bool = False):
    """Compare with the float64 oracle; states are float32 whatever the input dtype."""
    rtol, atol = TOL[torch.float32 if state else dtype]
    expected = expected.to(actual.dtype).double() if not state else expected
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol * scale)


def _ref(fn: str, *args, **kw):
    """The oracle: impl_ref on the same (already rounded) inputs, in float64."""
    dbl = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
    kdbl = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    return getattr(kernels, fn)(*dbl, **kdbl, impl="ref")


@pytest.fixture(scope="module")
def cuda_impl():
    ok, reason = impl_cuda.available()
    if not ok:
        pytest.skip(reason)
    return "cuda"


def _opt(flag: bool, t):
    return t if flag else None


# L=1000 and 700 exceed one chunk on a large GPU, so pass 1 and the combine run too.
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,full", [((2, 48, 16, 37), True), ((1, 64, 16, 1000), True),
                                        ((2, 70, 5, 300), False), ((1, 40, 48, 700), True)])
def test_selective_scan(cuda_impl, dtype, shape, full):
    bt, d, n, L = shape
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(hash(shape) % 2**31)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g, device=dev).to(dt)
    u, z = r(bt, d, L), r(bt, d, L)
    delta = r(bt, d, L, dt=torch.float32) * 0.5 - 1  # softplus'ed when `full`; else made positive (a decay)
    delta = (delta if full else delta.abs() * 0.2).to(dtype)
    A = -torch.exp(r(d, n, dt=torch.float32) * 0.5)
    B, C = r(bt, n, L), r(bt, n, L)
    D, bias, h0 = r(d, dt=torch.float32), r(d, dt=torch.float32) * 0.1, r(bt, d, n, dt=torch.float32)
    args = (u, delta, A, B, C)
    kw = dict(D=_opt(full, D), z=_opt(full, z), delta_bias=_opt(full, bias), delta_softplus=full,
              initial_state=_opt(full, h0))
    y, hT = kernels.selective_scan(*args, **kw, impl=cuda_impl)
    ey, ehT = _ref("selective_scan", *args, **kw)
    assert y.dtype == dtype and hT.dtype == torch.float32 and hT.shape == (bt, d, n)
    _close(y, ey, dtype)
    _close(hT, ehT, dtype, state=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
# 16-bit inputs with headdim 32/64/128 take the chunked tensor-core form (chunks of 128 or 64 steps, the last
# one partial here), the others the recurrence.
@pytest.mark.parametrize("shape,full", [((2, 45, 4, 8, 2, 16), True), ((1, 700, 3, 64, 1, 128), True),
                                        ((1, 300, 2, 24, 1, 48), False), ((2, 129, 6, 5, 3, 8), True),
                                        ((2, 200, 4, 32, 2, 16), True), ((1, 300, 2, 128, 1, 64), False)])
def test_ssd_chunk_scan(cuda_impl, dtype, shape, full):
    bt, L, h, p, ng, n = shape
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(hash(shape) % 2**31)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g, device=dev).to(dt)
    x, z = r(bt, L, h, p), r(bt, L, h, p)
    dt = r(bt, L, h, dt=torch.float32) * 0.5 - 1  # softplus'ed when `full`; else made positive
    dt = (dt if full else dt.abs() * 0.2).to(dtype)
    A = -torch.exp(r(h, dt=torch.float32))
    B, C = r(bt, L, ng, n), r(bt, L, ng, n)
    D, bias, h0 = r(h, dt=torch.float32), r(h, dt=torch.float32) * 0.1, r(bt, h, p, n, dt=torch.float32)
    kw = dict(D=_opt(full, D), z=_opt(full, z), dt_bias=_opt(full, bias), dt_softplus=full,
              dt_min=0.001 if full else 0.0, dt_max=0.5 if full else float("inf"), initial_state=_opt(full, h0))
    y, hT = kernels.ssd_chunk_scan(x, dt, A, B, C, 64, **kw, impl=cuda_impl)
    ey, ehT = _ref("ssd_chunk_scan", x, dt, A, B, C, 64, **kw)
    assert y.dtype == dtype and hT.dtype == torch.float32 and hT.shape == (bt, h, p, n)
    _close(y, ey, dtype)
    # the tensor-core form rounds the state's contributions to the inputs' dtype (as mamba_ssm's kernels do);
    # the recurrence keeps float32 states
    tensor_cores = dtype != torch.float32 and p in (32, 64, 128) and n % 16 == 0
    _close(hT, ehT, dtype, state=not tensor_cores)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,mamba2", [((2, 1, 40, 1, 16), False), ((3, 4, 16, 2, 64), True),
                                          ((1, 6, 8, 3, 128), True), ((2, 2, 5, 1, 7), False)])
def test_selective_state_update(cuda_impl, dtype, shape, mamba2):
    bt, h, p, ng, n = shape
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(hash(shape) % 2**31)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g, device=dev).to(dt)
    state = r(bt, h, p, n, dt=torch.float32)
    x, dt, z = r(bt, h, p), r(bt, h, p), r(bt, h, p)
    B, C = r(bt, ng, n), r(bt, ng, n)
    if mamba2:  # per-head parameters expanded over (P, N), as Mamba2 passes them
        A = (-torch.exp(r(h, dt=torch.float32)))[:, None, None].expand(h, p, n)
        D = r(h, dt=torch.float32)[:, None].expand(h, p)
        bias = r(h, dt=torch.float32)[:, None].expand(h, p)
    else:
        A, D, bias = -torch.exp(r(h, p, n, dt=torch.float32)), r(h, p, dt=torch.float32), r(h, p, dt=torch.float32)
    kw = dict(D=D, z=_opt(mamba2, z), dt_bias=bias, dt_softplus=True)
    y, s1 = kernels.selective_state_update(state, x, dt, A, B, C, **kw, impl=cuda_impl)
    ey, es1 = _ref("selective_state_update", state, x, dt, A, B, C, **kw)
    assert y.dtype == dtype and s1.dtype == torch.float32
    _close(y, ey, dtype)
    _close(s1, es1, dtype, state=True)
    y0, _ = kernels.selective_state_update(state, x, dt, A, B, C, impl=cuda_impl)  # all optionals absent
    _close(y0, _ref("selective_state_update", state, x, dt, A, B, C)[0], dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,full", [((2, 40, 33, 4), True), ((1, 16, 600, 4), True), ((3, 7, 5, 2), False),
                                        ((1, 9, 300, 3), False)])
def test_causal_conv1d_and_update(cuda_impl, dtype, shape, full):
    bt, d, L, w = shape
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(hash(shape) % 2**31)
    r = lambda *s: torch.randn(*s, generator=g, device=dev).to(dtype)
    x, weight, bias, s0 = r(bt, d, L), r(d, w), r(d), r(bt, d, w - 1)
    kw = dict(bias=_opt(full, bias), initial_state=_opt(full, s0), activation="silu" if full else None)
    y, sT = kernels.causal_conv1d(x, weight, **kw, impl=cuda_impl)
    ey, esT = _ref("causal_conv1d", x, weight, **kw)
    assert y.dtype == dtype and sT.shape == (bt, d, w - 1)
    _close(y, ey, dtype)
    _close(sT, esT, dtype)
    # decode: stepping the update through x reproduces the prefill
    state = s0 if full else torch.zeros_like(s0)
    for t in range(min(L, 6)):
        yt, state = kernels.causal_conv1d_update(x[:, :, t], state, weight, _opt(full, bias),
                                                 "silu" if full else None, impl=cuda_impl)
        _close(yt, ey[:, :, t], dtype)
    assert state.dtype == s0.dtype


# ---- GPU: the plugins themselves, driven through the calls an engine makes (no TensorRT builder) ------
@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    inc = _tensorrt_include()
    if inc is None or plugin_build.nvcc() is None:
        pytest.skip("needs TensorRT headers (TENSORRT_ROOT / EDGEPORTS_TRT_INCLUDE) and nvcc")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    out = tmp_path_factory.mktemp("harness") / "harness.so"
    link = []
    if not os.environ.get("EDGEPORTS_TRT_INCLUDE"):  # real TensorRT: getPluginRegistry lives in libnvinfer
        libdirs = [os.path.join(os.path.dirname(inc.rstrip("/")), d) for d in ("lib", "lib64")]
        link = [f"-L{d}" for d in libdirs + ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]] + ["-lnvinfer"]
    src = plugin_build.PLUGIN_DIR
    subprocess.run([plugin_build.nvcc(), "-O2", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
                    f"-gencode=arch=compute_{plugin_build.current_arch()},code=sm_{plugin_build.current_arch()}",
                    "-I", inc, "-I", str(src / "include"), *map(str, plugin_build.kernel_sources()),
                    *map(str, plugin_build.plugin_sources()), str(src / "tests" / "plugin_harness.cpp"), "-o", str(out),
                    *link], check=True)
    lib = ctypes.CDLL(str(out))
    lib.ep_harness_run.restype = ctypes.c_int
    return lib


def _run_plugin(lib, op, inputs, outputs, softplus=0, dt_min=0.0, dt_max=float("inf"), activation=""):
    """inputs: the contract's inputs in order, None where absent; outputs: (y, state) to fill."""
    kept = [t for t in inputs if t is not None]
    req = {"SelectiveScan": 5, "SsdChunkScan": 5, "SelectiveStateUpdate": 6, "CausalConv1d": 2,
           "CausalConv1dUpdate": 3}[op]
    present = sum(1 << i for i, t in enumerate(inputs[req:]) if t is not None)
    n = len(kept)
    dims = (ctypes.c_int64 * (8 * n))()
    for i, t in enumerate(kept):
        dims[8 * i: 8 * i + t.dim()] = list(t.shape)
    odims = (ctypes.c_int64 * 16)()
    for i, t in enumerate(outputs):
        odims[8 * i: 8 * i + t.dim()] = list(t.shape)
    code = lambda t: impl_cuda._DTYPES[t.dtype]
    err = ctypes.create_string_buffer(512)
    rc = lib.ep_harness_run(
        op.encode(), present, softplus, ctypes.c_float(dt_min), ctypes.c_float(dt_max), activation.encode(), n,
        (ctypes.c_int32 * n)(*[t.dim() for t in kept]), dims, (ctypes.c_int32 * n)(*map(code, kept)),
        (ctypes.c_void_p * n)(*[t.data_ptr() for t in kept]), (ctypes.c_int32 * 2)(*[t.dim() for t in outputs]),
        odims, (ctypes.c_int32 * 2)(*map(code, outputs)), (ctypes.c_void_p * 2)(*[t.data_ptr() for t in outputs]),
        ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), err, 512)
    assert rc == 0, err.value.decode()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", [0, 1])
def test_plugins_enqueue_match_ref(harness, dtype, variant):
    """Each plugin with a gap in its optional inputs (variant 0) or all of them (1), incl. broadcast A/D."""
    g = torch.Generator(device="cuda").manual_seed(7 + variant)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g, device="cuda").to(dt)
    f32 = torch.float32
    full = variant == 1
    # SelectiveScan: variant 0 passes D and initial_state only (present = 0b1001)
    bt, d, n, L = 2, 40, 16, 600
    u, delta, z, B, C = r(bt, d, L), (r(bt, d, L, dt=f32) * 0.5 - 1).to(dtype), r(bt, d, L), r(bt, n, L), r(bt, n, L)
    A, D, bias, h0 = -torch.exp(r(d, n, dt=f32) * 0.5), r(d, dt=f32), r(d, dt=f32) * 0.1, r(bt, d, n, dt=f32)
    ins = [u, delta, A, B, C, D, z if full else None, bias if full else None, h0]
    outs = [torch.empty_like(u), torch.empty(bt, d, n, device="cuda")]
    _run_plugin(harness, "SelectiveScan", ins, outs, softplus=1)
    ey, eh = _ref("selective_scan", *ins[:5], D=ins[5], z=ins[6], delta_bias=ins[7], delta_softplus=True,
                  initial_state=ins[8])
    _close(outs[0], ey, dtype)
    _close(outs[1], eh, dtype, state=True)
    # SsdChunkScan: variant 0 passes z and dt_bias only (0b0110)
    bt, L, h, p, ng, n = 1, 300, 4, 16, 2, 32
    x, dt, zz, Bs, Cs = r(bt, L, h, p), (r(bt, L, h, dt=f32) * 0.5 - 1).to(dtype), r(bt, L, h, p), r(bt, L, ng, n), r(bt, L, ng, n)
    As, Ds, bs, hs0 = -torch.exp(r(h, dt=f32)), r(h, dt=f32), r(h, dt=f32) * 0.1, r(bt, h, p, n, dt=f32)
    ins = [x, dt, As, Bs, Cs, Ds if full else None, zz, bs, hs0 if full else None]
    outs = [torch.empty_like(x), torch.empty(bt, h, p, n, device="cuda")]
    _run_plugin(harness, "SsdChunkScan", ins, outs, softplus=1, dt_min=0.001, dt_max=0.4)
    ey, eh = _ref("ssd_chunk_scan", *ins[:5], 64, D=ins[5], z=ins[6], dt_bias=ins[7], dt_softplus=True, dt_min=0.001,
                  dt_max=0.4, initial_state=ins[8])
    _close(outs[0], ey, dtype)
    _close(outs[1], eh, dtype, state=True)
    # SelectiveStateUpdate: per-head A [H,1,1] and D/dt_bias [H,1], broadcast by the plugin's strides
    bt, h, p, ng, n = 2, 4, 8, 2, 64
    st0, xs, dts, zs = r(bt, h, p, n, dt=f32), r(bt, h, p), r(bt, h, p), r(bt, h, p)
    Au, Du, bu = -torch.exp(r(h, 1, 1, dt=f32)), r(h, 1, dt=f32), r(h, 1, dt=f32)
    ins = [st0, xs, dts, Au, r(bt, ng, n), r(bt, ng, n), Du, zs if full else None, bu]
    outs = [torch.empty_like(xs), torch.empty(bt, h, p, n, device="cuda")]
    _run_plugin(harness, "SelectiveStateUpdate", ins, outs, softplus=1)
    ey, es = _ref("selective_state_update", *ins[:6], D=ins[6], z=ins[7], dt_bias=ins[8], dt_softplus=True)
    _close(outs[0], ey, dtype)
    _close(outs[1], es, dtype, state=True)
    # CausalConv1d (+ update): variant 0 has an initial state but no bias (0b10)
    bt, d, L, w = 2, 24, 300, 4
    xc, wc, bc, sc = r(bt, d, L), r(d, w), r(d), r(bt, d, w - 1)
    ins = [xc, wc, bc if full else None, sc]
    outs = [torch.empty_like(xc), torch.empty(bt, d, w - 1, device="cuda", dtype=dtype)]
    _run_plugin(harness, "CausalConv1d", ins, outs, activation="silu")
    ey, es = _ref("causal_conv1d", xc, wc, bias=ins[2], initial_state=sc, activation="silu")
    _close(outs[0], ey, dtype)
    _close(outs[1], es, dtype)
    ins = [xc[:, :, 0].contiguous(), sc, wc, bc if full else None]
    outs = [torch.empty(bt, d, device="cuda", dtype=dtype), torch.empty_like(sc)]
    _run_plugin(harness, "CausalConv1dUpdate", ins, outs, activation="silu" if full else "")
    ey, es = _ref("causal_conv1d_update", ins[0], sc, wc, bias=ins[3], activation="silu" if full else None)
    _close(outs[0], ey, dtype)
    _close(outs[1], es, dtype)
