"""The edgeports:: custom ops (opaque to compile/export, fake shapes right), dispatch, use(), discovery,
and the torch implementation's export with a dynamic length."""

import math

import pytest
import torch

from edgeports import kernels as K
from edgeports.errors import EdgeportsError


def _cases(L=9, bt=2):
    """(op name, public-function args, expected output shapes) for every op, with every optional tensor."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    D, N, H, P, G, W = 6, 4, 4, 3, 2, 4
    m1 = (r(bt, D, L), torch.rand(bt, D, L, generator=g), -torch.rand(D, N, generator=g) - 0.5, r(bt, N, L),
          r(bt, N, L), r(D), r(bt, D, L), r(D), True, r(bt, D, N))
    ssu = (r(bt, H, P, N), r(bt, H, P), r(bt, H, P), -torch.rand(H, P, N, generator=g), r(bt, G, N), r(bt, G, N),
           r(H, P), r(bt, H, P), r(H, P), True)
    ssd = (r(bt, L, H, P), r(bt, L, H), -torch.rand(H, generator=g) - 0.5, r(bt, L, G, N), r(bt, L, G, N), 4, r(H),
           r(bt, L, H, P), r(H), True, 0.0, math.inf, r(bt, H, P, N))
    conv = (r(bt, D, L), r(D, W), r(D), r(bt, D, W - 1), "silu")
    upd = (r(bt, D), r(bt, D, W - 1), r(D, W), r(D), "silu")
    return [("selective_scan", m1, [(bt, D, L), (bt, D, N)]),
            ("selective_state_update", ssu, [(bt, H, P), (bt, H, P, N)]),
            ("ssd_chunk_scan", ssd, [(bt, L, H, P), (bt, H, P, N)]),
            ("causal_conv1d", conv, [(bt, D, L), (bt, D, W - 1)]),
            ("causal_conv1d_update", upd, [(bt, D), (bt, D, W - 1)])]


def _without_optionals(name, args):
    """The same call with every Optional[Tensor] argument set to None."""
    optional = {"selective_scan": (5, 6, 7, 9), "selective_state_update": (6, 7, 8),
                "ssd_chunk_scan": (6, 7, 8, 12), "causal_conv1d": (2, 3), "causal_conv1d_update": (3,)}[name]
    return tuple(None if i in optional else a for i, a in enumerate(args))


CASES = _cases()


def test_discovery():
    impls = K.available_impls()
    assert impls["ref"][0] and impls["torch"][0]
    assert K.default_impl() == "auto"


def test_unknown_impl_is_user_error():
    name, args, _ = CASES[0]
    with pytest.raises(EdgeportsError, match="unknown kernel implementation 'nope'"):
        K.selective_scan(*args, impl="nope")
    with pytest.raises(EdgeportsError, match="unknown kernel implementation"):
        with K.use("nope"):
            pass
    with pytest.raises(EdgeportsError, match="activation"):
        K.causal_conv1d(*CASES[3][1][:4], activation="relu")


@pytest.mark.parametrize("name,args,shapes", CASES, ids=[c[0] for c in CASES])
def test_default_is_the_custom_op_and_matches_ref(name, args, shapes):
    fn = getattr(K, name)
    for a in (args, _without_optionals(name, args)):
        out = fn(*a)
        ref = fn(*a, impl="ref")
        assert [tuple(o.shape) for o in out] == shapes
        assert [o.dtype for o in out] == [r.dtype for r in ref]
        _assert_all_close(out, ref)


@pytest.mark.parametrize("name,args,shapes", CASES, ids=[c[0] for c in CASES])
def test_opcheck(name, args, shapes):
    # schema, fake (meta) implementation against the real one, dispatch under dynamo/aot
    op = getattr(torch.ops.edgeports, name).default
    fixed = tuple(bool(a) if isinstance(a, bool) else a for a in args)
    torch.library.opcheck(op, fixed, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    torch.library.opcheck(op, _without_optionals(name, fixed), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("name,args,shapes", CASES, ids=[c[0] for c in CASES])
def test_fake_shapes_and_dtypes(name, args, shapes):
    from torch._subclasses.fake_tensor import FakeTensorMode

    bf = tuple(a.bfloat16() if isinstance(a, torch.Tensor) and a.dim() >= 2 and a.shape[0] == 2 else a for a in args)
    real = getattr(K, name)(*bf, impl="ref")
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = getattr(torch.ops.edgeports, name)(*bf)
    for f, r in zip(fake, real, strict=True):
        assert f.shape == r.shape and f.dtype == r.dtype


def _graph_recorder():
    """(graphs, backend): a torch.compile backend that keeps each FX graph dynamo hands it and runs it as is."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return graphs, backend


