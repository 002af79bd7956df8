"""edgeports' ONNX Runtime custom-op library (exporters/plugins/ort): built here (host C++ compiler, ORT's C++ API
headers from Debian), every ai.edgeports op as a one-node graph on ORT's CPU provider against the Python
reference on fresh random inputs (float32/float16/bfloat16 activations, optional inputs present, absent and
with gaps), the CUDA variant's compile with nvcc, and whole `--onnx-ssm custom` artifacts of every SSM arch
through the ORT runner against eager.

The CUDA provider's kernels are the ones tests/exporters/test_plugins.py checks on the GPU; here only their
build into this library is checked (no GPU in CI)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from edgeports import kernels
from edgeports.exporters import onnx_custom, plugin_build
from edgeports.exporters.base import ExportOptions, build_lm, read_artifact
from edgeports.models import get_spec
from edgeports.runners.eager import EagerRunner

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime (pip install 'edgeports[onnx]')")


@pytest.fixture(scope="session")
def ort_ops_cpu():
    """The CPU build of the library (cached by plugin_build; the headers are fetched once)."""
    return plugin_build.build_ort_ops(cuda=False)


def _cases(g: torch.Generator, L: int = 11, bt: int = 2):
    """(op_type, reference kwargs, attrs) per op with every optional tensor; activations float32."""
    r = lambda *s: torch.randn(*s, generator=g)
    D, N, H, P, G, W = 6, 4, 4, 3, 2, 4
    return [
        ("SelectiveScan", dict(u=r(bt, D, L), delta=torch.rand(bt, D, L, generator=g) - 0.5,
                               A=-torch.rand(D, N, generator=g) - 0.5, B=r(bt, N, L), C=r(bt, N, L), D=r(D),
                               z=r(bt, D, L), delta_bias=r(D) * 0.1, initial_state=r(bt, D, N)),
         dict(delta_softplus=1)),
        ("SsdChunkScan", dict(x=r(bt, L, H, P), dt=r(bt, L, H) * 0.5, A=-torch.rand(H, generator=g) - 0.5,
                              B=r(bt, L, G, N), C=r(bt, L, G, N), D=r(H), z=r(bt, L, H, P), dt_bias=r(H) * 0.1,
                              initial_state=r(bt, H, P, N)),
         dict(chunk_size=4, dt_softplus=1, dt_min=0.01, dt_max=2.0)),
        ("SelectiveStateUpdate", dict(state=r(bt, H, P, N), x=r(bt, H, P), dt=r(bt, H, P) * 0.5,
                                      A=-torch.rand(H, P, N, generator=g) - 0.5, B=r(bt, G, N), C=r(bt, G, N),
                                      D=r(H, P), z=r(bt, H, P), dt_bias=r(H, P) * 0.1),
         dict(dt_softplus=1)),
        ("CausalConv1d", dict(x=r(bt, D, L), weight=r(D, W), bias=r(D), initial_state=r(bt, D, W - 1)),
         dict(activation="silu")),
        ("CausalConv1dUpdate", dict(x=r(bt, D), conv_state=r(bt, D, W - 1), weight=r(D, W), bias=r(D)),
         dict(activation="silu")),
    ]


def _reference(op_type: str, tensors: dict, attrs: dict):
    """The Python reference (float64 oracle on the same rounded inputs) for one node."""
    spec = onnx_custom.BY_OP_TYPE[op_type]
    kw = {k: (v.double() if v is not None else None) for k, v in tensors.items()}
    extra = {"activation": attrs["activation"] or None} if "activation" in attrs else {
        k: (bool(v) if k.endswith("softplus") else v) for k, v in attrs.items()}
    if op_type == "SsdChunkScan":
        extra["chunk_size"] = extra.pop("chunk_size")
    return getattr(kernels, spec.torch_op)(**kw, **extra, impl="ref")


def _one_node_session(op_type: str, tensors: dict, attrs: dict, dtypes: dict, library: str,
                      provider: str = "CPUExecutionProvider"):
    """An ORT session (CPU provider by default) of one ai.edgeports node whose graph inputs are the present
    tensors."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    spec = onnx_custom.BY_OP_TYPE[op_type]
    elem = {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16,
            torch.bfloat16: onnx.TensorProto.BFLOAT16, torch.float64: onnx.TensorProto.DOUBLE}
    names = [n if tensors.get(n) is not None else "" for n in spec.inputs]
    inputs = [helper.make_tensor_value_info(n, elem[dtypes[n]], list(tensors[n].shape)) for n in names if n]
    outputs = [helper.make_tensor_value_info(o, elem[dtypes[o]], None) for o in spec.outputs]
    node = helper.make_node(op_type, names, list(spec.outputs), domain=onnx_custom.DOMAIN, **attrs)
    # IR 10: what the exporter writes, and what onnxruntime 1.31 (GPU) still reads (onnx 1.23 would write 14)
    model = helper.make_model(helper.make_graph([node], "one", inputs, outputs), ir_version=10,
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(onnx_custom.DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), so, providers=[provider])


