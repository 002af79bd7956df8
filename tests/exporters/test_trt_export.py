"""TensorRT exporter: the unavailable path (CI), the ONNX preparation for the parser, the profiles, and
(`-m trt`, where TensorRT and a GPU exist) real exports of tiny SSM models with and without the plugins."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import pytest

from edgeports.cli import main
from edgeports.errors import EdgeportsError
from edgeports.exporters import trt as trt_exporter
from edgeports.exporters.base import ExportOptions

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _exit_code(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr()


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here: the unavailable path cannot be shown")
def test_unavailable_says_why_and_how(capsys, monkeypatch):
    ok, reason = trt_exporter.available()
    assert not ok and "tensorrt is not importable" in reason and "make image-x86" in reason
    monkeypatch.setenv("COLUMNS", "400")  # one table row per backend
    assert main(["backends"]) is None
    row = next(line for line in capsys.readouterr().out.splitlines() if "│ trt" in line)
    assert "│ no" in row and "tensorrt is not importable" in row
    code, out = _exit_code(["export", "--model", "tiny-llama", "--backend", "trt"], capsys)
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "not available" in lines[0] and "container" in lines[0]


def _node(op, inputs, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, [f"{op}_y", f"{op}_s"], domain="ai.edgeports", **attrs)


def _attrs(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_prepare_for_parser_drops_absent_inputs_and_names_the_plugin():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [_node("SelectiveScan", ["u", "d", "A", "B", "C", "", "z", "", ""], delta_softplus=1),
             _node("CausalConv1d", ["x", "w", "b"], activation="silu"),
             _node("SelectiveStateUpdate", ["s", "x", "dt", "A", "B", "C", "D", "", "dtb"], dt_softplus=1),
             helper.make_node("Relu", ["x"], ["r"])]
    names = ["u", "d", "A", "B", "C", "z", "x", "w", "b", "s", "dt", "D", "dtb"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in names],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.edgeports", 1)])
    assert trt_exporter.prepare_for_parser(model) == 3
    ss, conv, ssu, relu = model.graph.node
    assert list(ss.input) == ["u", "d", "A", "B", "C", "z"] and _attrs(ss)["present"] == 0b0010
    assert _attrs(ss)["delta_softplus"] == 1 and _attrs(ss)["plugin_namespace"] == b"edgeports"
    assert list(conv.input) == ["x", "w", "b"] and _attrs(conv)["present"] == 0b01
    assert list(ssu.input) == ["s", "x", "dt", "A", "B", "C", "D", "dtb"] and _attrs(ssu)["present"] == 0b101
    assert not relu.attribute
    assert trt_exporter.prepare_for_parser(model) == 3  # idempotent: no duplicate attributes
    assert _attrs(model.graph.node[0])["present"] == 0b0010 and len(model.graph.node[0].attribute) == 4
    onnx.checker.check_model(model)


def test_prepare_for_parser_rejects_bad_nodes():
    pytest.importorskip("onnx")
    from onnx import helper

    for node in (_node("SelectiveScan", ["u", "", "A", "B", "C"]), _node("Mystery", ["x"])):
        model = helper.make_model(helper.make_graph([node], "g", [], []))
        with pytest.raises(EdgeportsError):
            trt_exporter.prepare_for_parser(model)


def test_length_buckets_cover_every_prefill_length():
    for max_len, opts in [(8192, (256, 4096)), (100, (256, 4096)), (4096, (256, 4096)), (3000, (512,))]:
        buckets = trt_exporter.length_buckets(max_len, opts)
        assert buckets[0][0] == 1 and buckets[-1][2] == max_len
        for (_, _, hi), (lo, _, _) in zip(buckets, buckets[1:], strict=False):
            assert lo == hi + 1
        assert all(lo <= opt <= hi for lo, opt, hi in buckets)
    assert trt_exporter.opt_lens(ExportOptions(extra=(("trt_opt_lens", "64,1024"),))) == (64, 1024)
    with pytest.raises(EdgeportsError):
        trt_exporter.opt_lens(ExportOptions(extra=(("trt_opt_lens", "lots"),)))


def test_profile_shapes_fix_states_and_vary_ids():
    sig = {"inputs": [{"name": "ids", "dims": ["B", "L"]}, {"name": "state_0", "dims": ["B", 8, 4]},
                      {"name": "state_1", "dims": [1]}]}
    states = [(1, 8, 4), (1,)]
    shapes = trt_exporter._profile_shapes(sig, "prefill", 1, states, (1, 256, 256))
    assert shapes["ids"] == ((1, 1), (1, 256), (1, 256)) and shapes["state_0"] == ((1, 8, 4),) * 3
    assert shapes["state_1"] == ((1,),) * 3
    assert trt_exporter._profile_shapes(sig, "prefill_next", 1, states, (1, 256, 256)) == shapes
    assert trt_exporter._profile_shapes(sig, "decode", 1, states, (1, 256, 256))["ids"] == ((1, 1),) * 3
    with pytest.raises(EdgeportsError, match="state_0"):
        trt_exporter._profile_shapes(sig, "prefill", 1, [(1, 9, 4), (1,)], (1, 256, 256))
    sig["inputs"].append({"name": "mystery", "dims": ["N"]})
    with pytest.raises(EdgeportsError, match="expected the token ids"):
        trt_exporter._profile_shapes(sig, "prefill", 1, states, (1, 256, 256))


class _FakeTrt:
    """The slice of the tensorrt module that export() and build_engine() touch; a "serialized engine" is the
    JSON of the ONNX file parsed and the profiles set, so a test can read back what each engine got."""

    __version__ = "10.0.0"
    NetworkDefinitionCreationFlag = MemoryPoolType = ProfilingVerbosity = BuilderFlag = types.SimpleNamespace(
        STRONGLY_TYPED=0, WORKSPACE=0, DETAILED=0, FP16=0, BF16=1)

    class Logger:
        WARNING = 0

        def __init__(self, level):
            pass

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network["onnx"] = Path(path).name
            return True

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return {}

        def create_optimization_profile(self):
            profile = {}
            return types.SimpleNamespace(shapes=profile, set_shape=lambda n, lo, opt, hi: profile.update({n: [lo, opt, hi]}))

        def create_builder_config(self):
            profiles = []
            cache = types.SimpleNamespace(serialize=lambda: b"")
            return types.SimpleNamespace(
                profiles=profiles, set_memory_pool_limit=lambda *a: None, set_flag=lambda f: None,
                create_timing_cache=lambda b: cache, set_timing_cache=lambda c, ignore_mismatch: None,
                get_timing_cache=lambda: cache, add_optimization_profile=lambda p: profiles.append(p.shapes))

        def build_serialized_network(self, network, config):
            return json.dumps({"onnx": network["onnx"], "profiles": config.profiles}).encode()


def _fake_onnx_export(source, out_dir, options):
    """The ONNX exporter's artifact shape for a one-slot state, with the graphs options ask for."""
    import onnx
    from onnx import TensorProto, helper

    from edgeports.exporters import onnx as onnx_exporter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True)
    names = onnx_exporter.graphs(options)
    for name in names:
        ids_len = 1 if name == "decode" else "L"
        graph = helper.make_graph(
            [helper.make_node("Cast", ["ids"], ["logits"], to=TensorProto.FLOAT),
             helper.make_node("Identity", ["past.pos"], ["present.pos"])], name,
            [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, ids_len]),
             helper.make_tensor_value_info("past.pos", TensorProto.INT64, [1])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, ids_len]),
             helper.make_tensor_value_info("present.pos", TensorProto.INT64, [1])])
        onnx.save_model(helper.make_model(graph), str(out_dir / f"{name}.onnx"))
    return types.SimpleNamespace(state_layout=({"name": "pos", "kind": "pos", "shape": [1], "dtype": "int64"},),
                                 shape_ranges={"graphs": {n: {"file": f"{n}.onnx"} for n in names}},
                                 file=lambda n: out_dir / n)


