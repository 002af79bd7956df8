"""ONNX exporter: graphs independent of the traced length, the SSM lowerings (standard decomposition run by
ONNX Runtime against the ref kernels; custom ai.edgeports nodes as documented), the manifest and the shared
external weights, options and their errors, and the onnx backend end to end through a sweep."""

from __future__ import annotations

import importlib.util
import json
import math
from collections import Counter

import pytest
import torch

from edgeports import kernels
from edgeports.cli import main
from edgeports.errors import EdgeportsError
from edgeports.exporters import onnx as onnx_exporter
from edgeports.exporters.base import ExportOptions, build_lm, read_artifact
from edgeports.models import build, get_spec
from edgeports.runners.base import Unsupported

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime (pip install 'edgeports[onnx]')")
FP32 = ExportOptions(dtype="float32", max_len=64)


def _opts(**extra) -> ExportOptions:
    return ExportOptions(dtype="float32", max_len=64, extra=tuple(extra.items()))


def _op_counts(model) -> Counter:
    """Op types over the graph and every subgraph (a Scan body counts too)."""
    from onnx_ir import traversal

    return Counter(f"{n.domain}:{n.op_type}" for n in traversal.RecursiveGraphIterator(model.graph))


class SSMOps(torch.nn.Module):
    """The three prefill kernels in a row: conv -> Mamba1 scan -> Mamba2 SSD (on the same sequence)."""

    def forward(self, x, w, delta, A, B, C, Dp, A2, h0):
        xc, conv = kernels.causal_conv1d(x, w, None, None, "silu")  # x [1,D,L]
        y, h = kernels.selective_scan(xc, delta, A, B, C, Dp, x, Dp, True, h0)
        bt, d, L = x.shape
        y2, h2 = kernels.ssd_chunk_scan(y.transpose(1, 2).reshape(bt, L, 4, d // 4), delta[:, :4].transpose(1, 2),
                                        A2, B.transpose(1, 2)[:, :, None], C.transpose(1, 2)[:, :, None], 16,
                                        dt_softplus=True)
        return y2, h, h2, conv


def _ssm_inputs(L, g):
    D, N = 16, 4
    return (torch.randn(1, D, L, generator=g), torch.randn(D, 4, generator=g), torch.randn(1, D, L, generator=g),
            -torch.rand(D, N, generator=g) - 0.1, torch.randn(1, N, L, generator=g), torch.randn(1, N, L, generator=g),
            torch.randn(D, generator=g), -torch.rand(4, generator=g) - 0.1, torch.randn(1, D, N, generator=g))


def _ssm_model(trace_len):
    L = torch.export.Dim.DYNAMIC(min=1, max=4096)
    dyn = ({2: L}, None, {2: L}, None, {2: L}, {2: L}, None, None, None)
    names = ["x", "w", "delta", "A", "B", "C", "D", "A2", "h0"]
    return onnx_exporter.to_onnx(SSMOps(), _ssm_inputs(trace_len, torch.Generator().manual_seed(0)), dyn, names,
                                 ["y", "h", "h2", "conv"])


def test_ssm_decomposition_is_length_independent_and_matches_ref(tmp_path):
    import onnx_ir as ir
    import onnxruntime as ort

    a, b = _ssm_model(37), _ssm_model(150)  # within one Mamba1 scan block of 64, and over two
    assert _op_counts(a) == _op_counts(b)
    assert _op_counts(a)[":Scan"] == 1  # Mamba1: one Scan over chunks; SSD and conv are loop-free
    path = tmp_path / "ssm.onnx"
    ir.save(a, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    for L in (1, 5, 64, 130, 257):  # fresh inputs; partial blocks; several chunks of both scans
        args = _ssm_inputs(L, g)
        got = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), args, strict=True)})
        with kernels.use("ref"):
            want = SSMOps()(*args)
        for x, ref in zip(got, want, strict=True):
            assert torch.allclose(torch.from_numpy(x), ref, rtol=1e-4, atol=1e-4), L


