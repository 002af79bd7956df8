"""The triton kernels against the sequential reference (float64), on fresh random inputs.

CPU (CI): class TestInterpreter runs every kernel under triton's CPU interpreter (TRITON_INTERPRET=1) on
small shapes, in a child pytest process (the variable must be set before triton is imported). Not covered
there: libdevice's fast log2 (the interpreter has no libdevice, so softplus uses numpy's log) and the compiled
code generation — the `-m gpu` tests cover both on the device.

GPU (`-m gpu`): every op across float32/bfloat16/float16, odd lengths, group counts and chunked prefill.

Both: views whose step (or head, or channel) offsets pass 2^31 elements, the 32-bit overflow that killed
mamba2-1.3b at 256k (the CPU child maps a 9 GB buffer but touches ~0.4 GB of it).
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from edgeports.errors import EdgeportsError
from edgeports.kernels import impl_ref

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in the output"
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _f64(*ts):
    return [None if t is None else t.double() for t in ts]


# ---- random problems (one place for the CPU and GPU tests) -------------------------------------------
def scan_case(bt, dim, n, L, dtype, device, *, full=True, gen=None):
    """Mamba1 selective_scan arguments: every optional input when `full`."""
    r = lambda *s: torch.randn(*s, generator=gen).to(device)
    # without softplus, delta is used as is: keep it positive (decays < 1), or 16-bit outputs overflow
    u, delta = r(bt, dim, L).to(dtype), (0.5 * r(bt, dim, L)).to(dtype)
    delta = delta if full else delta.abs()
    A = -torch.rand(dim, n, generator=gen).to(device) * 4 - 0.1
    B, C = r(bt, n, L).to(dtype), r(bt, n, L).to(dtype)
    if not full:
        return dict(u=u, delta=delta, A=A, B=B, C=C)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=r(dim), z=r(bt, dim, L).to(dtype), delta_bias=0.3 * r(dim),
                delta_softplus=True, initial_state=r(bt, dim, n))


def ssd_case(bt, L, H, P, N, G, dtype, device, *, full=True, dt_max=math.inf, gen=None):
    """Mamba2 ssd_chunk_scan arguments (chunk_size 16)."""
    r = lambda *s: torch.randn(*s, generator=gen).to(device)
    x, dt = r(bt, L, H, P).to(dtype), (0.5 * r(bt, L, H)).to(dtype)
    A = -torch.rand(H, generator=gen).to(device) * 2 - 0.05
    B, C = r(bt, L, G, N).to(dtype), r(bt, L, G, N).to(dtype)
    base = dict(x=x, dt=dt, A=A, B=B, C=C, chunk_size=16, dt_bias=0.3 * r(H), dt_softplus=True, dt_max=dt_max)
    if not full:
        return base
    return dict(base, D=r(H), z=r(bt, L, H, P).to(dtype), initial_state=r(bt, H, P, N))


def update_case(bt, H, P, N, G, dtype, device, *, mamba2=True, gen=None):
    """selective_state_update arguments; Mamba2 style passes A, D, dt_bias as expand()ed views."""
    r = lambda *s: torch.randn(*s, generator=gen).to(device)
    if mamba2:
        A = (-torch.rand(H, generator=gen).to(device) - 0.1).view(H, 1, 1).expand(H, P, N)
        D, bias = r(H).view(H, 1).expand(H, P), r(H).view(H, 1).expand(H, P)
    else:
        A, D, bias = -torch.rand(H, P, N, generator=gen).to(device) * 4, r(H, P), r(H, P)
    return dict(state=r(bt, H, P, N), x=r(bt, H, P).to(dtype), dt=(0.5 * r(bt, H, P)).to(dtype), A=A,
                B=r(bt, G, N).to(dtype), C=r(bt, G, N).to(dtype), D=D, z=r(bt, H, P).to(dtype), dt_bias=bias,
                dt_softplus=True)


def conv_case(bt, dim, L, W, dtype, device, *, init=True, gen=None):
    """causal_conv1d arguments; x is a transposed view of [Bt,L,D] (Mamba2's layout), not contiguous."""
    r = lambda *s: torch.randn(*s, generator=gen).to(device)
    return dict(x=r(bt, L, dim).to(dtype).transpose(1, 2), weight=r(dim, W), bias=r(dim),
                initial_state=r(bt, dim, W - 1).to(dtype) if init else None, activation="silu")


def check_scan(impl, case, tol):
    y, h = impl.selective_scan(**case)
    yr, hr = impl_ref.selective_scan(*_f64(*(case.get(k) for k in ("u", "delta", "A", "B", "C", "D", "z",
                                                                      "delta_bias"))),
                                     case.get("delta_softplus", False), *_f64(case.get("initial_state")))
    assert y.dtype == case["u"].dtype and h.dtype == torch.float32
    assert _rel(y, yr) < tol and _rel(h, hr) < tol


def check_ssd(impl, case, tol):
    y, h = impl.ssd_chunk_scan(**case)
    c = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    yr, hr = impl_ref.ssd_chunk_scan(**c)
    assert y.dtype == case["x"].dtype and h.dtype == torch.float32
    assert _rel(y, yr) < tol and _rel(h, hr) < tol


def check_update(impl, case, tol):
    y, s = impl.selective_state_update(**case)
    c = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    yr, sr = impl_ref.selective_state_update(**c)
    assert y.dtype == case["x"].dtype and s.dtype == torch.float32
    assert _rel(y, yr) < tol and _rel(s, sr) < tol
    state = case["state"].float().clone()  # the in-place step writes the same numbers where the state is
    y_in = impl.selective_state_update_(**{**case, "state": state})
    assert torch.equal(y_in, y) and torch.equal(state, s)


def check_conv(impl, case, tol):
    y, s = impl.causal_conv1d(**case)
    c = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    yr, sr = impl_ref.causal_conv1d(**c)
    assert y.shape == case["x"].shape and s.shape == (*case["x"].shape[:2], case["weight"].shape[1] - 1)
    assert _rel(y, yr) < tol and _rel(s, sr) < tol
    x1, st = case["x"][:, :, 0], torch.randn_like(s)
    y1, s1 = impl.causal_conv1d_update(x1, st, case["weight"], case["bias"], case["activation"])
    y1r, s1r = impl_ref.causal_conv1d_update(*_f64(x1, st, case["weight"], case["bias"]), case["activation"])
    assert _rel(y1, y1r) < tol and _rel(s1, s1r) < tol
    y_in = impl.causal_conv1d_update_(x1, st, case["weight"], case["bias"], case["activation"])
    assert torch.equal(y_in, y1) and torch.equal(st, s1)


def check_chunked(impl, op, case, split, seq_dim):
    """Prefill in two calls (the first call's final state as the second's initial state) == one call."""
    kw = {k: v for k, v in case.items() if k != "initial_state"}
    y, h = getattr(impl, op)(**kw)
    seq = {"u", "delta", "z", "B", "C"} if op == "selective_scan" else {"x", "dt", "z", "B", "C"}
    part = lambda a, b: {k: (v.narrow(seq_dim[k], a, b - a) if k in seq else v) for k, v in kw.items()}
    L = case["u" if op == "selective_scan" else "x"].shape[2 if op == "selective_scan" else 1]
    y1, h1 = getattr(impl, op)(**part(0, split))
    y2, h2 = getattr(impl, op)(**part(split, L), initial_state=h1)
    ydim = 2 if op == "selective_scan" else 1
    tol = TOL[y.dtype]
    assert _rel(torch.cat([y1, y2], dim=ydim), y) < tol and _rel(h2, h) < max(tol, 1e-5)


SCAN_SEQ = {"u": 2, "delta": 2, "z": 2, "B": 2, "C": 2}
SSD_SEQ = {"x": 1, "dt": 1, "z": 1, "B": 1, "C": 1}


# ---- views whose steps times strides pass 2^31 (32-bit offset overflow) ---------------------------------
# A flat buffer of more than 2^31 elements, seen as rows [L, row] (Mamba2's in_proj output: a step's stride
# is the row) and as channels [row, L] (a conv output: a channel's stride is L). Only the elements a view
# covers are filled, so on the CPU the buffer stays mostly untouched virtual memory.
def wide_buffer(L: int, row: int, dtype, device, fill: bool) -> torch.Tensor:
    """[L*row] elements (> 2^31); filled with randn when `fill` (else the views fill what they cover)."""
    assert L * row > 2**31
    return torch.randn(L * row, dtype=dtype, device=device) if fill else torch.empty(L * row, dtype=dtype,
                                                                                     device=device)


def _view(buf, size, stride, offset, fill):
    v = torch.as_strided(buf, size, stride, offset)
    if fill:
        v.copy_(torch.randn(size).to(v))
    return v


def wide_conv_case(buf, L, C, W, fill):
    """causal_conv1d on C channels of the row view: x [1,C,L] with step stride row."""
    row = buf.numel() // L
    r = lambda *s: torch.randn(*s).to(buf.device)
    return dict(x=_view(buf, (1, C, L), (0, 1, row), 0, fill), weight=r(C, W), bias=r(C),
                initial_state=r(1, C, W - 1).to(buf.dtype), activation="silu")


def wide_scan_case(buf, L, D, N, fill, u_channels=False):
    """selective_scan with delta and z from the row view (step stride row); u from the row view too, or
    (u_channels) the channel view [1,D,L] (channel stride L; all row channels: D*L > 2^31 also for y)."""
    row = buf.numel() // L
    r = lambda *s: torch.randn(*s).to(buf.device)
    rows = lambda c0: _view(buf, (1, D, L), (0, 1, row), c0, fill)
    u = _view(buf, (1, D, L), (0, L, 1), 0, fill) if u_channels else rows(2 * D)
    z_at = min(D, row - D)  # z's channels start past delta's where the row leaves room
    return dict(u=u, delta=rows(0), A=-torch.rand(D, N).to(buf.device) * 4 - 0.1, B=r(1, N, L), C=r(1, N, L),
                D=r(D), z=rows(z_at), delta_bias=0.3 * r(D), delta_softplus=True, initial_state=r(1, D, N))


def wide_ssd_case(buf, L, P, N, fill):
    """ssd_chunk_scan, 3 heads: dt, B, C, z from the row view (step stride row); x from the channel view
    with heads ~row/2 channels apart, so head 2's offset (h * head stride) passes 2^31 while the stride
    itself does not (Triton would pass that as a 64-bit value)."""
    row, H = buf.numel() // L, 3
    S = (row - P) // 2  # channels between heads
    assert S * L < 2**31 <= 2 * S * L
    r = lambda *s: torch.randn(*s).to(buf.device)
    v = lambda size, stride, off: _view(buf, size, stride, off, fill)
    return dict(x=v((1, L, H, P), (0, 1, S * L, L), 0), dt=v((1, L, H), (0, row, 1), 0),
                A=-torch.rand(H).to(buf.device) * 2 - 0.05, B=v((1, L, 1, N), (0, row, N, 1), 8),
                C=v((1, L, 1, N), (0, row, N, 1), 8 + N), chunk_size=256, D=r(H),
                z=v((1, L, H, P), (0, row, P, 1), 8 + 2 * N), dt_bias=0.3 * r(H), dt_softplus=True,
                initial_state=r(1, H, P, N))


def check_wide(impl, op, case, tol, t0=0):
    """impl's op on the strided views == impl_torch's on contiguous copies of them. causal_conv1d (a local
    op) is compared from step t0 on: the reference runs on the steps from t0, the W-1 before as its state."""
    from edgeports.kernels import impl_torch

    y, h = getattr(impl, op)(**case)
    dense = dict(case)
    if op == "causal_conv1d":
        x, W = case["x"], case["weight"].shape[1]
        dense["x"], y = x[:, :, t0:], y[:, :, t0:]
        if t0:
            dense["initial_state"] = x[:, :, t0 - (W - 1):t0]
    dense = {k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in dense.items()}
    yr, hr = getattr(impl_torch, op)(**dense)
    assert _rel(y, yr) < tol and _rel(h, hr) < tol


# ---- CPU: the triton interpreter ------------------------------------------------------------------------
# triton picks the interpreter when a @triton.jit function is defined, its own library included, so the
# variable must be set before triton is first imported: these tests run in a child pytest process.
_CHILD = os.environ.get("EDGEPORTS_TRITON_INTERPRETER_CHILD") == "1"


def test_interpreter_subprocess():
    """Runs TestInterpreter in a child process with TRITON_INTERPRET=1; its report is shown on failure."""
    if _CHILD:
        pytest.skip("this is the child")
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", EDGEPORTS_TRITON_INTERPRETER_CHILD="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu",
                        f"{__file__}::TestInterpreter"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout and " skipped" not in r.stdout, r.stdout[-2000:]


@pytest.fixture(scope="class")
def interp():
    """impl_triton in the interpreter child (CPU tensors)."""
    from triton.runtime import interpreter

    orig = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        # triton 3.6's interpreter keeps scalars as 1-element arrays, and int() of those is an error from
        # numpy 2.4 on (a loop with a runtime bound hits it): index through the element instead
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(interpreter, "_patch_lang_tensor", patched)
        yield importlib.import_module("edgeports.kernels.impl_triton")


@pytest.mark.skipif(not _CHILD, reason="run by test_interpreter_subprocess in a TRITON_INTERPRET=1 child")
class TestInterpreter:
    """Small shapes, float32 (the interpreter's numpy has no bfloat16 arithmetic worth testing here)."""

    def test_available_says_interpreter(self, interp):
        ok, reason = interp.available()
        assert ok and "interpreter" in reason

    @pytest.mark.parametrize("bt,dim,n,L,full", [(2, 10, 16, 37, True), (1, 8, 4, 1, False), (1, 16, 5, 19, True)])
    def test_selective_scan(self, interp, bt, dim, n, L, full):
        check_scan(interp, scan_case(bt, dim, n, L, torch.float32, "cpu", full=full), 1e-5)

    def test_selective_scan_chunked_prefill(self, interp):
        check_chunked(interp, "selective_scan", scan_case(1, 8, 16, 29, torch.float32, "cpu"), 13, SCAN_SEQ)

    @pytest.mark.parametrize("bt,H,P,N,G,mamba2", [(2, 4, 6, 5, 2, True), (1, 1, 40, 16, 1, False)])
    def test_selective_state_update(self, interp, bt, H, P, N, G, mamba2):
        check_update(interp, update_case(bt, H, P, N, G, torch.float32, "cpu", mamba2=mamba2), 1e-5)

    @pytest.mark.parametrize("bt,L,H,P,N,G,full,dt_max", [(2, 37, 4, 8, 16, 2, True, math.inf),
                                                           (1, 1, 2, 16, 16, 1, False, math.inf),
                                                           (1, 50, 2, 20, 12, 1, True, 0.5)])
    def test_ssd_chunk_scan(self, interp, bt, L, H, P, N, G, full, dt_max):
        # the chunked SSD sums state contributions in another order than ref's sequential loop: fp32 states of
        # fresh random inputs land at 1e-6..2e-5 relative, so 1e-5 was flaky; 1e-4 still catches any real error
        check_ssd(interp, ssd_case(bt, L, H, P, N, G, torch.float32, "cpu", full=full, dt_max=dt_max), 1e-4)

    def test_ssd_chunked_prefill(self, interp):
        check_chunked(interp, "ssd_chunk_scan", ssd_case(1, 40, 2, 8, 16, 1, torch.float32, "cpu"), 21, SSD_SEQ)

    @pytest.mark.parametrize("L,W,init", [(37, 4, True), (1, 4, True), (2, 4, False), (70, 3, True)])
    def test_causal_conv1d(self, interp, L, W, init):
        check_conv(interp, conv_case(2, 6, L, W, torch.float32, "cpu", init=init), 1e-5)

    # steps times strides pass 2^31 (a 9 GB buffer, mostly never touched): the interpreter computes int32
    # offsets as the compiled kernels do, so the 32-bit overflow shows here too (it read outside the buffer)
    def test_wide_strides(self, interp):
        L = 2048
        buf = wide_buffer(L, 2**31 // L + 40_000, torch.float32, "cpu", fill=False)
        check_wide(interp, "causal_conv1d", wide_conv_case(buf, L, 6, 4, True), 1e-5)
        check_wide(interp, "selective_scan", wide_scan_case(buf, L, 5, 8, True), 1e-4)
        check_wide(interp, "ssd_chunk_scan", wide_ssd_case(buf, L, 16, 16, True), 1e-4)

    @pytest.mark.parametrize("n,k,bias,config", [(40, 100, True, None), (192, 5120, False, None),
                                                  (600, 2048, True, None), (33, 96, True, (4, 32, 2)),
                                                  (70, 256, True, (8, 64, 4)), (7, 1000, False, (2, 128, 4))])
    def test_gemv(self, interp, n, k, bias, config):
        """The decode GEMV against F.linear: default and forced configurations, ragged N and K, with and
        without bias; with an RMS norm folded in, and with a residual added."""
        from edgeports.kernels import triton_gemv

        x, w = torch.randn(1, 1, k), torch.randn(n, k)
        b = torch.randn(n) if bias else None
        cfg = triton_gemv.GemvConfig(*config) if config else None
        y = triton_gemv.gemv(x, w, b, cfg)
        assert y.shape == (1, 1, n)
        assert_gemv_close(y, x, w, b)
        g = torch.rand(k) + 0.5  # with the RMS norm folded in
        normed = g * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        y = triton_gemv.gemv(x, w, b, cfg, norm_weight=g, eps=1e-5)
        assert_gemv_close(y, normed, w, b)
        r = torch.randn(1, 1, n)  # the residual add, checked as a second bias
        b_r = r.view(n) if b is None else b + r.view(n)
        assert_gemv_close(triton_gemv.gemv(x, w, b, cfg, residual=r), x, w, b_r)
        assert_gemv_close(triton_gemv.gemv(x, w, b, cfg, norm_weight=g, eps=1e-5, residual=r), normed, w, b_r)

    def test_refuses_float64(self, interp):
        with pytest.raises(EdgeportsError, match="float64"):
            interp.causal_conv1d(torch.zeros(1, 2, 3, dtype=torch.float64), torch.zeros(2, 4))


def assert_gemv_close(y, x, w, b):
    """A float32 GEMV against the float64 product, each output within 4e-7 (~3 float32 ulps) of the sum of
    its terms' magnitudes. Rounding grows with K and with the terms' size, so a fixed atol failed now and
    then (3 in 90 draws at K=5120, N(0,1) inputs); over 90 draws the worst error was 4% of this bound, while
    leaving out 64 of K's columns overshoots it by >1000x."""
    x64, w64, b64 = x.double(), w.double(), None if b is None else b.double()
    ref = F.linear(x64, w64, b64)
    bound = 4e-7 * F.linear(x64.abs(), w64.abs(), None if b64 is None else b64.abs()) + 1e-6
    err = (y.double() - ref).abs()
    assert (err <= bound).all(), f"max error {err.max().item():.3g}, over the bound by {(err / bound).max().item():.3g}x"


def test_tile_offset_guard():
    """In-tile offsets are 32-bit: refused when extent * stride passes 2^31, unless Triton passes the stride as
    a 64-bit value (>= 2^31) anyway."""
    check = pytest.importorskip("edgeports.kernels.triton_scan").check_tile_offsets
    check("op", (256, 8704), (64, 2**31 + 5))
    with pytest.raises(EdgeportsError, match="op .triton.: a stride of 8388608"):
        check("op", (16, 1), (256, 2**23))


def test_unavailable_on_cpu_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from edgeports.kernels import impl_triton

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    ok, reason = impl_triton.available()
    assert not ok and reason


# ---- GPU ------------------------------------------------------------------------------------------------
def _poison():
    """Fill freed cached blocks with NaN, so an output element the kernel never writes cannot pass."""
    torch.full((1 << 26,), float("nan"), device="cuda")
    torch.cuda.synchronize()


@pytest.fixture
def gpu():
    from edgeports.kernels import impl_triton

    ok, reason = impl_triton.available()
    if not ok:
        pytest.skip(reason)
    _poison()
    return impl_triton


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bt,dim,n,L,full", [(2, 130, 16, 1, True), (1, 77, 16, 1000, True), (2, 64, 5, 257, False),
                                             (1, 5120, 16, 333, True)])
