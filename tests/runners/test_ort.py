"""ONNX Runtime runner (CPU EP) against eager fp32 on every tiny arch: prefill, chunked prefill and 4
greedy decode steps, from artifacts of the ONNX exporter (standard SSM lowering); its refusals; profiling.

Exports are the expensive part (tens of seconds per arch on 2 cores), so one session fixture exports
every arch this run selects once, in two worker processes, longest first; each test waits for its own.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import importlib.util
import multiprocessing
from pathlib import Path

import pytest
import torch

from edgeports.errors import EdgeportsError
from edgeports.exporters.base import ExportOptions, build_lm, read_artifact
from edgeports.models import arch_module, get_spec
from edgeports.runners.base import Unsupported
from edgeports.runners.eager import EagerRunner

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime (pip install 'edgeports[onnx]')")

MAX_LEN = 64
# longest export first (the pool starts them in this order); chunked ones also get prefill_next.onnx
MODELS = ("tiny-hymba", "tiny-zamba2", "tiny-mamba2", "tiny-falcon-h1", "tiny-mamba", "tiny-phi3", "tiny-qwen2",
          "tiny-llama")
CHUNKED = ("tiny-hymba", "tiny-mamba", "tiny-llama")  # meta tokens, a Scan carrying state, a KV cache


def _landed(name: str) -> bool:
    try:
        arch_module(get_spec(name).arch)
        return True
    except (EdgeportsError, KeyError):
        return False


def _spec(name: str):
    spec = get_spec(name)
    if name == "tiny-hymba":  # 3 of its 6 layers still hold every layer kind (global; sliding-window ring KV
        # producer; KV-sharing consumer), at half the export time
        spec = dataclasses.replace(spec, config={**spec.config, "num_hidden_layers": 3, "global_attn_idx": [0],
                                                 "kv_reuse_group": [[1, 2]]})
    return spec


DYNAMIC_CACHE = ("tiny-qwen2",)  # KV caches sized per prompt (onnx_cache=dynamic); the others static


def _options(name: str) -> ExportOptions:
    extra = (("onnx_chunked", name in CHUNKED), ("onnx_cache", "dynamic" if name in DYNAMIC_CACHE else "static"))
    return ExportOptions(dtype="float32", max_len=MAX_LEN, extra=extra)


class Exports:
    """Artifacts exported in a process pool; `get(name)` waits for one."""

    def __init__(self, names: list[str], root: Path):
        from edgeports.exporters import onnx as onnx_exporter

        ctx = multiprocessing.get_context("spawn")  # torch and fork do not mix
        # one thread each: two tracing processes share the 2 CI cores with the ORT sessions of the tests
        self.pool = cf.ProcessPoolExecutor(max_workers=2, mp_context=ctx, initializer=torch.set_num_threads,
                                           initargs=(1,))
        self.jobs = {n: self.pool.submit(onnx_exporter.export, _spec(n), root / n, _options(n))
                     for n in MODELS if n in names}

    def get(self, name: str):
        return read_artifact(self.jobs[name].result().path, backend="onnx")


@pytest.fixture(scope="session")
def exports(request, tmp_path_factory):
    wanted = {item.callspec.params.get("name") for item in request.session.items
              if item.module.__name__.endswith("test_ort") and hasattr(item, "callspec")}
    ex = Exports([n for n in MODELS if n in wanted and _landed(n)], tmp_path_factory.mktemp("onnx"))
    yield ex
    ex.pool.shutdown(cancel_futures=True)


def _runner(exports, name):
    if not _landed(name):
        pytest.skip(f"{name}: its arch has not landed in edgeports.models yet")
    from edgeports.runners import ort

    art = exports.get(name)
    return art, ort.load(art, "cpu"), EagerRunner(build_lm(art.spec, art.options, "cpu"), "cpu")


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).abs().max() / ref.abs().max())


def _check(runner, ref, ids, chunk=None, steps=4, tol=1e-4):
    """Prefill then `steps` greedy decode steps: every step's logits within tol of eager."""
    errs = [_rel(runner.prefill(ids, chunk, max_len=MAX_LEN), ref.prefill(ids, chunk, max_len=MAX_LEN))]
    errs += [_rel(runner.decode(1), ref.decode(1)) for _ in range(steps)]
    assert max(errs) < tol, errs
    return errs


