"""ONNX export (torch.onnx, dynamo exporter): prefill.onnx, prefill_next.onnx and decode.onnx.

Each graph is `torch.export` of one LM step, then `torch.onnx.export` of that program:

    prefill       lm.prefill(ids[B,L], state, first=True)    the first chunk, from a fresh (zero) state
    prefill_next  lm.prefill(ids[B,L], state, first=False)   any later chunk (chunked prefill)
    decode        lm.decode(ids[B,1], state)                 static shapes

Why two prefill graphs: `first=True` attends over the new tokens alone (causal, no [L, max_len] mask)
and skips reading the zero SSM states, and Hymba prepends its meta tokens only there; an exported
graph cannot look at `pos` to decide, so continuing a state needs the `first=False` graph. The ORT
runner uses prefill for a full prompt and for the first chunk, prefill_next for the others.

I/O of every graph: `ids` (int64 [B, L]) then `past.<slot>` for each State slot in layout order
(`past.layers.3.k`, ..., `past.pos`); outputs `logits` (float32 [B, V]) then `present.<slot>` in the
same order. Batch and max_len are static (options.batch, options.max_len); L is the only dynamic axis
(prefill graphs, named "L", 1..max_len). The manifest (`shape_ranges`) records each graph's inputs,
outputs, dtypes, dims and dynamic axes, the opset, the SSM lowering, node counts, and per state slot
whether `present` may be written into `past`'s buffer (`inplace`, see onnx_graph.inplace_slots).

SSM lowering (options.extra["onnx_ssm"]):
- "standard" (default): traced under `edgeports.kernels.use("torch")`, so the SSM ops become their
  chunked decomposition in standard ONNX ops. Mamba2's SSD and the convolutions are loop-free; Mamba1's
  scan over chunks is torch's `scan` higher-order op, which torch.onnx lowers to one ONNX `Scan` node per
  layer (body: the parallel scan inside a chunk). The graph size does not depend on L.
- "custom": the `edgeports::` custom ops stay opaque and become one `ai.edgeports` node each
  (exporters/onnx_custom.py documents the nodes); for the TensorRT plugins. ONNX Runtime cannot run it.

Attention lowering (options.extra["onnx_attention"]):
- "standard" (default): SDPA as torch.onnx lowers it (opset 23: one ONNX `Attention` node; 18: MatMul/
  Softmax), the KV cache written with ScatterND. Every runtime (TensorRT's parser included) knows it.
- "gqa": each attention of the transformer/hybrid archs (layers.attention.Attention) becomes one ONNX
  Runtime contrib node com.microsoft.GroupQueryAttention reading past.<layer>.k/v and writing
  present.<layer>.k/v in ORT's shared-buffer mode (exporters/onnx_custom.py has the contract); RoPE stays
  outside. ONNX Runtime only (flash/memory-efficient kernels on its CUDA EP). Refused for attention that
  is not that layer (Hymba's ring-buffer cores) and, with prefill_next.onnx, for batch > 1 (ORT continues
  a prompt only at batch 1). A model without attention exports as with "standard".

Other knobs (options.extra): onnx_opset (default 23: SDPA becomes ONNX `Attention`, RMSNorm
`RMSNormalization`; at least 18, where both are decomposed), onnx_chunked (default true: also write
prefill_next.onnx). Weights are always external data in one `weights.bin` shared by the three graphs
(onnx_graph.WeightStore), so the 2 GB protobuf limit never applies and the runner loads them once.
Every graph passes onnx.checker (full check, with strict shape inference) before the artifact is kept.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import re
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from edgeports.errors import EdgeportsError
from edgeports.exporters.base import (
    Artifact,
    ExportOptions,
    build_lm,
    layout_json,
    library_versions,
    lm_options,
    resolve_spec,
    stage,
    write_manifest,
)
from edgeports.models import LM, ModelSpec

NAME = "onnx"
GRAPHS = ("prefill", "prefill_next", "decode")
SSM_LOWERINGS = ("standard", "custom")
ATTENTION_LOWERINGS = ("standard", "gqa")
DEFAULT_OPSET = 23
MIN_OPSET = 18
TRACE_LEN = 37  # sample prompt length for tracing (prime: unlikely to coincide with a static dim)
LEN_AXIS = "L"
CACHE_AXIS = "max_len"
CACHE_MODES = ("static", "dynamic")


def available() -> tuple[bool, str]:
    """torch.onnx's dynamo exporter needs onnx and onnxscript."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed (pip install 'edgeports[onnx]')"
    return True, ""


