"""The torch implementation against the sequential reference, on fresh random inputs.

Covers lengths 1, 7, 255, 1000, every optional argument on and off, n_groups 1 and > 1, fp32 and bf16
inputs, and chunked prefill (two calls carrying the state) against one call; Mamba1 in both torch forms
(step by step, as CPU eager runs it, and the chunked parallel scan of GPUs and tracing).
"""

import pytest
import torch

from edgeports import kernels as K

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
STATE_TOL = dict(rtol=1e-4, atol=1e-4)  # states are float32 whatever the input dtype
LENS = (1, 7, 255, 1000)
OPTS = ("D", "z", "bias", "init", "softplus")
# every option alone, all of them, none of them
OPTION_SETS = [frozenset(), frozenset(OPTS)] + [frozenset({o}) for o in OPTS]


def _close(out, ref, dtype):
    y, h = out
    y_ref, h_ref = ref
    assert y.dtype == y_ref.dtype and h.dtype == torch.float32 == h_ref.dtype
    torch.testing.assert_close(y.float(), y_ref.float(), **TOL[dtype])
    torch.testing.assert_close(h, h_ref, **STATE_TOL)


def _dt(shape, softplus, gen):
    # positive step sizes either way: raw deltas go straight in, pre-softplus ones sit around softplus(-1)
    if softplus:
        return torch.randn(shape, generator=gen) * 0.5 - 1.0
    return torch.rand(shape, generator=gen) * 0.3


def _lens_and_opts():
    # the long length only with all options and with none, to keep the oracle's Python loop cheap
    return [(L, o) for L in LENS for o in OPTION_SETS if L < 1000 or len(o) in (0, len(OPTS))]


def _ids(params):
    return [f"L{L}-{'+'.join(sorted(o)) or 'none'}" for L, o in params]


def m1_inputs(L, opts, dtype, bt=2, d=6, n=4, seed=0):
    """Random selective_scan arguments: (args, kwargs)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    args = [r(bt, d, L).to(dtype), _dt((bt, d, L), "softplus" in opts, g).to(dtype),
            -(torch.rand(d, n, generator=g) + 0.5), r(bt, n, L).to(dtype), r(bt, n, L).to(dtype)]
    kw = dict(D=r(d) if "D" in opts else None, z=r(bt, d, L).to(dtype) if "z" in opts else None,
              delta_bias=r(d) * 0.1 if "bias" in opts else None, delta_softplus="softplus" in opts,
              initial_state=r(bt, d, n) if "init" in opts else None)
    return args, kw


def ssd_inputs(L, opts, dtype, groups=2, bt=2, heads=4, p=3, n=5, seed=0, clamp=False):
    """Random ssd_chunk_scan arguments: (args, kwargs)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    args = [r(bt, L, heads, p).to(dtype), _dt((bt, L, heads), "softplus" in opts, g).to(dtype),
            -(torch.rand(heads, generator=g) + 0.5), r(bt, L, groups, n).to(dtype), r(bt, L, groups, n).to(dtype)]
    kw = dict(D=r(heads) if "D" in opts else None, z=r(bt, L, heads, p).to(dtype) if "z" in opts else None,
              dt_bias=r(heads) * 0.1 if "bias" in opts else None, dt_softplus="softplus" in opts,
              initial_state=r(bt, heads, p, n) if "init" in opts else None)
    if clamp:
        kw.update(dt_min=0.05, dt_max=0.2)
    return args, kw


@pytest.fixture(params=["step", "chunked"])
def m1_form(request, monkeypatch):
    """Both forms of the torch selective_scan on these CPU tensors: step by step (what CPU eager runs) and
    the chunked parallel scan (what a GPU and tracing run), forced here by turning the CPU choice off."""
    from edgeports.kernels import impl_torch

    if request.param == "chunked":
        monkeypatch.setattr(impl_torch, "_step_by_step", lambda u: False)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("L,opts", _lens_and_opts(), ids=_ids(_lens_and_opts()))