@pytest.mark.parametrize("chunked", [True, False])
def test_export_builds_prefill_next_engine_when_the_onnx_artifact_has_it(tmp_path, monkeypatch, chunked):
    pytest.importorskip("onnx")
    from edgeports.exporters import plugin_build
    from edgeports.models import get_spec

    monkeypatch.setattr(trt_exporter, "import_tensorrt", lambda: _FakeTrt)
    monkeypatch.setattr(trt_exporter, "device_facts", lambda: {"tensorrt": "10.0.0", "gpu": "Fake GPU",
                                                               "compute_capability": "9.0", "cuda": "12.8"})
    monkeypatch.setattr(trt_exporter, "_onnx_exporter", lambda: types.SimpleNamespace(export=_fake_onnx_export))
    monkeypatch.setattr(plugin_build, "cache_dir", lambda: tmp_path / "cache" / "plugins")
    opts = ExportOptions(dtype="float32", max_len=512,
                         extra=(("trt_ssm", "onnx-ops"), ("onnx_chunked", chunked), ("trt_opt_lens", "64")))
    art = trt_exporter.export(get_spec("tiny-llama"), tmp_path / "a", opts)
    graphs = ["prefill", "prefill_next", "decode"] if chunked else ["prefill", "decode"]
    assert art.shape_ranges["graphs"] == graphs and list(art.shape_ranges["io"]) == graphs
    assert {f for f in art.files if f.endswith(".engine")} == {f"{g}.engine" for g in graphs}
    for graph in graphs:
        engine = json.loads(art.file(f"{graph}.engine").read_bytes())
        assert engine["onnx"] == f"{graph}.trt.onnx"  # each engine parsed its own graph
        ids = [p["ids"] for p in engine["profiles"]]
        assert all(p["past.pos"] == [[1]] * 3 for p in engine["profiles"])
        if graph == "decode":
            assert ids == [[[1, 1]] * 3]
        else:  # its own profiles, covering L in [1, max_len] in the length buckets
            assert ids == [[[1, 1], [1, 64], [1, 64]], [[1, 65], [1, 512], [1, 512]]]
    assert [tuple(b) for b in art.shape_ranges["prefill_profiles"]] == [(1, 64, 64), (65, 512, 512)]


