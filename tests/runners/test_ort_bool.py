"""Bool tensors in the ONNX Runtime runner without DLPack: onnxruntime 1.31 (the H100's onnxruntime-gpu
1.31.1) rejects DLPack's bool type, kDLBool ("Unsupported code 6"), and mamba2-2.7b's prefill holds bool
[256, 256] SSD masks (in weights.bin in exports made before they stayed inline). The `ort131` fixture makes OrtValue.from_dlpack reject bool
tensors as 1.31 does, so the CPU EP walks the path the CUDA EP failed on, whatever onnxruntime is installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
import torch

from edgeports.exporters.base import ExportOptions, build_lm, read_artifact
from edgeports.models import get_spec

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime (pip install 'edgeports[onnx]')")


@pytest.fixture
def ort131(monkeypatch):
    """OrtValue.from_dlpack as onnxruntime 1.31 has it: a bool tensor raises (dlpack_converter.cc)."""
    import onnxruntime

    real = onnxruntime.OrtValue.from_dlpack

    def from_dlpack(cls, data, /):
        if getattr(data, "dtype", None) == torch.bool:
            raise RuntimeError("dlpack_converter.cc:145 onnxruntime::dlpack::GetOrtValueDataType(const DLDataType&, "
                               "bool) Unsupported code 6")
        return real(data)

    monkeypatch.setattr(onnxruntime.OrtValue, "from_dlpack", classmethod(from_dlpack))
    with pytest.raises(RuntimeError, match="Unsupported code 6"):
        onnxruntime.OrtValue.from_dlpack(torch.zeros(2, dtype=torch.bool))
    assert onnxruntime.OrtValue.from_dlpack(torch.ones(2)).numpy().tolist() == [1.0, 1.0]


def _bool_graph():
    """mask [2, 5] bool, x [2, 5] float -> kept = Not(mask) (bool), y = Where(mask, x, 0)."""
    import onnx
    from onnx import TensorProto, helper

    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph(
        [helper.make_node("Not", ["mask"], ["kept"]), helper.make_node("Where", ["mask", "x", "zero"], ["y"])],
        "bools", [helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 5]),
                  helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("kept", TensorProto.BOOL, [2, 5]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], [zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_bool_io_is_bound_without_dlpack(ort131):
    """The runner's IO binding (_bind, as _run uses it) on bool inputs and outputs: ORT reads and writes the
    torch tensors themselves (a second run sees in-place changes, with the bindings kept)."""
    import onnxruntime

    from edgeports.runners.ort import OrtRunner, _Graph

    sess = onnxruntime.InferenceSession(_bool_graph(), providers=["CPUExecutionProvider"])
    g = _Graph(sess, sess.io_binding(), ["mask", "x"], ["kept", "y"], [])
    gen = torch.Generator().manual_seed(0)
    mask, x = torch.rand(2, 5, generator=gen) > 0.5, torch.randn(2, 5, generator=gen)
    kept, y = torch.ones(2, 5, dtype=torch.bool), torch.full((2, 5), 7.0)
    for _ in range(2):
        for name, t, is_input in (("mask", mask, True), ("x", x, True), ("kept", kept, False), ("y", y, False)):
            OrtRunner._bind(g, name, t, is_input)
        sess.run_with_iobinding(g.binding)
        assert torch.equal(kept, ~mask) and torch.equal(y, torch.where(mask, x, 0.0))
        mask.copy_(torch.rand(2, 5, generator=gen) > 0.5)  # same buffer, new values
        x.normal_(generator=gen)


@pytest.mark.parametrize("masks", ["inline", "in weights.bin"])
def test_bool_masks_run_like_eager(tmp_path, ort131, monkeypatch, masks):
    """tiny-mamba2 at chunk_size 32 has [32, 32] bool SSD masks, as mamba2-2.7b has [256, 256] ones; the exporter
    keeps them inside the graph (`stays_inline`), and an artifact that has them in weights.bin (as exports
    before that rule did: mamba2-2.7b's on the H100) still runs. Exported as benchmarks/backends.py's
    export_onnx does (no prefill_next, dynamic caches): prefill over two chunks and 4 decode steps against
    eager fp32, the weights counted."""
    from edgeports.exporters import onnx as onnx_exporter
    from edgeports.exporters import onnx_graph
    from edgeports.measure.parity import rel_err
    from edgeports.runners import ort
    from edgeports.runners.eager import EagerRunner

    if masks == "in weights.bin":
        monkeypatch.setattr(onnx_graph, "stays_inline", lambda tensor: tensor.nbytes < onnx_graph.INLINE_MAX)
    spec = get_spec("tiny-mamba2")
    spec = dataclasses.replace(spec, config={**spec.config, "chunk_size": 32, "num_hidden_layers": 1})
    options = ExportOptions(dtype="float32", max_len=64, extra=(("onnx_chunked", False), ("onnx_cache", "dynamic")))
    art = read_artifact(onnx_exporter.export(spec, tmp_path / "m", options).path, backend="onnx")
    index = json.loads(art.file(onnx_graph.WEIGHTS_INDEX).read_text())
    stored = [e["shape"] for e in index.values() if e["dtype"] == "bool"]
    assert stored == ([] if masks == "inline" else [[32, 32], [32, 32]])
    runner, ref = ort.load(art, "cpu"), EagerRunner(build_lm(art.spec, art.options, "cpu"), "cpu")
    assert runner.weight_bytes == art.shape_ranges["weights_bytes"]
    ids = torch.randint(0, art.spec.config["vocab_size"], (1, 45), generator=torch.Generator().manual_seed(1))
    errs = [rel_err(runner.prefill(ids, max_len=64), ref.prefill(ids, max_len=64))]
    errs += [rel_err(runner.decode(1), ref.decode(1)) for _ in range(4)]
    assert max(errs) < 1e-4, errs


def test_ortvalue_refuses_bool():
    """No bool tensor reaches DLPack by way of ortvalue (it would fail on onnxruntime 1.31 only)."""
    from edgeports.runners import ort

    with pytest.raises(TypeError, match="kDLBool"):
        ort.ortvalue(torch.zeros(3, dtype=torch.bool))
