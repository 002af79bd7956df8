"""TensorRT runner: availability, loading errors, layer categories, which engine each prefill chunk runs
(CI, on a stand-in runner); decode CUDA graphs, chunked parity and the per-layer profile (`-m trt`, where
TensorRT and a GPU exist)."""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch

from edgeports.errors import EdgeportsError
from edgeports.exporters.base import ExportOptions, in_memory
from edgeports.models import get_spec
from edgeports.runners import trt as trt_runner
from edgeports.runners.base import StepRunner, Unsupported

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_unavailable_reason_names_the_containers():
    ok, reason = trt_runner.available()
    assert not ok and "tensorrt" in reason and "jetson-l4t" in reason


def test_load_needs_an_exported_artifact():
    art = in_memory("trt", get_spec("tiny-llama"), ExportOptions())
    with pytest.raises(EdgeportsError, match="export"):
        trt_runner.load(art, "cuda")


def _cpu_runner(engines: tuple[str, ...]) -> trt_runner.TrtRunner:
    """A TrtRunner without TensorRT or CUDA: stand-in engines by name, buckets [1, 4] and [5, 64], a one-slot
    state, and the CUDA enqueue (_run_prefill) replaced by a recorder of (engine, profile, chunk length)."""
    runner = object.__new__(trt_runner.TrtRunner)
    StepRunner.__init__(runner, "cpu", torch.float32)
    runner._engines = {g: types.SimpleNamespace(name=g) for g in engines}
    runner._buckets = [(1, 4, 4), (5, 64, 64)]
    runner._batch, runner._art_max_len, runner._bufs = 1, 64, None
    runner._layout = [("pos", "pos", (1,), torch.int64)]
    runner.calls = []

    def run(eng, profile, ids):
        runner.calls.append((eng.name, profile, ids.shape[1]))
        return torch.randn(1, 8), runner._bufs[0]

    runner._run_prefill = run
    return runner


def test_prefill_runs_prefill_for_the_first_chunk_and_prefill_next_after():
    runner = _cpu_runner(("prefill", "prefill_next", "decode"))
    ids = torch.randint(0, 8, (1, 10))
    runner.prefill(ids, chunk=4)
    assert runner.calls == [("prefill", 0, 4), ("prefill_next", 0, 4), ("prefill_next", 0, 2)]
    runner.calls.clear()
    runner.prefill(ids, chunk=6)  # a new prompt starts again on prefill; 6 tokens are in the second bucket
    assert runner.calls == [("prefill", 1, 6), ("prefill_next", 0, 4)]
    for chunk in (None, 10, 32):  # one chunk: the first-chunk engine only
        runner.calls.clear()
        runner.prefill(ids, chunk=chunk)
        assert runner.calls == [("prefill", 1, 10)]
        assert runner._max_len == 64  # 10 + DEFAULT_HEADROOM, capped at what the engines hold


def test_chunked_prefill_without_prefill_next_engine_is_unsupported():
    runner = _cpu_runner(("prefill", "decode"))
    ids = torch.randint(0, 8, (1, 10))
    with pytest.raises(Unsupported, match="prefill_next.engine"):
        runner.prefill(ids, chunk=4)
    assert runner.calls == []  # refused before any chunk ran
    runner.prefill(ids)
    runner.prefill(ids, chunk=10)
    assert runner.calls == [("prefill", 1, 10)] * 2


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