def test_model_prefill_graph_is_length_independent():
    lm = build("tiny-mamba", dtype="float32")
    short, long = (onnx_exporter.trace(lm, "prefill", 1, 256, "standard", 23, trace_len=n) for n in (19, 200))
    assert _op_counts(short) == _op_counts(long) and _op_counts(short)[":Scan"] == lm.spec.config["num_hidden_layers"]


@pytest.mark.parametrize("name,prefill_ops", [("tiny-mamba", ("CausalConv1d", "SelectiveScan")),
                                              ("tiny-mamba2", ("CausalConv1d", "SsdChunkScan"))])
def test_custom_lowering_emits_the_documented_nodes(tmp_path, name, prefill_ops):
    import onnx

    from edgeports.exporters import onnx_custom

    art = onnx_exporter.export(get_spec(name), tmp_path / name, _opts(onnx_ssm="custom", onnx_chunked="false"))
    layers = get_spec(name).config["num_hidden_layers"]
    expect = {"prefill": prefill_ops, "decode": ("CausalConv1dUpdate", "SelectiveStateUpdate")}
    kinds = {"int": onnx.AttributeProto.INT, "float": onnx.AttributeProto.FLOAT, "string": onnx.AttributeProto.STRING}
    for graph, ops in expect.items():
        onnx.checker.check_model(str(art.file(f"{graph}.onnx")), full_check=True)  # by path: external weights
        model = onnx.load(str(art.file(f"{graph}.onnx")), load_external_data=False)
        nodes = [n for n in model.graph.node if n.domain == onnx_custom.DOMAIN]
        assert Counter(n.op_type for n in nodes) == {op: layers for op in ops}
        assert not any(n.op_type == "Scan" for n in model.graph.node)  # nothing of the decomposition left
        for n in nodes:
            spec = onnx_custom.BY_OP_TYPE[n.op_type]
            assert len(n.input) == len(spec.inputs) and all(n.input[:spec.required]) and len(n.output) == 2
            assert {a.name: a.type for a in n.attribute} == {k: kinds[v] for k, v in spec.attrs}
        assert art.shape_ranges["graphs"][graph]["custom_nodes"] == len(nodes)
    ssd = [n for n in onnx.load(str(art.file("prefill.onnx")), load_external_data=False).graph.node
           if n.op_type == "SsdChunkScan"]
    for n in ssd:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["chunk_size"] > 0 and attrs["dt_softplus"] == 1 and math.isinf(attrs["dt_max"])
    # runs on ORT with edgeports' custom-op library: tests/exporters/test_ort_custom_ops.py


def test_cli_export_manifest_and_shared_weights(tmp_path, capsys):
    import onnx

    from edgeports.exporters.onnx_graph import WEIGHTS_INDEX

    out = tmp_path / "llama"
    assert main(["export", "--model", "tiny-llama", "--backend", "onnx", "--dtype", "fp32", "--max-len", "64",
                 "--out", str(out)]) is None
    assert "exported tiny-llama" in capsys.readouterr().out
    art = read_artifact(out, "onnx")  # files present and matching their hashes
    r = art.shape_ranges
    assert set(art.files) == {"prefill.onnx", "prefill_next.onnx", "decode.onnx", "weights.bin", WEIGHTS_INDEX}
    assert r["opset"] == 23 and r["onnx_ssm"] == "standard" and r["max_len"] == 64 and r["batch"] == [1, 1]
    assert art.versions["onnx"] and art.versions["onnxscript"]
    slots = [s["name"] for s in art.state_layout]
    index = json.loads(art.file(WEIGHTS_INDEX).read_text())
    for graph in ("prefill", "prefill_next", "decode"):
        g = r["graphs"][graph]
        assert [i["name"] for i in g["inputs"]] == ["ids"] + [f"past.{s}" for s in slots]
        assert [o["name"] for o in g["outputs"]] == ["logits"] + [f"present.{s}" for s in slots]
        assert g["dynamic_axes"] == ({} if graph == "decode" else {"ids": {"1": "L"}})
        assert g["inputs"][1]["dims"] == [1, 2, 64, 16]  # static KV cache [B, H_kv, max_len, head_dim]
        model = onnx.load(str(art.file(f"{graph}.onnx")), load_external_data=False)
        assert any(n.op_type == "Attention" for n in model.graph.node)  # opset 23: SDPA is one node
        for init in model.graph.initializer:  # every weight is in the one shared file, under one name
            external = init.data_location == onnx.TensorProto.EXTERNAL
            assert external == (init.name in index)
            if external:
                assert {e.key: e.value for e in init.external_data}["location"] == "weights.bin"
    lm = build_lm(art.spec, art.options, "cpu")
    assert r["weights_bytes"] <= lm.weight_bytes() and (out / "weights.bin").stat().st_size < 2 * lm.weight_bytes()