def ssm_lowering(options: ExportOptions) -> str:
    """options.extra["onnx_ssm"], checked."""
    return options.choice("onnx_ssm", "standard", SSM_LOWERINGS)


def attention_lowering(options: ExportOptions) -> str:
    """options.extra["onnx_attention"], checked."""
    return options.choice("onnx_attention", "standard", ATTENTION_LOWERINGS)


def kv_layers(lm: LM) -> int:
    """How many KV caches (attention uses) the LM's state holds."""
    return sum(1 for s in lm.state_layout(1, 2) if s.kind == "k")


def gqa_applicable(lm: LM) -> bool:
    """Whether onnx_attention=gqa has attention to lower in this LM: KV caches and layers.attention.Attention
    layers (the export then checks that every KV cache got its GroupQueryAttention node)."""
    from edgeports.models.layers.attention import Attention

    return kv_layers(lm) > 0 and any(isinstance(m, Attention) for m in lm.modules())


def opset(options: ExportOptions) -> int:
    """options.extra["onnx_opset"], checked."""
    value = options.integer("onnx_opset", DEFAULT_OPSET)
    if value < MIN_OPSET:
        raise EdgeportsError(f"onnx_opset {value} is too old: the exporter needs >= {MIN_OPSET}")
    return value


def graphs(options: ExportOptions) -> tuple[str, ...]:
    """The graphs an export writes: prefill_next only when chunked prefill is wanted (the default)."""
    return GRAPHS if options.flag("onnx_chunked", True) else ("prefill", "decode")


class Step(torch.nn.Module):
    """One LM step with the flat signature the graphs take: (ids, *state) -> (logits, *state)."""

    def __init__(self, lm: LM, graph: str):
        super().__init__()
        self.lm, self.graph = lm, graph

    def forward(self, ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.graph == "decode":
            logits, new = self.lm.decode(ids, tuple(state))
        else:
            logits, new = self.lm.prefill(ids, tuple(state), first=self.graph == "prefill")
        return (logits, *new)


def io_names(layout) -> tuple[list[str], list[str]]:
    """Graph input and output names for a state layout."""
    return (["ids"] + [f"past.{s.name}" for s in layout], ["logits"] + [f"present.{s.name}" for s in layout])


def cache_mode(options: ExportOptions) -> str:
    """options.extra["onnx_cache"], checked."""
    return options.choice("onnx_cache", "static", CACHE_MODES)


# the `--opt` keys this backend reads, each with the function that checks its value (edgeports.options)
OPTIONS = {"onnx_ssm": ssm_lowering, "onnx_attention": attention_lowering, "onnx_opset": opset,
           "onnx_chunked": graphs, "onnx_cache": cache_mode}


def cache_axes(lm: LM, batch: int, max_len: int) -> dict[str, tuple[int, int]]:
    """{slot: (axis, offset)} for the state dims that grow with max_len (size = max_len + offset): KV caches,
    Hymba's with its meta tokens; a ring cache shorter than max_len does not grow and stays static."""
    a, b = lm.state_layout(batch, max_len), lm.state_layout(batch, max_len + 17)
    out = {}
    for sa, sb in zip(a, b, strict=True):
        grown = [i for i, (x, y) in enumerate(zip(sa.shape, sb.shape, strict=True)) if y - x == 17]
        if grown:
            out[sa.name] = (grown[0], sa.shape[grown[0]] - max_len)
    return out


def trace(lm: LM, graph: str, batch: int, max_len: int, lowering: str, opset_version: int, trace_len: int = TRACE_LEN,
          cache: str = "static", attention: str = "standard"):
    """One graph of an LM -> an onnx_ir Model (not yet saved). cache="dynamic" makes the max_len axis of
    the KV caches a graph dimension ("max_len", 2..max_len) instead of the constant max_len; attention="gqa"
    lowers each Attention to one GroupQueryAttention node."""
    state = lm.new_state(batch, max_len, "cpu")
    length = 1 if graph == "decode" else min(trace_len, max_len)
    ids = torch.randint(0, lm.spec.config["vocab_size"], (batch, length))
    length_dim = None if graph == "decode" else {1: torch.export.Dim.DYNAMIC(min=1, max=max_len)}
    layout = lm.state_layout(batch, max_len)
    axes = cache_axes(lm, batch, max_len) if cache == "dynamic" else {}
    # one symbol for every cache (a dim of max_len + offset is derived from it)
    cache_dim = torch.export.Dim(CACHE_AXIS, min=2, max=max_len)
    state_dims = tuple({axes[s.name][0]: cache_dim + axes[s.name][1] if axes[s.name][1] else cache_dim}
                       if s.name in axes else None for s in layout)
    inputs, outputs = io_names(layout)
    return to_onnx(Step(lm, graph), (ids, *state), (length_dim, state_dims), inputs, outputs, lowering, opset_version,
                   attention)


def to_onnx(module: torch.nn.Module, args: tuple, dynamic_shapes, input_names: list[str], output_names: list[str],
            lowering: str = "standard", opset_version: int = DEFAULT_OPSET, attention: str = "standard"):
    """torch.export (non-strict) + torch.onnx.export of any module calling edgeports.kernels -> onnx_ir Model.

    standard: the kernels are traced through their torch decomposition; custom: the edgeports:: custom ops
    stay opaque and become ai.edgeports nodes (all inputs listed). attention="gqa": the module's Attention
    layers trace as one edgeports_onnx custom op each, which becomes a com.microsoft GroupQueryAttention.
    The module traces in its ONNX form (layers.norm.onnx_form): RMS norms as ONNX Runtime fuses them, Mamba
    mixers' prefill projections straight into the SSM kernels' layouts (layers/mamba.py: no [L, D] copies)."""
    from edgeports import kernels
    from edgeports.exporters import onnx_custom
    from edgeports.models.layers.norm import onnx_form

    gqa = onnx_custom.gqa_attention(module) if attention == "gqa" else contextlib.nullcontext()
    with _quiet(), kernels.use("torch" if lowering == "standard" else "auto"), torch.no_grad(), gqa, onnx_form():
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
        table = {**(onnx_custom.translation_table() if lowering == "custom" else {}),
                 **(onnx_custom.gqa_translation_table() if attention == "gqa" else {})} or None
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=input_names, output_names=output_names,
                                         opset_version=opset_version, custom_translation_table=table,
                                         optimize=False, verbose=False)
    model = onnx_program.model
    _optimize(model)
    if lowering == "custom":
        onnx_custom.pad_inputs(model)
    return model