def test_gpu_selective_scan(gpu, dtype, bt, dim, n, L, full):
    check_scan(gpu, scan_case(bt, dim, n, L, dtype, "cuda", full=full), TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bt,L,H,P,N,G,full", [(1, 1, 4, 64, 128, 1, True), (2, 333, 8, 64, 64, 2, True),
                                               (1, 1000, 80, 64, 128, 1, True), (1, 300, 6, 24, 16, 3, False),
                                               (2, 513, 4, 32, 128, 4, True)])
def test_gpu_ssd_chunk_scan(gpu, dtype, bt, L, H, P, N, G, full):
    check_ssd(gpu, ssd_case(bt, L, H, P, N, G, dtype, "cuda", full=full), TOL[dtype])


@pytest.mark.gpu
def test_gpu_ssd_dt_limits(gpu):
    check_ssd(gpu, ssd_case(1, 300, 4, 64, 64, 1, torch.bfloat16, "cuda", dt_max=0.1), TOL[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bt,H,P,N,G,mamba2", [(1, 1, 5120, 16, 1, False), (3, 80, 64, 128, 1, True),
                                               (2, 8, 48, 64, 4, True), (1, 24, 64, 128, 8, True)])
def test_gpu_selective_state_update(gpu, dtype, bt, H, P, N, G, mamba2):
    check_update(gpu, update_case(bt, H, P, N, G, dtype, "cuda", mamba2=mamba2), TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bt,dim,L,W,init", [(1, 5120, 1, 4, True), (2, 333, 1000, 4, True), (1, 64, 3, 4, False),
                                             (2, 100, 129, 2, True)])