def _run(sess, tensors: dict, out_dtypes: list, out_shapes: list):
    """Run with IO binding on torch tensors (bfloat16 has no numpy type)."""
    from edgeports.runners.ort import bind

    binding = sess.io_binding()
    for i in sess.get_inputs():
        bind(binding, i.name, tensors[i.name].contiguous(), True)
    outs = [torch.empty(s, dtype=d) for s, d in zip(out_shapes, out_dtypes, strict=True)]
    for o, t in zip(sess.get_outputs(), outs, strict=True):
        bind(binding, o.name, t, False)
    sess.run_with_iobinding(binding)
    return outs


STATE_F32 = {"SelectiveScan": True, "SsdChunkScan": True, "SelectiveStateUpdate": True, "CausalConv1d": False,
             "CausalConv1dUpdate": False}
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("optionals", ["all", "none", "gaps"])
@pytest.mark.parametrize("op_type", [n.op_type for n in onnx_custom.NODES])
def test_each_op_matches_the_reference(ort_ops_cpu, op_type, optionals, dtype):
    g = torch.Generator().manual_seed(hash((op_type, optionals, str(dtype))) % 2**31)
    _, tensors, attrs = next(c for c in _cases(g) if c[0] == op_type)
    spec = onnx_custom.BY_OP_TYPE[op_type]
    optional = spec.inputs[spec.required:]
    drop = {"all": (), "none": optional, "gaps": optional[::2]}[optionals]  # gaps: the 1st and 3rd absent
    tensors = {k: (None if k in drop else v) for k, v in tensors.items()}
    # activations (and everything the contract does not pin to float32) in `dtype`; SSM states float32
    f32 = {"A", "state", "initial_state"} | ({"D", "delta_bias"} if op_type == "SelectiveScan" else set())
    tensors = {k: (v if v is None or k in f32 else v.to(dtype)) for k, v in tensors.items()}
    want_y, want_state = _reference(op_type, tensors, attrs)
    state_dtype = torch.float32 if STATE_F32[op_type] else dtype
    dtypes = {k: v.dtype for k, v in tensors.items() if v is not None} | {spec.outputs[0]: dtype,
                                                                         spec.outputs[1]: state_dtype}
    sess = _one_node_session(op_type, tensors, attrs, dtypes, ort_ops_cpu)
    y, state = _run(sess, {k: v for k, v in tensors.items() if v is not None}, [dtype, state_dtype],
                    [want_y.shape, want_state.shape])
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), want_y.to(dtype).double(), rtol=tol, atol=tol * max(1, want_y.abs().max()))
    stol = TOL[state_dtype]
    torch.testing.assert_close(state.double(), want_state.to(state_dtype).double(), rtol=stol,
                               atol=stol * max(1, want_state.abs().max()))