@pytest.mark.parametrize("name,args,shapes", CASES, ids=[c[0] for c in CASES])
def test_opaque_under_compile_fullgraph(name, args, shapes):
    graphs, backend = _graph_recorder()

    fn = getattr(K, name)
    torch._dynamo.reset()
    out = torch.compile(lambda *a: fn(*a), backend=backend, fullgraph=True)(*args)
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    ours = [t for t in targets if "edgeports" in str(t)]
    assert len(graphs) == 1 and len(ours) == 1, targets
    # nothing of the decomposition leaked into the graph: only the op and tuple unpacking
    assert all(t is ours[0] or getattr(t, "__name__", "") == "getitem" for t in targets), targets
    _assert_all_close(out, fn(*args, impl="torch"))


@pytest.mark.parametrize("name,args,shapes", CASES, ids=[c[0] for c in CASES])
def test_opaque_under_export(name, args, shapes):
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    fn = getattr(K, name)

    class M(torch.nn.Module):
        def forward(self, *ts):
            full = list(args)
            for i, t in zip(tensors, ts, strict=True):
                full[i] = t
            return fn(*full)

    ep = torch.export.export(M(), tuple(args[i] for i in tensors))
    ours = [n for n in ep.graph.nodes if n.op == "call_function" and str(n.target).startswith("edgeports.")]
    assert [str(n.target) for n in ours] == [f"edgeports.{name}.default"]


STEPS = [c for c in CASES if c[0] in ("selective_state_update", "causal_conv1d_update")]
STATE_ARG = {"selective_state_update": 0, "causal_conv1d_update": 1}


@pytest.mark.parametrize("impl", [None, "torch", "ref"])
@pytest.mark.parametrize("name,args,shapes", STEPS, ids=[c[0] for c in STEPS])
def test_inplace_step_writes_the_state_it_was_given(name, args, shapes, impl):
    fn, i = getattr(K, name), STATE_ARG[name]
    for a in (args, _without_optionals(name, args)):
        y, new = fn(*a, impl=impl)
        state = a[i].clone()
        y_in, out = fn(*a[:i], state, *a[i + 1:], impl=impl, inplace=True)
        assert out is state
        _assert_all_close((y_in, state), (y, new))
    if name == "selective_state_update":
        with pytest.raises(EdgeportsError, match="float32 state"):
            fn(args[0].double(), *args[1:], inplace=True)