def test_selective_scan(L, opts, dtype, m1_form):
    args, kw = m1_inputs(L, opts, dtype)
    _close(K.selective_scan(*args, **kw, impl="torch"), K.selective_scan(*args, **kw, impl="ref"), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("L,opts", _lens_and_opts(), ids=_ids(_lens_and_opts()))
def test_ssd_chunk_scan(L, opts, groups, dtype):
    args, kw = ssd_inputs(L, opts, dtype, groups=groups)
    ref = K.ssd_chunk_scan(*args, 16, **kw, impl="ref")
    for chunk in (16, 64):  # a blocking parameter only
        _close(K.ssd_chunk_scan(*args, chunk, **kw, impl="torch"), ref, dtype)


@pytest.mark.parametrize("L", [1, 7, 255])
def test_ssd_dt_clamp(L):
    args, kw = ssd_inputs(L, frozenset(OPTS), torch.float32, clamp=True)
    _close(K.ssd_chunk_scan(*args, 32, **kw, impl="torch"), K.ssd_chunk_scan(*args, 32, **kw, impl="ref"),
           torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: "+".join(sorted(o - {"init"})) or "none")
def test_selective_state_update(opts, groups, dtype):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)
    bt, H, P, N = 2, 4, 3, 5
    # A, D and dt_bias as Mamba2 passes them: per-head values expand()ed over P (and N)
    A = -(torch.rand(H, generator=g) + 0.5)[:, None, None].expand(H, P, N)
    args = (r(bt, H, P, N), r(bt, H, P).to(dtype), _dt((bt, H, P), "softplus" in opts, g).to(dtype), A,
            r(bt, groups, N).to(dtype), r(bt, groups, N).to(dtype))
    kw = dict(D=r(H)[:, None].expand(H, P) if "D" in opts else None,
              z=r(bt, H, P).to(dtype) if "z" in opts else None,
              dt_bias=(r(H) * 0.1)[:, None].expand(H, P) if "bias" in opts else None, dt_softplus="softplus" in opts)
    _close(K.selective_state_update(*args, **kw, impl="torch"), K.selective_state_update(*args, **kw, impl="ref"),
           dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("L", [1, 7, 255, 1000])
@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("bias,init,act", [(False, False, None), (True, True, "silu"), (True, False, None),
                                           (False, True, "silu")])
def test_causal_conv1d(L, W, bias, init, act, dtype):
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)
    bt, d = 2, 6
    args = (r(bt, d, L), r(d, W), r(d) if bias else None, r(bt, d, W - 1) if init else None, act)
    y, s = K.causal_conv1d(*args, impl="torch")
    y_ref, s_ref = K.causal_conv1d(*args, impl="ref")
    assert y.dtype == dtype and s.shape == (bt, d, W - 1)
    torch.testing.assert_close(y.float(), y_ref.float(), **TOL[dtype])
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)  # the last W-1 inputs, copied


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bias,act", [(False, None), (True, "silu")])
def test_causal_conv1d_update(bias, act, dtype):
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)
    bt, d, W = 2, 6, 4
    args = (r(bt, d), r(bt, d, W - 1), r(d, W), r(d) if bias else None, act)
    y, s = K.causal_conv1d_update(*args, impl="torch")
    y_ref, s_ref = K.causal_conv1d_update(*args, impl="ref")
    torch.testing.assert_close(y.float(), y_ref.float(), **TOL[dtype])
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)


# ---- chunked prefill: two calls carrying the state == one call -----------------------------------------
@pytest.mark.parametrize("impl", ["torch", "ref"])
@pytest.mark.parametrize("split", [1, 100, 254])
def test_selective_scan_chunked_prefill(impl, split, m1_form):
    args, kw = m1_inputs(255, frozenset(OPTS) - {"init"}, torch.float32)
    y, h = K.selective_scan(*args, **kw, impl=impl)
    cut = lambda t, a, b: t[..., a:b] if t is not None and t.dim() == 3 else t
    parts = []
    state = None
    for a, b in ((0, split), (split, 255)):
        kw_p = dict(kw, z=cut(kw["z"], a, b), initial_state=state)
        y_p, state = K.selective_scan(*[cut(t, a, b) for t in args], **kw_p, impl=impl)
        parts.append(y_p)
    torch.testing.assert_close(torch.cat(parts, dim=-1), y, **TOL[torch.float32])
    torch.testing.assert_close(state, h, **STATE_TOL)


@pytest.mark.parametrize("impl", ["torch", "ref"])
@pytest.mark.parametrize("split", [1, 100, 254])
def test_ssd_chunked_prefill(impl, split):
    args, kw = ssd_inputs(255, frozenset(OPTS) - {"init"}, torch.float32)
    y, h = K.ssd_chunk_scan(*args, 64, **kw, impl=impl)
    cut = lambda t, a, b: t[:, a:b] if t is not None and t.dim() >= 3 else t
    parts, state = [], None
    for a, b in ((0, split), (split, 255)):
        kw_p = dict(kw, z=cut(kw["z"], a, b), initial_state=state)
        y_p, state = K.ssd_chunk_scan(*[cut(t, a, b) for t in args], 64, **kw_p, impl=impl)
        parts.append(y_p)
    torch.testing.assert_close(torch.cat(parts, dim=1), y, **TOL[torch.float32])
    torch.testing.assert_close(state, h, **STATE_TOL)