# ---- with TensorRT ---------------------------------------------------------------------------------
@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("model", ["tiny-mamba", "tiny-mamba2"])
@pytest.mark.parametrize("mode", ["plugin", "onnx-ops"])
def test_export_builds_engines_and_matches_eager(tmp_path, model, mode):
    if not trt_exporter.available()[0]:
        pytest.skip(trt_exporter.available()[1])
    import torch

    from edgeports.backends import get_backend
    from edgeports.models import get_spec

    spec = get_spec(model)
    opts = ExportOptions(dtype="float32", max_len=512, extra=(("trt_ssm", mode),))
    art = get_backend("trt").export(spec, tmp_path / "a", opts)
    assert {"prefill.engine", "prefill_next.engine", "decode.engine"} <= set(art.files)
    assert ("libedgeports_trt_plugins.so" in art.files) == (mode == "plugin")
    assert art.versions["compute_capability"] and art.versions["tensorrt"]
    assert art.shape_ranges["trt_ssm"] == mode and (mode == "onnx-ops" or all(art.shape_ranges["plugin_nodes"].values()))
    runner = get_backend("trt").load(art, "cuda")
    eager = get_backend("eager").load(get_backend("eager").export(spec, tmp_path / "e", opts), "cuda")
    ids = torch.randint(0, spec.config["vocab_size"], (1, 300), device="cuda")
    for chunk in (None, 128):
        torch.testing.assert_close(runner.prefill(ids, chunk=chunk), eager.prefill(ids, chunk=chunk),
                                   rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(runner.decode(4), eager.decode(4), rtol=1e-3, atol=1e-3)


def test_gqa_attention_lowering_is_refused():
    """TensorRT's parser has no com.microsoft ops: the onnx_attention=gqa lowering is an error, said up front."""
    from edgeports.errors import EdgeportsError
    from edgeports.exporters import trt as trt_export
    from edgeports.exporters.base import ExportOptions
    from edgeports.models import get_spec

    with pytest.raises(EdgeportsError, match="GroupQueryAttention"):
        trt_export.export(get_spec("tiny-llama"), "/nonexistent", ExportOptions(extra=(("onnx_attention", "gqa"),)))