def test_unsupported_dtype_is_a_clear_error(ort_ops_cpu):
    g = torch.Generator().manual_seed(0)
    _, tensors, attrs = _cases(g)[3]  # CausalConv1d
    tensors = {**tensors, "weight": tensors["weight"].double()}
    dtypes = {k: v.dtype for k, v in tensors.items()} | {"y": torch.float32, "final_state": torch.float32}
    sess = _one_node_session("CausalConv1d", tensors, attrs, dtypes, ort_ops_cpu)
    with pytest.raises(Exception, match="edgeports CausalConv1d: input: only float32, float16 and bfloat16"):
        _run(sess, tensors, [torch.float32, torch.float32], [(2, 6, 11), (2, 6, 3)])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_custom_exports_pass_the_checker(tmp_path, dtype):
    from edgeports.exporters import onnx as onnx_exporter

    # the export runs onnx.checker with full shape/type inference: conv states keep the activation's dtype
    opts = ExportOptions(dtype=dtype, max_len=32, extra=(("onnx_ssm", "custom"), ("onnx_chunked", "false")))
    art = onnx_exporter.export(get_spec("tiny-mamba"), tmp_path / dtype, opts)
    assert art.shape_ranges["graphs"]["prefill"]["custom_nodes"] == 2 * get_spec("tiny-mamba").config["num_hidden_layers"]


def test_library_says_which_providers_it_serves(ort_ops_cpu):
    assert plugin_build.ort_ops_providers(ort_ops_cpu) == ("cpu",)


@pytest.mark.skipif(plugin_build.nvcc() is None, reason="no nvcc")
def test_cuda_variant_compiles_and_serves_both_providers(tmp_path):
    lib = plugin_build.build_ort_ops(cuda=True, archs=["90"], out_dir=tmp_path)
    assert plugin_build.ort_ops_providers(lib) == ("cpu", "cuda")


def test_headers_come_from_the_pinned_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv(plugin_build.ENV_ORT_INCLUDE, str(tmp_path))
    with pytest.raises(Exception, match="holds no onnxruntime_cxx_api.h"):
        plugin_build.ort_include()
    monkeypatch.delenv(plugin_build.ENV_ORT_INCLUDE)
    assert (plugin_build.ort_include() / "onnxruntime_c_api.h").is_file()
    assert plugin_build.ORT_HEADERS_DEB[0].startswith("http://deb.debian.org/")


# ---- whole artifacts: the custom lowering through the ORT runner ------------------------------------
@pytest.fixture(scope="module")
def custom_export(tmp_path_factory):
    """name -> the `--onnx-ssm custom` float32 artifact of that tiny model (exported once per module)."""
    from edgeports.exporters import onnx as onnx_exporter

    done = {}

    def get(name: str):
        if name not in done:
            opts = ExportOptions(dtype="float32", max_len=48, extra=(("onnx_ssm", "custom"), ("onnx_chunked", "false")))
            path = onnx_exporter.export(get_spec(name), tmp_path_factory.mktemp(name), opts).path
            done[name] = read_artifact(path, "onnx")
        return done[name]

    return get


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-mamba2", "tiny-falcon-h1", "tiny-zamba2"])
def test_custom_lowering_runs_like_eager(ort_ops_cpu, custom_export, name):
    from edgeports.runners import ort

    art = custom_export(name)
    runner = ort.load(art, "cpu")
    assert runner.info["custom_ops"]["providers"] == ["cpu"]
    ref = EagerRunner(build_lm(art.spec, art.options, "cpu"), "cpu")
    g = torch.Generator().manual_seed(5)
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())
    for length in (19, 1):
        ids = torch.randint(0, art.spec.config["vocab_size"], (1, length), generator=g)
        errs = [rel(runner.prefill(ids, max_len=48), ref.prefill(ids, max_len=48))]
        errs += [rel(runner.decode(1), ref.decode(1)) for _ in range(4)]
        assert max(errs) < 1e-4 and not any(math.isnan(e) for e in errs), errs