@pytest.mark.parametrize("name", ["tiny-llama"])
def test_rms_norms_fuse_into_one_node(exports, name, tmp_path):
    """ONNX Runtime's graph optimizer turns every exported RMSNorm into SimplifiedLayerNormalization (norm.py's
    division form is the pattern it matches): one kernel per norm, not seven elementwise ones."""
    import onnx
    import onnxruntime as ort

    art = exports.get(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(art.file("prefill.onnx")), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]
    norms = 2 * art.spec.config["num_hidden_layers"] + 1  # before attention, before the MLP; the final one
    assert ops.count("SimplifiedLayerNormalization") == norms, sorted(set(ops))
    assert "Reciprocal" not in ops and "ReduceMean" not in ops


@pytest.mark.parametrize("name", MODELS)
def test_prefill_and_decode_match_eager(exports, name):
    art, runner, ref = _runner(exports, name)
    assert runner.info["provider"] == "CPUExecutionProvider"
    vocab = art.spec.config["vocab_size"]
    g = torch.Generator().manual_seed(7)
    for length in (23, 1):  # a dynamic L the graph was not traced at, and a single token
        _check(runner, ref, torch.randint(0, vocab, (1, length), generator=g))
    # the next prompt starts from a fresh state (in-place buffers do not leak into it)
    ids = torch.randint(0, vocab, (1, 17), generator=g)
    first = runner.prefill(ids).clone()
    runner.decode(3)
    assert torch.equal(runner.prefill(ids), first)
    # state bytes: the layout's KV/conv/SSM slots (static: at the exported max_len), plus a second buffer for
    # each ping-pong slot; a dynamic cache is sized by the prefill's max_len, like eager's
    layout_bytes = sum(torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"])).nbytes for s in art.state_layout[:-1])
    assert runner.state_bytes >= layout_bytes
    if name in DYNAMIC_CACHE:
        runner.prefill(ids, max_len=32)
        assert runner.info["cache"] == "dynamic" and runner.state_bytes < layout_bytes
        assert runner._state.cur[0].shape[2] == 32  # [B, H_kv, max_len, head_dim]
    assert runner.weight_bytes == art.shape_ranges["weights_bytes"]


@pytest.mark.parametrize("name", CHUNKED)
def test_chunked_prefill_matches_eager(exports, name):
    art, runner, ref = _runner(exports, name)
    ids = torch.randint(0, art.spec.config["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(3))
    for chunk in (7, 16):  # several prefill_next calls, and chunks longer than the Mamba1 scan block
        _check(runner, ref, ids, chunk=chunk, steps=2)


def test_inplace_slots_follow_the_graph(exports):
    """KV caches are updated in place; pos (read all over the graph after present.pos is computed) and a
    Hymba ring cache (read before its write) are ping-ponged: the analysis decides, per graph."""
    llama = exports.get("tiny-llama").shape_ranges["graphs"]
    for graph in ("prefill", "prefill_next", "decode"):
        flags = llama[graph]["inplace"]
        assert not flags["present.pos"] and all(v for k, v in flags.items() if k != "present.pos")
    if _landed("tiny-hymba"):
        decode = exports.get("tiny-hymba").shape_ranges["graphs"]["decode"]["inplace"]
        assert not decode["present.layers.1.k"] and decode["present.layers.0.k"]  # ring (window 8) vs global


def test_profile_maps_nodes_to_categories(exports):
    art, runner, _ = _runner(exports, "tiny-mamba")
    out = runner.layer_profile(torch.randint(0, 256, (1, 30)), decode_steps=2)
    pre, dec = out["categories"]["prefill"], out["categories"]["decode"]
    assert pre["ssm_scan"] > 0 and pre["gemm"] > 0 and dec["ssm_scan"] > 0 and dec["conv"] > 0
    scans = [row for row in out["layers"]["prefill"] if row[1] == "Scan"]
    assert len(scans) == art.spec.config["num_hidden_layers"]  # one Scan per Mamba1 layer, bodies not listed
    assert runner.prefill(torch.ones(1, 4, dtype=torch.long)).shape == (1, 256)  # timed sessions are back


def test_refusals(exports, monkeypatch):
    from edgeports.runners import ort

    art, runner, _ = _runner(exports, "tiny-qwen2")
    ids = torch.ones(1, MAX_LEN + 1, dtype=torch.long)
    with pytest.raises(EdgeportsError, match="exported for max_len 64"):
        runner.prefill(ids)
    with pytest.raises(Unsupported, match="no prefill_next.onnx"):
        runner.prefill(ids[:, :20], chunk=8)
    with pytest.raises(EdgeportsError, match="batch"):
        runner.prefill(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(Unsupported, match="CUDAExecutionProvider"):
        monkeypatch.setattr(ort._ort(), "get_available_providers", lambda: ["CPUExecutionProvider"])
        ort.providers(torch.device("cuda", 0))