@pytest.mark.parametrize("impl", ["torch", "ref"])
def test_conv_chunked_prefill_and_steps(impl):
    g = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(2, 6, 30, generator=g), torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    y, s = K.causal_conv1d(x, w, b, None, "silu", impl=impl)
    y1, s1 = K.causal_conv1d(x[..., :2], w, b, None, "silu", impl=impl)  # shorter than W-1
    ys = [y1]
    for t in range(2, 30):  # the rest one step at a time
        y_t, s1 = K.causal_conv1d_update(x[..., t], s1, w, b, "silu", impl=impl)
        ys.append(y_t[..., None])
    torch.testing.assert_close(torch.cat(ys, -1), y, **TOL[torch.float32])
    torch.testing.assert_close(s1, s, rtol=0, atol=0)


# ---- the decode op agrees with the prefill ops, step by step ------------------------------------------
@pytest.mark.parametrize("impl", ["torch", "ref"])
def test_state_update_steps_match_scans(impl):
    # Mamba1 decode: H=1, P=D; Mamba2 decode: heads, A/D/dt_bias expanded
    args, kw = m1_inputs(5, frozenset(OPTS), torch.float32)
    u, delta, A, B, C = args
    y, h = K.selective_scan(*args, **kw, impl=impl)
    state = kw["initial_state"][:, None]
    for t in range(5):
        y_t, state = K.selective_state_update(
            state, u[None, ..., t].transpose(0, 1), delta[None, ..., t].transpose(0, 1), A[None],
            B[:, None, :, t], C[:, None, :, t], kw["D"][None], kw["z"][:, None, :, t], kw["delta_bias"][None],
            True, impl=impl)
        torch.testing.assert_close(y_t[:, 0], y[..., t], **TOL[torch.float32])
    torch.testing.assert_close(state[:, 0], h, **STATE_TOL)

    args, kw = ssd_inputs(5, frozenset(OPTS), torch.float32, groups=2)
    x, dt, A, B, C = args
    y, h = K.ssd_chunk_scan(*args, 4, **kw, impl=impl)
    H, P, N = x.shape[2], x.shape[3], B.shape[3]
    state = kw["initial_state"]
    for t in range(5):
        y_t, state = K.selective_state_update(
            state, x[:, t], dt[:, t, :, None].expand(-1, H, P), A[:, None, None].expand(H, P, N), B[:, t], C[:, t],
            kw["D"][:, None].expand(H, P), kw["z"][:, t], kw["dt_bias"][:, None].expand(H, P), True, impl=impl)
        torch.testing.assert_close(y_t, y[:, t], **TOL[torch.float32])
    torch.testing.assert_close(state, h, **STATE_TOL)


def test_torch_selective_scan_chunk_boundaries(m1_form):
    # L around multiples of the Mamba1 chunk (of either form): padding and carrying across chunks
    from edgeports.kernels.impl_torch import CHUNK_M1, CHUNK_M1_SEQ

    T = CHUNK_M1 if m1_form == "chunked" else CHUNK_M1_SEQ
    for L in (T - 1, T, T + 1, 2 * T):
        args, kw = m1_inputs(L, frozenset(OPTS), torch.float32, seed=L)
        _close(K.selective_scan(*args, **kw, impl="torch"), K.selective_scan(*args, **kw, impl="ref"), torch.float32)


def test_torch_selective_scan_cpu_eager_is_step_by_step_and_pure(monkeypatch):
    # CPU eager takes the sequential form, which works in place on its own buffers only: inputs untouched
    from edgeports.kernels import impl_torch

    calls = []
    seq = impl_torch._m1_sequential
    monkeypatch.setattr(impl_torch, "_m1_sequential", lambda *a: calls.append(1) or seq(*a))
    args, kw = m1_inputs(3 * impl_torch.CHUNK_M1_SEQ + 5, frozenset(OPTS), torch.float32, seed=7)
    before = [t.clone() for t in (*args, kw["initial_state"])]
    y, h = K.selective_scan(*args, **kw, impl="torch")
    assert calls == [1]
    for t, b in zip((*args, kw["initial_state"]), before, strict=True):
        assert torch.equal(t, b)
    assert h.data_ptr() != kw["initial_state"].data_ptr()
    _close((y, h), K.selective_scan(*args, **kw, impl="ref"), torch.float32)