# Per layer of the ORT-optimised custom prefill: Transposes and Splits of [L, >= d_inner] activations (copies of
# the size of the sequence times the channels). Mamba1: none (mamba.split_linear and _x_proj_channel_first
# project into the kernels' layouts, the transposes of the small [L, hidden] inputs fold into FusedMatMuls).
# Mamba2: the conv output's transpose into SsdChunkScan's [B,L,...] layout and its split into x, B, C (the two
# kernels' contracts take different layouts); its in_proj output is neither split nor transposed any more.
def optimized_prefill(art, library, tmp_path):
    """The artifact's prefill graph as ONNX Runtime's CPU provider optimises it (ORT_ENABLE_ALL)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(art.file("prefill.onnx")), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath, load_external_data=False).graph


@pytest.mark.parametrize("name,per_layer", [("tiny-mamba", 0), ("tiny-mamba2", 2)])
def test_custom_prefill_moves_no_activations_between_layouts(tmp_path, ort_ops_cpu, custom_export, name, per_layer):
    art = custom_export(name)
    graph = optimized_prefill(art, ort_ops_cpu, tmp_path)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*graph.value_info, *graph.input, *graph.output)}
    c = art.spec.config
    d_inner = c["expand"] * c["hidden_size"]
    moves = [n for n in graph.node if n.op_type in ("Transpose", "Split")]
    assert all(n.input[0] in shapes for n in moves), [n.input[0] for n in moves]  # no shape unknown to the count
    big = [n for n in moves if any(isinstance(d, str) for d in shapes[n.input[0]])  # sequence-long
           and max((d for d in shapes[n.input[0]] if isinstance(d, int)), default=0) >= d_inner]
    assert len(big) == per_layer * c["num_hidden_layers"], [(n.op_type, shapes[n.input[0]]) for n in big]
    assert any(n.op_type == "FusedMatMul" for n in graph.node)  # the folded transposes


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-mamba2"])
def test_custom_prefill_norms_are_fused(tmp_path, ort_ops_cpu, custom_export, name):
    """Every RMS norm of the prefill becomes one SimplifiedLayerNormalization: the block norms, the final one
    and Mamba2's one-group norm before out_proj (whose [..., 1, D] group view once kept ORT from fusing it:
    five elementwise kernels over [L, d_inner] per layer)."""
    art = custom_export(name)
    graph = optimized_prefill(art, ort_ops_cpu, tmp_path)
    ops = [n.op_type for n in graph.node]
    layers = art.spec.config["num_hidden_layers"]
    per_layer = 2 if name == "tiny-mamba2" else 1
    assert ops.count("SimplifiedLayerNormalization") == per_layer * layers + 1, ops
    assert not {"Pow", "ReduceMean", "Sqrt", "Div"} & set(ops), ops


def test_refusals(monkeypatch, tmp_path, ort_ops_cpu):
    from edgeports.runners import ort
    from edgeports.runners.base import Unsupported

    monkeypatch.setenv(plugin_build.ENV_ORT_LIB, str(ort_ops_cpu))
    with pytest.raises(Unsupported, match="CPU provider only"):
        ort._custom_ops_library("custom", torch.device("cuda"))
    assert ort._custom_ops_library("standard", torch.device("cuda")) is None
    monkeypatch.setenv(plugin_build.ENV_ORT_LIB, "/nonexistent/lib.so")
    with pytest.raises(Unsupported, match="EDGEPORTS_ORT_CUSTOM_OPS=/nonexistent/lib.so does not exist"):
        ort._custom_ops_library("custom", torch.device("cpu"))
    monkeypatch.delenv(plugin_build.ENV_ORT_LIB)
    monkeypatch.setenv(plugin_build.ENV_ORT_INCLUDE, "/nonexistent")  # a fresh build that cannot find headers
    monkeypatch.setenv("EDGEPORTS_CACHE", str(tmp_path))
    with pytest.raises(Unsupported, match="custom-op library: ONNXRUNTIME_INCLUDE=/nonexistent holds no"):
        ort._custom_ops_library("custom", torch.device("cpu"))


# ---- GPU: the CUDA provider's ops (edgeports' CUDA kernels on ORT's stream, workspace from ORT's arena) ----
@pytest.fixture(scope="module")
def ort_ops_cuda():
    import onnxruntime as ort

    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs a CUDA GPU and onnxruntime-gpu")
    if plugin_build.nvcc() is None:
        pytest.skip("needs nvcc to build the CUDA variant")
    return plugin_build.build_ort_ops(cuda=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("op_type", [n.op_type for n in onnx_custom.NODES])
def test_each_op_on_the_cuda_provider(ort_ops_cuda, op_type, dtype):
    from edgeports.runners.ort import bind

    g = torch.Generator().manual_seed(11)
    _, tensors, attrs = next(c for c in _cases(g, L=1500, bt=1) if c[0] == op_type)  # long: chunked scans
    f32 = {"A", "state", "initial_state"} | ({"D", "delta_bias"} if op_type == "SelectiveScan" else set())
    tensors = {k: (v if k in f32 else v.to(dtype)) for k, v in tensors.items()}
    want_y, want_state = _reference(op_type, tensors, attrs)
    spec = onnx_custom.BY_OP_TYPE[op_type]
    state_dtype = torch.float32 if STATE_F32[op_type] else dtype
    dtypes = {k: v.dtype for k, v in tensors.items()} | {spec.outputs[0]: dtype, spec.outputs[1]: state_dtype}
    sess = _one_node_session(op_type, tensors, attrs, dtypes, ort_ops_cuda, "CUDAExecutionProvider")
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    binding = sess.io_binding()
    for i in sess.get_inputs():
        bind(binding, i.name, tensors[i.name].cuda().contiguous(), True)
    outs = [torch.empty(want_y.shape, dtype=dtype, device="cuda"),
            torch.empty(want_state.shape, dtype=state_dtype, device="cuda")]
    for o, t in zip(sess.get_outputs(), outs, strict=True):
        bind(binding, o.name, t, False)
    sess.run_with_iobinding(binding)
    torch.cuda.synchronize()
    for got, want, d in ((outs[0], want_y, dtype), (outs[1], want_state, state_dtype)):
        tol = TOL[d] * 4  # the CUDA kernels sum in another order (chunked scans)
        torch.testing.assert_close(got.cpu().double(), want.to(d).double(), rtol=tol, atol=tol * max(1, want.abs().max()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-3), ("float16", 3e-2)])
@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-mamba2", "tiny-falcon-h1"])
def test_custom_lowering_on_cuda_runs_like_eager(tmp_path, ort_ops_cuda, name, dtype, tol):
    from edgeports.exporters import onnx as onnx_exporter
    from edgeports.runners import ort

    opts = ExportOptions(dtype=dtype, max_len=600, extra=(("onnx_ssm", "custom"), ("onnx_chunked", "false")))
    art = read_artifact(onnx_exporter.export(get_spec(name), tmp_path / name, opts).path, "onnx")
    runner = ort.load(art, "cuda")
    assert runner.info["provider"] == "CUDAExecutionProvider" and runner.info["custom_ops"]["providers"] == ["cpu", "cuda"]
    ref = EagerRunner(build_lm(art.spec, art.options, "cuda"), "cuda")
    g = torch.Generator().manual_seed(5)
    rel = lambda a, b: float((a.float() - b.float()).abs().max() / b.float().abs().max())
    for length in (500, 1):  # long enough for the chunked scans
        ids = torch.randint(0, art.spec.config["vocab_size"], (1, length), generator=g).cuda()
        errs = [rel(runner.prefill(ids, max_len=600), ref.prefill(ids, max_len=600))]
        errs += [rel(runner.decode(1), ref.decode(1)) for _ in range(4)]
        assert max(errs) < tol, errs
