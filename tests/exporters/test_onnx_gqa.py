"""onnx_attention=gqa: each Attention as one com.microsoft.GroupQueryAttention node. The torch wrapper and
the op's reference against Attention.attend (no ONNX); ONNX Runtime (CPU EP; CUDA EP: gpu) against eager fp32 for a
transformer (static and dynamic caches, a sliding window, chunked prefill) and a hybrid; graph size
independent of L; the refusals."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections import Counter

import pytest
import torch

from edgeports.errors import EdgeportsError
from edgeports.exporters import onnx as onnx_exporter
from edgeports.exporters.base import ExportOptions, build_lm, read_artifact
from edgeports.models import build, get_spec
from edgeports.models.lm import Ctx

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs onnx, onnxscript and onnxruntime (pip install 'edgeports[onnx]')")
MAX_LEN = 64


def _opts(batch: int = 1, **extra) -> ExportOptions:
    return ExportOptions(dtype="float32", max_len=MAX_LEN, batch=batch,
                         extra=tuple({"onnx_attention": "gqa", **extra}.items()))


def _spec(name: str, **config):
    spec = get_spec(name)
    return dataclasses.replace(spec, config={**spec.config, **config}) if config else spec


@pytest.mark.parametrize("window", [None, 5])
def test_gqa_attend_matches_attention_attend(window):
    """The wrapper and the op's eager reference (GroupQueryAttention's contract) reproduce Attention.attend:
    a fresh prompt, a continued chunk and a decode step, batch 2, fresh random inputs."""
    from edgeports.exporters import onnx_custom
    from edgeports.models.layers.attention import Attention

    g = torch.Generator().manual_seed(0)
    attn = Attention(32, 4, 2, 8, sliding_window=window, scaling=0.3)
    caches = [torch.zeros(2, 2, 24, 8), torch.zeros(2, 2, 24, 8)]
    ours = [c.clone() for c in caches]
    pos = 0
    for L, first in ((9, True), (6, False), (1, False)):
        q, k, v = torch.randn(2, 4, L, 8, generator=g), torch.randn(2, 2, L, 8, generator=g), \
            torch.randn(2, 2, L, 8, generator=g)
        ctx = Ctx(pos=torch.tensor([pos]), seq_len=L, first=first, decode=L == 1)
        want, caches = attn.attend(q, k, v, caches, ctx)
        with onnx_custom.gqa_attention(attn) as patched:
            got, ours = attn.attend(q, k, v, ours, ctx)
        assert patched == 1 and "attend" not in attn.__dict__
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for a, b in zip(ours, caches, strict=True):
            torch.testing.assert_close(a[:, :, :pos + L], b[:, :, :pos + L])
        pos += L


# name, spec overrides, extra options: a transformer with a KV cache per prompt and a sliding window of 8
# keys (the 23-token prompt and the decode steps cross it); chunked prefill; a hybrid (Mamba2 + attention)
CASES = {"tiny-llama": ({}, {"onnx_chunked": True}),
         "tiny-qwen2": ({"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0},
                        {"onnx_chunked": False, "onnx_cache": "dynamic"}),
         "tiny-phi3": ({}, {"onnx_chunked": False}),
         "tiny-falcon-h1": ({}, {"onnx_chunked": False})}


@pytest.mark.parametrize("name", list(CASES))
def test_ort_runs_gqa_graphs_like_eager(tmp_path, name):
    import onnx

    from edgeports.exporters import onnx_custom
    from edgeports.models.layers.attention import Attention
    from edgeports.runners import ort
    from edgeports.runners.eager import EagerRunner

    config, extra = CASES[name]
    art = read_artifact(onnx_exporter.export(_spec(name, **config), tmp_path / name, _opts(**extra)).path, "onnx")
    lm = build_lm(art.spec, art.options, "cpu")
    kv = onnx_exporter.kv_layers(lm)
    onnx_custom.register_gqa_schema()
    for meta in art.shape_ranges["graphs"].values():
        onnx.checker.check_model(str(art.file(meta["file"])), full_check=True)
        nodes = onnx.load(str(art.file(meta["file"])), load_external_data=False).graph.node
        ops = Counter((n.domain, n.op_type) for n in nodes)
        assert ops[("com.microsoft", "GroupQueryAttention")] == kv == meta["attention_nodes"]
        windows = {onnx.helper.get_attribute_value(a) for n in nodes if n.op_type == "GroupQueryAttention"
                   for a in n.attribute if a.name == "local_window_size"}
        assert windows == {m.sliding_window or -1 for m in lm.modules() if isinstance(m, Attention)}
        assert not ops[("", "Attention")] and not ops[("", "ScatterND")]  # no standard attention or cache write
        assert all(meta["inplace"][f"present.{s['name']}"] for s in art.state_layout if s["kind"] in ("k", "v"))
        # total_sequence_length (input 6, read on the host by the CUDA EP) from shapes, never from a state
        gqa_nodes = [n for n in nodes if n.op_type == "GroupQueryAttention"]
        assert not {i for n in gqa_nodes for i in _graph_inputs_under(nodes, n.input[6])} & \
            {f"past.{s['name']}" for s in art.state_layout}
    if name == "tiny-qwen2":  # the window cuts in
        assert {m.sliding_window for m in lm.modules() if isinstance(m, Attention)} == {8}
    for chunk, errs in _errors_against(ort.load(art, "cpu"), EagerRunner(lm, "cpu"), art, "cpu").items():
        assert max(errs) < 1e-4, (chunk, errs)


def _errors_against(runner, ref, art, device: str) -> dict[int | None, list[float]]:
    """Per prefill chunking the artifact has (whole, and chunks of 8 where prefill_next exists): the relative
    errors of a 23-token prefill (fresh random ids) and of 4 decode steps after it, runner against ref."""
    from edgeports.measure.parity import rel_err

    ids = torch.randint(0, art.spec.config["vocab_size"], (1, 23), device=device)
    out = {}
    for chunk in (None, 8) if "prefill_next" in art.shape_ranges["graphs"] else (None,):
        errs = [rel_err(runner.prefill(ids, chunk, max_len=MAX_LEN), ref.prefill(ids, chunk, max_len=MAX_LEN))]
        out[chunk] = errs + [rel_err(runner.decode(1), ref.decode(1)) for _ in range(4)]
    return out


def _graph_inputs_under(nodes, value: str) -> set[str]:
    """The names `value` is computed from that no node produces (graph inputs and initializers), not looking
    past Shape nodes (a tensor's shape is known on the host without reading the tensor)."""
    producer = {o: n for n in nodes for o in n.output}
    seen, todo, leaves = set(), [value], set()
    while todo:
        v = todo.pop()
        if v in seen or not v:
            continue
        seen.add(v)
        if v in producer:
            todo.extend(producer[v].input if producer[v].op_type != "Shape" else ())
        else:
            leaves.add(v)
    return leaves


def test_gqa_graph_is_length_independent():
    lm = build("tiny-llama", dtype="float32")
    short, long = (onnx_exporter.trace(lm, "prefill", 1, MAX_LEN, "standard", 23, trace_len=n, attention="gqa")
                   for n in (11, 50))
    counts = [Counter(f"{n.domain}:{n.op_type}" for n in m.graph) for m in (short, long)]
    assert counts[0] == counts[1] and counts[0]["com.microsoft:GroupQueryAttention"] == 2


@pytest.mark.parametrize("name,options,words", [
    ("tiny-hymba", {}, "other than layers.attention.Attention"),
    ("tiny-llama", {"batch": 2}, "onnx_chunked=false"),
    ("tiny-llama", {"onnx_attention": "flash"}, "onnx_attention must be one of")])
def test_gqa_refusals(tmp_path, name, options, words):
    with pytest.raises(EdgeportsError, match=words):
        onnx_exporter.export(get_spec(name), tmp_path / "x", _opts(**options))
    assert not (tmp_path / "x").exists()


def test_models_without_attention_export_as_standard(tmp_path):
    art = onnx_exporter.export(_spec("tiny-mamba2", num_hidden_layers=1), tmp_path / "m", _opts(onnx_chunked=False))
    assert art.shape_ranges["onnx_attention"] == "standard"
    assert not onnx_exporter.gqa_applicable(build("tiny-mamba2", dtype="float32"))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_cuda_ep_runs_gqa_graphs_like_eager(tmp_path, name):
    """The CUDA EP's GroupQueryAttention (fp16 only there) against eager fp32 with the same weights, a prompt
    crossing tiny-qwen2's 8-key window, chunked where exported, then 4 decode steps."""
    import onnxruntime

    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs CUDA and onnxruntime-gpu (CUDAExecutionProvider)")
    from edgeports.measure.parity import TOLERANCE
    from edgeports.runners import ort
    from edgeports.runners.eager import EagerRunner

    config, extra = CASES[name]
    opts = dataclasses.replace(_opts(**extra), dtype="float16")
    art = read_artifact(onnx_exporter.export(_spec(name, **config), tmp_path / name, opts).path, "onnx")
    runner = ort.load(art, "cuda")
    assert runner.info["provider"] == "CUDAExecutionProvider"
    ref = EagerRunner(build_lm(art.spec, art.options, "cuda").float(), "cuda")
    for chunk, errs in _errors_against(runner, ref, art, "cuda").items():
        assert max(errs) < TOLERANCE["float16"], (chunk, errs)
