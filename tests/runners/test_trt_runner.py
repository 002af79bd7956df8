"""TensorRT runner: availability, loading errors, layer categories (CI); decode CUDA graphs and the
per-layer profile (`-m trt`, where TensorRT and a GPU exist)."""

from __future__ import annotations

import importlib.util

import pytest

from edgeports.errors import EdgeportsError
from edgeports.exporters.base import ExportOptions, in_memory
from edgeports.models import get_spec
from edgeports.runners import trt as trt_runner

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_unavailable_reason_names_the_containers():
    ok, reason = trt_runner.available()
    assert not ok and "tensorrt" in reason and "jetson-l4t" in reason


def test_load_needs_an_exported_artifact():
    art = in_memory("trt", get_spec("tiny-llama"), ExportOptions())
    with pytest.raises(EdgeportsError, match="export"):
        trt_runner.load(art, "cuda")


@pytest.mark.parametrize("name,cat", [
    ("/model/layers.0/mixer/SelectiveScan", "ssm_scan"), ("/layers.1/mixer/SsdChunkScan", "ssm_scan"),
    ("/layers.1/mixer/SelectiveStateUpdate", "ssm_scan"), ("/layers.0/mixer/CausalConv1d", "conv"),
    ("/layers.0/self_attn/q_proj/MatMul", "gemm"), ("/layers.0/self_attn/Softmax", "attention"),
    ("{ForeignNode[/model/norm/ReduceMean.../model/norm/Mul_1]}", "norm"), ("/Cast_3", "memory"),
    ("Reformatting CopyNode for Input Tensor 0 to /x/MatMul", "memory"), ("PWN(/Sigmoid, /Mul)", "elementwise"),
    ("myelin_graph_17", "other"),
])
def test_categorize_layer(name, cat):
    assert trt_runner.categorize_layer(name) == cat
    assert cat in trt_runner.CATEGORIES


@pytest.mark.trt
@pytest.mark.gpu
def test_decode_graphs_match_plain_enqueue_and_profile_is_categorised(tmp_path):
    if not trt_runner.available()[0]:
        pytest.skip(trt_runner.available()[1])
    import torch

    from edgeports.backends import get_backend

    spec = get_spec("tiny-mamba2")
    art = get_backend("trt").export(spec, tmp_path / "a", ExportOptions(dtype="float16", max_len=256))
    ids = torch.randint(0, spec.config["vocab_size"], (1, 40), device="cuda")
    graphed = trt_runner.load(art, "cuda")
    graphed.prefill(ids)
    a = graphed.decode(6)
    assert graphed.info["cuda_graph"] is not None
    plain = trt_runner.load(art, "cuda")
    plain._graph_ok = False  # plain enqueues only
    plain.prefill(ids)
    torch.testing.assert_close(a, plain.decode(6))
    prof = plain.layer_profile(ids, decode_steps=2)
    assert prof["categories"]["prefill"]["ssm_scan"] > 0 and prof["layers"]["decode"]