def test_gpu_causal_conv1d(gpu, dtype, bt, dim, L, W, init):
    check_conv(gpu, conv_case(bt, dim, L, W, dtype, "cuda", init=init), TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_chunked_prefill(gpu, dtype):
    check_chunked(gpu, "selective_scan", scan_case(1, 256, 16, 1000, dtype, "cuda"), 389, SCAN_SEQ)
    check_chunked(gpu, "ssd_chunk_scan", ssd_case(1, 1000, 8, 64, 128, 1, dtype, "cuda"), 389, SSD_SEQ)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,bias", [(10240, 2560, False), (192, 5120, False), (5120, 160, True),
                                      (2560, 5120, True), (50280, 2560, False), (77, 1000, True)])
def test_gpu_gemv(gpu, dtype, n, k, bias):
    """The decode GEMV at its configured launch (mamba-2.8b's projection shapes and a ragged one) against
    F.linear in float32, through the edgeports::gemv op (eager and compiled); the same with an RMS norm folded
    in (edgeports::rms_norm_gemv)."""
    from edgeports.kernels.gemv import gemv, rms_norm_gemv

    x = torch.randn(1, 1, k, device="cuda").to(dtype)
    w = (torch.randn(n, k, device="cuda") / k ** 0.5).to(dtype)
    b = torch.randn(n, device="cuda").to(dtype) if bias else None
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    torch._dynamo.reset()  # a compile per case: past the recompile limit fullgraph=True would fail
    for y in (gemv(x, w, b), torch.compile(gemv, fullgraph=True)(x, w, b)):
        assert y.dtype == dtype and y.shape == (1, 1, n)
        torch.testing.assert_close(y.float(), ref, rtol=TOL[dtype], atol=TOL[dtype] * ref.abs().max().item())
    g = (torch.rand(k, device="cuda") + 0.5).to(dtype)  # with the RMS norm folded in
    xf = x.float()
    normed = g.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)
    ref = F.linear(normed, w.float(), None if b is None else b.float())
    for y in (rms_norm_gemv(x, g, 1e-5, w, b), torch.compile(rms_norm_gemv, fullgraph=True)(x, g, 1e-5, w, b)):
        torch.testing.assert_close(y.float(), ref, rtol=TOL[dtype], atol=TOL[dtype] * ref.abs().max().item())
    # an SSM block's fold: a float32 residual stream in front of `dtype` weights, its add inside the GEMV
    r = torch.randn(1, 1, n, device="cuda")
    x32 = torch.randn(1, 1, k, device="cuda")
    normed = g.float() * x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)
    ref = r + F.linear(normed, w.float(), None if b is None else b.float())
    for y in (rms_norm_gemv(x32, g, 1e-5, w, b, residual=r),
              torch.compile(rms_norm_gemv, fullgraph=True)(x32, g, 1e-5, w, b, residual=r)):
        assert y.dtype == torch.float32 and y.shape == (1, 1, n)
        torch.testing.assert_close(y, ref, rtol=TOL[dtype], atol=TOL[dtype] * ref.abs().max().item())
    ref = r + F.linear(x.float(), w.float(), None if b is None else b.float())
    y = gemv(x, w, b, residual=r)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=TOL[dtype], atol=TOL[dtype] * ref.abs().max().item())