def test_opset_18_and_bfloat16(tmp_path):
    import onnx

    from edgeports.runners import ort

    art = onnx_exporter.export(get_spec("tiny-qwen2"), tmp_path / "q18", _opts(onnx_opset=18, onnx_chunked=0))
    ops = {n.op_type for n in onnx.load(str(art.file("prefill.onnx")), load_external_data=False).graph.node}
    assert "Attention" not in ops and "RMSNormalization" not in ops and "Softmax" in ops
    runner, ref = ort.load(art, "cpu"), build_lm(art.spec, art.options, "cpu")
    ids = torch.randint(0, 256, (1, 21))
    with torch.no_grad():
        want, _ = ref.prefill(ids, ref.new_state(1, 64), first=True)
    assert float((runner.prefill(ids) - want).abs().max() / want.abs().max()) < 1e-4
    bf16 = onnx_exporter.export(get_spec("tiny-qwen2"), tmp_path / "bf16",
                                ExportOptions(dtype="bf16", max_len=64, extra=(("onnx_chunked", "no"),)))
    assert {e["dtype"] for e in json.loads(bf16.file("weights.json").read_text()).values()} == {"bfloat16"}
    with pytest.raises(Unsupported, match="cannot run this bfloat16 graph"):  # the CPU EP has no bf16 MatMul
        ort.load(bf16, "cpu")


@pytest.mark.parametrize("extra,words", [({"onnx_ssm": "fused"}, "onnx_ssm must be one of"),
                                         ({"onnx_opset": 17}, "too old"), ({"onnx_opset": "x"}, "integer"),
                                         ({"onnx_cache": "huge"}, "onnx_cache must be one of")])
def test_bad_options_are_one_line_errors(tmp_path, extra, words):
    with pytest.raises(EdgeportsError, match=words):
        onnx_exporter.export(get_spec("tiny-llama"), tmp_path / "x", _opts(**extra))
    assert not (tmp_path / "x").exists()


def test_unavailable_says_what_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    ok, reason = onnx_exporter.available()
    assert not ok and "onnxscript" in reason and "edgeports[onnx]" in reason


@pytest.mark.parametrize("lens", ["64", "16"])
def test_sweep_runs_onnx_with_parity_first(tmp_path, lens):
    """Parity runs before the timings, also in a sweep shorter than the check's usual 48-token prompt (the
    graphs are exported for the sweep's max_len: the check then fits its prompt to it)."""
    from edgeports import sweep
    from edgeports.results import ResultStore

    counts = sweep.run(sweep.SweepConfig(models=("tiny-llama",), backends="onnx", lens=lens, device="cpu",
                                         dtype="float32", decode_len=2, repeats=1, warmup=0, progress=False,
                                         prefill_modes=("full", "chunk:8"), db=str(tmp_path / "r.db")))
    assert counts == {"ok": 2}
    with ResultStore(tmp_path / "r.db", create=False) as store:
        rows = store.rows()
    for row in rows:
        assert row.parity.startswith("ok (prefill+decode") and json.loads(row.runner_info)["provider"] == "CPUExecutionProvider"