@pytest.mark.parametrize("name,args,shapes", STEPS, ids=[c[0] for c in STEPS])
def test_inplace_op_opcheck_and_compile(name, args, shapes):
    """The mutating ops: schema and fake checked, and one opaque node under compile that mutates its input."""
    graphs, backend = _graph_recorder()

    op = getattr(torch.ops.edgeports, name + "_").default
    fixed = tuple(bool(a) if isinstance(a, bool) else a for a in args)
    torch.library.opcheck(op, fixed, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    i = STATE_ARG[name]
    want_y, want_state = getattr(K, name)(*args, impl="ref")
    state = args[i].clone()
    torch._dynamo.reset()
    step = torch.compile(lambda s: getattr(K, name)(*args[:i], s, *args[i + 1:], inplace=True)[0], fullgraph=True,
                         backend=backend)
    _assert_all_close((step(state), state), (want_y, want_state))
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert [t for t in targets if "edgeports" in t] == [f"edgeports.{name}_"], targets


def test_use_sets_the_default(monkeypatch):
    name, args, _ = CASES[0]
    calls = []
    from edgeports.kernels import impl_ref

    real = impl_ref.selective_scan
    monkeypatch.setattr(impl_ref, "selective_scan", lambda *a: calls.append(1) or real(*a))
    with K.use("ref"):
        assert K.default_impl() == "ref"
        K.selective_scan(*args)
        with K.use("auto"):
            K.selective_scan(*args)  # the custom op: torch on CPU, not ref
    assert K.default_impl() == "auto" and calls == [1]
    K.selective_scan(*args, impl="ref")
    assert calls == [1, 1]


def test_use_torch_traces_the_decomposition():
    name, args, _ = CASES[2]  # ssd_chunk_scan: loop-free, so the export graph shows its einsums

    class M(torch.nn.Module):
        def forward(self, x):
            with K.use("torch"):
                return K.ssd_chunk_scan(x, *args[1:])

    ep = torch.export.export(M(), (args[0],))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any(t.startswith("edgeports.") for t in targets)
    assert any("cumsum" in t for t in targets)


# ---- the torch implementation exports with a dynamic length --------------------------------------------
def _export_dynamic(fn, consts, args, time_dims):
    """Export fn(*args, *consts) with L dynamic (min 1) in the given dims of the six args; returns the program.

    consts (A, D, biases) are module buffers, as weights are in a model.
    """

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i, c in enumerate(consts):
                self.register_buffer(f"c{i}", c)

        def forward(self, a, b, c, d, e, f):
            with K.use("torch"):
                return fn(a, b, c, d, e, f, *(getattr(self, f"c{i}") for i in range(len(consts))))

    L = torch.export.Dim("L", min=1, max=1 << 20)
    shapes = tuple({d: L} if d is not None else None for d in time_dims)
    return torch.export.export(M(), args, dynamic_shapes=shapes)


def _assert_all_close(outs, refs):
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


def test_torch_selective_scan_exports_with_dynamic_length():
    from edgeports.kernels.impl_torch import CHUNK_M1

    _, a, _ = _cases(L=2 * CHUNK_M1 + 3)[0]
    u, delta, A, B, C, D, z, bias, sp, h0 = a
    fn = lambda u, delta, B, C, z, h0, A, D, bias: K.selective_scan(u, delta, A, B, C, D, z, bias, sp, h0)
    ep = _export_dynamic(fn, (A, D, bias), (u, delta, B, C, z, h0), (2, 2, 2, 2, 2, None))
    assert any("scan" in str(n.target) for n in ep.graph.nodes)  # the scan op, not an unrolled loop
    for L in (1, 5, CHUNK_M1, CHUNK_M1 + 1):
        _, b, _ = _cases(L=L)[0]
        _assert_all_close(ep.module()(b[0], b[1], b[3], b[4], b[6], b[9]),
                          K.selective_scan(b[0], b[1], A, b[3], b[4], D, b[6], bias, sp, b[9], impl="ref"))


def _strict_opt_einsum(operands_seen: list[int]):
    """torch.backends.opt_einsum as torch.einsum sees it when the opt_einsum package is installed (it is on
    the GPU machine's image), with a contract_path that, like opt_einsum's, reads every size as an int."""
    from types import SimpleNamespace

    def contract_path(equation, *operands, optimize=None):
        operands_seen.append(len(operands))
        [int(d) for t in operands for d in t.shape]  # opt_einsum builds its size table from ints
        return [(0, 1)] * (len(operands) - 1), None  # left to right, as torch.einsum without opt_einsum

    package = SimpleNamespace(contract_path=contract_path)
    return SimpleNamespace(enabled=True, strategy="auto", is_available=lambda: True, get_opt_einsum=lambda: package)


@pytest.mark.parametrize("opt_einsum", [False, True], ids=["plain", "opt_einsum"])
def test_torch_ssd_exports_with_dynamic_length(opt_einsum, monkeypatch):
    # with opt_einsum installed, an einsum of three operands asked it for a path: int() of the opaque chunk
    # count failed the export with GuardOnDataDependentSymNode (u0) on the GPU machine
    seen: list[int] = []
    if opt_einsum:
        monkeypatch.setattr(torch.backends, "opt_einsum", _strict_opt_einsum(seen))
    _, a, _ = _cases(L=11)[2]
    x, dt, A, B, C, cs, D, z, bias, sp, lo, hi, h0 = a
    fn = lambda x, dt, B, C, z, h0, A, D, bias: K.ssd_chunk_scan(x, dt, A, B, C, cs, D, z, bias, sp, lo, hi, h0)
    ep = _export_dynamic(fn, (A, D, bias), (x, dt, B, C, z, h0), (1, 1, 1, 1, 1, None))
    for L in (1, cs, cs + 1, 3 * cs + 2):
        _, b, _ = _cases(L=L)[2]
        _assert_all_close(ep.module()(b[0], b[1], b[3], b[4], b[7], b[12]),
                          K.ssd_chunk_scan(b[0], b[1], A, b[3], b[4], cs, D, b[7], bias, sp, lo, hi, b[12], impl="ref"))
    assert seen == []  # every einsum has two operands: no contraction path is ever asked for


@pytest.mark.gpu
@pytest.mark.parametrize("name,args,shapes", CASES, ids=[c[0] for c in CASES])
def test_mamba_ssm_matches_ref(name, args, shapes):
    ok, reason = K.available_impls()["mamba_ssm"]
    if not ok:
        pytest.skip(reason)
    if name == "selective_scan":
        args = args[:-1] + (None,)  # selective_scan_fn takes no initial state
    cuda = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    out = [o.cpu() for o in getattr(K, name)(*cuda, impl="mamba_ssm")]
    _assert_all_close(out, getattr(K, name)(*args, impl="ref"))