@pytest.mark.gpu
def test_gpu_auto_dispatch_uses_triton(gpu):
    """impl=None on CUDA tensors goes through the custom op to these kernels, and matches impl='triton'."""
    import edgeports.kernels as K

    case = scan_case(1, 64, 16, 100, torch.bfloat16, "cuda")
    y_auto, h_auto = K.selective_scan(**case)
    y_tri, h_tri = K.selective_scan(**case, impl="triton")
    assert torch.equal(y_auto, y_tri) and torch.equal(h_auto, h_tri)
    assert K.get_impl("triton") is gpu


# 32-bit offset overflow at the sizes that hit it (mamba2-1.3b at 256k: step * in_proj row > 2^31); one
# 4.6 GB bf16 buffer, seen as [262144, 8704] and as [16384, 139264] (the scan walks L sequentially: 16k steps)
@pytest.fixture(scope="module")
def wide_gpu_buffer():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    buf = wide_buffer(262144, 8704, torch.bfloat16, "cuda", fill=True)
    yield buf
    del buf
    torch.cuda.empty_cache()


@pytest.mark.gpu
def test_gpu_wide_conv(gpu, wide_gpu_buffer):
    # every channel of the row view: the output [1,8704,L] itself passes 2^31 elements
    L = 262144
    case = wide_conv_case(wide_gpu_buffer, L, 8704, 4, fill=False)
    check_wide(gpu, "causal_conv1d", case, TOL[torch.bfloat16], t0=L - 4096)


@pytest.mark.gpu
def test_gpu_wide_ssd(gpu, wide_gpu_buffer):
    check_wide(gpu, "ssd_chunk_scan", wide_ssd_case(wide_gpu_buffer, 262144, 64, 64, fill=False), TOL[torch.bfloat16])


@pytest.mark.gpu
def test_gpu_wide_scan(gpu, wide_gpu_buffer):
    # u from the channel view over all 139264 channels (y [1,D,L] passes 2^31); the reference on the last 64
    L, D = 16384, 139264 - 128
    case = wide_scan_case(wide_gpu_buffer, L, D, 16, fill=False, u_channels=True)
    y, h = gpu.selective_scan(**case)
    from edgeports.kernels import impl_torch

    last = {k: (v[..., -64:, :] if k in ("u", "delta", "z", "A", "initial_state") else
                v[-64:] if k in ("D", "delta_bias") else v) for k, v in case.items()}
    last = {k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in last.items()}
    yr, hr = impl_torch.selective_scan(**last)
    assert _rel(y[:, -64:], yr) < TOL[torch.bfloat16] and _rel(h[:, -64:], hr) < TOL[torch.bfloat16]