@contextlib.contextmanager
def _quiet():
    """Mute torch.onnx's per-export chatter (registry warnings about absent torchvision ops, pytree
    deprecations); errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _optimize(model) -> None:
    """onnxscript's optimizer minus its pattern rewrites (slow on big graphs; ORT and TensorRT fuse
    anyway): fold constants (transposed weights included), drop dead nodes, dedupe initializers, CSE."""
    from onnx_ir import passes
    from onnx_ir.passes import common
    from onnxscript.optimizer import _constant_folding

    passes.Sequential(
        common.InlinePass(),
        _constant_folding.FoldConstantsPass(shape_inference=False, input_size_limit=8192, output_size_limit=1 << 18),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedOpsetsPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


def _dim_names(model, axes: dict[str, tuple[int, int]]) -> dict[str, str]:
    """{exporter symbol: readable name}: the prompt length of ids -> "L", the cache length -> "max_len"."""
    def base(dim) -> str | None:
        if isinstance(dim, int):
            return None
        found = re.search(r"[A-Za-z_]\w*", str(dim.value))
        return found.group(0) if found else None

    inputs = {v.name: v for v in model.graph.inputs}
    names = {}
    sym = base(inputs["ids"].shape[1])
    if sym:
        names[sym] = LEN_AXIS
    for slot, (axis, _) in axes.items():
        sym = base(inputs[f"past.{slot}"].shape[axis])
        if sym:
            names[sym] = CACHE_AXIS
            break
    return names


def export(source: ModelSpec | LM, out_dir: str | Path, options: ExportOptions) -> Artifact:
    """Write prefill.onnx (+ prefill_next.onnx) + decode.onnx, weights.bin/.json and the manifest."""
    import onnx
    import onnx_ir as ir

    from edgeports.exporters import onnx_custom, onnx_graph

    ok, reason = available()
    if not ok:
        raise EdgeportsError(f"cannot export to ONNX: {reason}")
    t0 = time.perf_counter()
    spec = resolve_spec(source)
    lowering, opset_version, names = ssm_lowering(options), opset(options), graphs(options)
    cache, attention = cache_mode(options), attention_lowering(options)
    if isinstance(source, LM):
        # trace a CPU copy: an ONNX graph has no device, and the caller keeps its model where it is
        on_cpu = next(source.parameters()).device.type == "cpu"
        lm = (source if on_cpu else copy.deepcopy(source).cpu()).eval()
        options = lm_options(lm, options)
    else:
        lm = build_lm(spec, replace(options, device="cpu"), device="cpu")  # an ONNX graph has no device
    layout = lm.state_layout(options.batch, options.max_len)
    if attention == "gqa":
        attention = _check_gqa(lm, options, names)
    pairs = list(zip(*[n[1:] for n in io_names(layout)], strict=True))
    if lowering == "custom":
        onnx_custom.register_schemas()
    info: dict[str, Any] = {}
    with stage(out_dir) as tmp:
        store = onnx_graph.WeightStore(tmp)
        for graph in names:
            t1 = time.perf_counter()
            model = trace(lm, graph, options.batch, options.max_len, lowering, opset_version, cache=cache,
                          attention=attention)
            onnx_graph.rename_dims(model, _dim_names(model, cache_axes(lm, options.batch, options.max_len)
                                                     if cache == "dynamic" else {}))
            store.externalize(model)
            path = tmp / f"{graph}.onnx"
            ir.save(model, path)
            onnx.checker.check_model(str(path), full_check=True)
            sig = onnx_graph.signature(model)
            gqa_nodes = _count_domain(model, onnx_custom.MS_DOMAIN)
            if gqa_nodes != (kv_layers(lm) if attention == "gqa" else 0):
                raise EdgeportsError(f"onnx_attention=gqa: {graph}.onnx has {gqa_nodes} GroupQueryAttention nodes for "
                                     f"{kv_layers(lm)} KV caches of arch {spec.arch}; export with onnx_attention=standard")
            info[graph] = {"file": path.name, **sig, "dynamic_axes": onnx_graph.dynamic_axes(sig),
                           "nodes": model.graph.num_nodes(), "custom_nodes": _count_domain(model),
                           "attention_nodes": gqa_nodes,
                           "inplace": onnx_graph.inplace_slots(model, pairs), "export_s": time.perf_counter() - t1}
        store.write_index()
        ranges = {"batch": [options.batch, options.batch], "max_len": options.max_len,
                  "prefill_len": [1, options.max_len], "opset": opset_version, "onnx_ssm": lowering,
                  "onnx_attention": attention,
                  "cache_axes": cache_axes(lm, options.batch, options.max_len) if cache == "dynamic" else {},
                  "weights_bytes": store.nbytes, "graphs": info}
        art = write_manifest(tmp, Path(out_dir), backend=NAME, spec=spec, options=options,
                             state_layout=layout_json(layout), shape_ranges=ranges,
                             versions=library_versions("onnx", "onnxscript", "onnx_ir"),
                             export_s=time.perf_counter() - t0)
    return art


def _check_gqa(lm: LM, options: ExportOptions, names: tuple[str, ...]) -> str:
    """The attention lowering to use for onnx_attention=gqa: "gqa", or "standard" for a model without KV
    caches; EdgeportsError where GroupQueryAttention cannot express the model or the graphs."""
    if kv_layers(lm) == 0:
        return "standard"
    if not gqa_applicable(lm):
        raise EdgeportsError(f"onnx_attention=gqa: arch {lm.spec.arch} attends through layers other than "
                             "layers.attention.Attention (e.g. ring-buffer KV caches); use onnx_attention=standard")
    if options.batch > 1 and "prefill_next" in names:
        raise EdgeportsError(f"onnx_attention=gqa with batch {options.batch}: ONNX Runtime's GroupQueryAttention "
                             "continues a prompt (prefill_next.onnx) only at batch 1; add --opt onnx_chunked=false")
    return "gqa"


def _count_domain(model, domain: str = "ai.edgeports") -> int:
    from onnx_ir import traversal

    return sum(1 for n in traversal.RecursiveGraphIterator(model.graph) if n.domain == domain)
