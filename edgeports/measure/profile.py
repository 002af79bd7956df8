"""Operator breakdown of one cell: where one prefill and one decode step spend their time, by category.

Sources (the `source` of every stored row says which one produced it):
    cuda-kernels  torch.profiler (CUPTI) on a GPU: kernel, memcpy and memset time on the device only,
                  never CPU time (the study mixed the two)
    cpu-ops       torch.profiler on the CPU: self CPU time of operators. There is no kernel time on a
                  CPU; python between operators is left out
    ort-nodes     ONNX Runtime's per-node profile (runners/ort.py `layer_profile`)
    trt-layers    TensorRT's per-layer IProfiler times (runners/trt.py `layer_profile`)

Torch profiles are first reduced to flat JSON-able records (`records_from_events`), so a recorded profile
(tests/fixtures/profile/) goes through exactly the code a live one does. A record's category comes from the
outermost enclosing operator or scope whose own category is *decisive* (an `edgeports::` SSM op, linear/mm,
SDPA, an embedding/logits or norm scope), else from its own name: a GEMM inside the SSD op is scan time, an
index kernel under the embedding scope is the embedding, a copy is memory. Scopes come from forward hooks
on the embedding, the logits head and the norm modules of eager/hf runners (compiled programs have no
modules to hook; their kernel names decide).

Stored per cell as `OpRow`s in the `ops` table (keyed by cell_key, phase, category): prefill times are for
one profiled prefill, decode times per decoded token (PROFILE_DECODE_STEPS steps profiled).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from edgeports.measure.ops import CATEGORIES, categorize

OPS_TABLE = "ops"
OPS_KEY = ("cell_key", "phase", "category")
PROFILE_DECODE_STEPS = 4  # decode steps all look alike; more only lengthens the trace
TOP = 3  # longest items kept per category
DECISIVE = ("embedding", "ssm_scan", "conv", "attention", "gemm", "norm")
DEVICE_KINDS = ("kernel", "memcpy", "memset")

# Kernels of edgeports/kernels/triton_*.py by their @triton.jit names (tests check the list is complete).
OUR_KERNELS = {"_selective_scan_fwd": "ssm_scan", "_state_update_fwd": "ssm_scan", "_chunk_state": "ssm_scan",
               "_chunk_cb": "ssm_scan", "_state_pass": "ssm_scan", "_chunk_scan": "ssm_scan",
               "_conv_fwd": "conv", "_conv_update_fwd": "conv"}
# Names the generic keywords of edgeports.measure.ops miss: mamba_ssm's SSD cumsum, cuBLAS GEMV kernels.
_KERNEL_WORDS = (("ssm_scan", ("chunk_cumsum", "selective_scan_update")), ("gemm", ("gemv", "nvjet", "gemmk")))
# ATen operators (CPU profiles, and the operators that launch kernels) by their name after "aten::".
_ATEN = {
    **dict.fromkeys(("mm", "bmm", "addmm", "baddbmm", "addbmm", "matmul", "linear", "addmv", "mv", "dot", "einsum",
                     "_addmm_activation"), "gemm"),
    **dict.fromkeys(("embedding", "embedding_bag"), "embedding"),
    **dict.fromkeys(("softmax", "_softmax", "_safe_softmax"), "attention"),
    **dict.fromkeys(("sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "cumsum", "cumprod", "prod",
                     "logsumexp"), "elementwise"),  # reductions, as the kernel-name keywords count them
    **dict.fromkeys(("conv1d", "convolution", "_convolution", "mkldnn_convolution", "_conv_depthwise2d"), "conv"),
    **dict.fromkeys(("copy_", "to", "_to_copy", "clone", "contiguous", "cat", "stack", "index", "index_select",
                     "index_copy_", "index_put_", "gather", "scatter", "slice", "select", "narrow", "split",
                     "split_with_sizes", "chunk", "view", "reshape", "_reshape_alias", "transpose", "permute", "t",
                     "expand", "unsqueeze", "squeeze", "flatten", "as_strided", "empty", "empty_like", "zeros",
                     "zeros_like", "fill_", "zero_", "new_empty", "new_zeros", "pad", "constant_pad_nd", "unfold",
                     "resolve_conj", "resolve_neg", "detach", "alias", "arange", "tril", "triu"), "memory"),
}
# torch.compile / AOTInductor kernels: triton_<poi|red|per|tem>_fused_<ops>_<n>
_INDUCTOR = re.compile(r"^triton_(poi|red|per|tem)_fused_?(.*?)(_\d+)?$")


def own_category(name: str) -> str:
    """The category a kernel, operator or scope name implies by itself (one of CATEGORIES)."""
    if name in OUR_KERNELS:
        return OUR_KERNELS[name]
    low = name.lower()
    if low.startswith("aten::"):
        op = low[6:].split(".")[0]
        if op in _ATEN:
            return _ATEN[op]
    m = _INDUCTOR.match(low)
    if m:
        kind, fused = m.group(1), m.group(2)
        if kind == "tem" and re.search(r"(^|_)(mm|addmm|bmm|baddbmm)(_|$)", fused):
            return "gemm"
        if "rsqrt" in fused and ("mean" in fused or "pow" in fused):
            return "norm"  # an RMSNorm fusion, whatever else it folded in
        cat = categorize(fused)
        return cat if cat in DECISIVE else "elementwise"  # a fused pointwise / reduction kernel
    for cat, words in _KERNEL_WORDS:
        if any(w in low for w in words):
            return cat
    return categorize(name)


# ---------------------------------------------------------------------------------------------- records

def records_from_events(events, cuda: bool) -> list[dict[str, Any]]:
    """torch.profiler FunctionEvents -> flat records, the form recorded fixtures use:

        {"name", "kind": "op"|"scope"|"kernel"|"memcpy"|"memset", "us", "parent": index|None,
         "launch": index|None}

    `us` is self CPU time for ops and scopes, device time for device items; `parent` is the enclosing op or
    scope (ops/scopes), `launch` the op or scope that launched a device item (via the CUPTI correlation id)."""
    from torch.autograd import DeviceType

    cpu = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    index = {id(e): i for i, e in enumerate(cpu)}
    # operators carry the correlation id their kernels link to; CUDA runtime calls (linked themselves) do not
    by_corr = {e.id: i for i, e in enumerate(cpu) if not getattr(e, "linked_correlation_id", 0)}
    out = []
    for e in cpu:
        parent = e.cpu_parent
        out.append({"name": e.name, "kind": "scope" if getattr(e, "is_user_annotation", False) else "op",
                    "us": float(e.self_cpu_time_total), "parent": index.get(id(parent)) if parent is not None else None,
                    "launch": None})
    if not cuda:
        return out
    for e in events:
        if e.device_type != DeviceType.CUDA or getattr(e, "is_user_annotation", False):
            continue
        kind = _device_kind(e)
        if kind is None:
            continue
        out.append({"name": e.name, "kind": kind, "us": float(e.time_range.elapsed_us()), "parent": None,
                    "launch": by_corr.get(getattr(e, "linked_correlation_id", 0) or -1)})
    return out


def _device_kind(e) -> str | None:
    """kernel / memcpy / memset for device work; None for GPU-side annotations of record_function ranges."""
    activity = (getattr(e, "activity_type", None) or "").lower()
    if activity:
        return {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}.get(activity)
    low = e.name.lower()
    return "memcpy" if low.startswith("memcpy") else "memset" if low.startswith("memset") else "kernel"


def categorize_records(records: list[dict[str, Any]]) -> list[str]:
    """The category of every record (see the module docstring for the rule)."""
    own = [own_category(r["name"]) for r in records]

    def outermost(i: int | None) -> str | None:
        found = None
        seen = 0
        while i is not None and seen < 1000:  # a malformed fixture must not loop forever
            if own[i] in DECISIVE:
                found = own[i]
            i, seen = records[i]["parent"], seen + 1
        return found

    out = []
    for i, r in enumerate(records):
        start = r["launch"] if r["kind"] in DEVICE_KINDS else i
        out.append(outermost(start) or own[i])
    return out


def breakdown(records: list[dict[str, Any]], device: bool) -> dict[str, dict[str, Any]]:
    """{category: {"ms", "calls", "top": [[name, ms], ...]}} over device items (device=True) or over
    operators' self CPU time (scopes excluded: that is python, not operator time)."""
    cats = categorize_records(records)
    kinds = DEVICE_KINDS if device else ("op",)
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    calls: dict[str, int] = defaultdict(int)
    for r, cat in zip(records, cats, strict=True):
        if r["kind"] in kinds and r["us"] > 0:
            acc[cat][r["name"]] += r["us"] / 1e3
            calls[cat] += 1
    out = {}
    for cat in CATEGORIES:
        names = acc.get(cat, {})
        top = sorted(names.items(), key=lambda kv: -kv[1])[:TOP]
        out[cat] = {"ms": sum(names.values()), "calls": calls.get(cat, 0),
                    "top": [[_short(n), round(ms, 4)] for n, ms in top]}
    return out


def _short(name: str, n: int = 120) -> str:
    return name if len(name) <= n else name[: n - 3] + "..."


# ---------------------------------------------------------------------------------------------- scopes

_SCOPES = {"embedding": "edgeports.embedding", "logits": "edgeports.logits", "norm": "edgeports.norm"}


def _scope_of(name: str, module: torch.nn.Module, head: torch.nn.Module | None) -> str | None:
    if module is head or name.split(".")[-1] in ("lm_head",):
        return _SCOPES["logits"]
    if isinstance(module, torch.nn.Embedding):
        return _SCOPES["embedding"]
    if type(module).__name__.endswith(("Norm", "RMSNorm", "LayerNorm", "NormGated")):
        return _SCOPES["norm"]
    return None


@contextlib.contextmanager
def module_scopes(runner) -> Iterator[int]:
    """record_function ranges around the embedding, logits head and norm modules of an eager or hf runner
    (yields how many modules were hooked). Compiled runners are left alone: hooks would make dynamo retrace."""
    handles = []
    if getattr(runner, "backend", "") in ("eager", "hf"):
        for root in {id(v): v for v in vars(runner).values() if isinstance(v, torch.nn.Module)}.values():
            head = getattr(root, "head", None)
            for name, module in root.named_modules():
                scope = _scope_of(name, module, head)
                if scope is None:
                    continue
                stack: list = []

                def pre(_m, _a, scope=scope, stack=stack):
                    rf = torch.profiler.record_function(scope)
                    rf.__enter__()
                    stack.append(rf)

                def post(_m, _a, _o, stack=stack):
                    if stack:
                        stack.pop().__exit__(None, None, None)

                handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield len(handles) // 2
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------- one cell

def _torch_phase(run, cuda: bool) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run()
    return records_from_events(prof.events(), cuda)


def profile_cell(runner, ids: torch.Tensor, chunk: int | None, max_len: int, decode_len: int) -> dict[str, Any]:
    """Profile one prefill of `ids` and min(decode_len, PROFILE_DECODE_STEPS) decode steps after it on a
    warmed-up runner. Returns {"source", "note", "phases": {phase: {"total_ms", "categories": {...}}}}
    with decode times per token. The runner is reset afterwards."""
    steps = min(decode_len, PROFILE_DECODE_STEPS)
    try:
        if hasattr(runner, "layer_profile"):
            result = _layer_profile(runner, ids, chunk, steps)
        else:
            result = _torch_profile(runner, ids, chunk, max_len, steps)
    finally:
        runner.reset()
    return result


def record_phases(runner, ids: torch.Tensor, chunk: int | None, max_len: int, steps: int
                  ) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """The flat records of one profiled prefill and of `steps` decode steps after it (module scopes on), and
    how many modules were hooked. What profile_cell breaks down; also how fixtures are recorded."""
    cuda = runner.device.type == "cuda"
    phases = {}
    with module_scopes(runner) as hooked:
        phases["prefill"] = _torch_phase(lambda: (runner.prefill(ids, chunk, max_len=max_len), runner.sync()), cuda)
        if steps:
            phases["decode"] = _torch_phase(lambda: (runner.decode(steps), runner.sync()), cuda)
    return phases, hooked


def _torch_profile(runner, ids, chunk, max_len, steps) -> dict[str, Any]:
    cuda = runner.device.type == "cuda"
    records, hooked = record_phases(runner, ids, chunk, max_len, steps)
    phases = {phase: _phase(breakdown(recs, cuda), steps if phase == "decode" else 1) for phase, recs in records.items()}
    if cuda:
        note = "GPU kernel, memcpy and memset time only (torch.profiler / CUPTI)"
    else:
        note = "CPU: self CPU time of operators (no kernel time on a CPU; python between operators excluded)"
    if not hooked:
        note += "; no module scopes (kernel names decide)"
    return {"source": "cuda-kernels" if cuda else "cpu-ops", "note": note, "phases": phases}


def _layer_profile(runner, ids, chunk, steps) -> dict[str, Any]:
    prof = runner.layer_profile(ids, chunk=chunk, decode_steps=steps)
    source = "trt-layers" if getattr(runner, "backend", "") == "trt" else "ort-nodes"
    phases = {}
    for phase, cats in prof["categories"].items():
        if phase == "decode" and not steps:
            continue
        items = prof["layers"].get(phase, [])
        top = sorted(((str(it[0]), float(it[-1])) for it in items), key=lambda kv: -kv[1])
        table = {c: {"ms": float(cats.get(c, 0.0)), "calls": None, "top": []} for c in CATEGORIES}
        table["other"]["ms"] += sum(float(v) for c, v in cats.items() if c not in CATEGORIES)
        phases[phase] = _phase(table, steps if phase == "decode" else 1)
        phases[phase]["top_items"] = [[_short(n), round(ms, 4)] for n, ms in top[:TOP]]
    note = ("TensorRT IProfiler per-layer GPU times" if source == "trt-layers" else
            "ONNX Runtime per-node times (on CUDA these are host-side node times unless ORT was built with "
            "CUDA profiling)")
    return {"source": source, "note": note, "phases": phases}


def _phase(table: dict[str, dict[str, Any]], per: int) -> dict[str, Any]:
    """Divide a phase's table by `per` (decode steps) and add its total."""
    for v in table.values():
        v["ms"] /= per
    return {"total_ms": sum(v["ms"] for v in table.values()), "categories": table}


# ---------------------------------------------------------------------------------------------- stored rows

@dataclass(frozen=True)
class OpRow:
    """Time of one category in one phase of one profiled cell (rows table: same cell_key)."""

    cell_key: str
    phase: str  # prefill | decode
    category: str  # one of edgeports.measure.ops.CATEGORIES
    time_ms: float  # prefill: of one prefill; decode: per decoded token
    share: float  # of the phase's profiled total (0 when the total is 0)
    calls: int | None  # profiled items in the category (None: the backend's profile does not say)
    source: str  # cuda-kernels | cpu-ops | ort-nodes | trt-layers
    top: str | None  # JSON [[name, ms], ...]: the longest items of the category
    note: str | None = None
    timestamp: str = ""


def op_rows(cell_key: str, result: dict[str, Any], timestamp: str = "") -> list[OpRow]:
    """The OpRows of a profile_cell() result."""
    rows = []
    for phase, data in result["phases"].items():
        total = data["total_ms"]
        for cat, v in data["categories"].items():
            rows.append(OpRow(cell_key=cell_key, phase=phase, category=cat, time_ms=v["ms"],
                              share=v["ms"] / total if total > 0 else 0.0, calls=v["calls"], source=result["source"],
                              top=json.dumps(v["top"]) if v["top"] else None, note=result.get("note"),
                              timestamp=timestamp))
    return rows


def store_ops(store, cell_key: str, result: dict[str, Any] | None, timestamp: str = "") -> None:
    """Write a profile_cell() result into the store's ops table (nothing for None or a failed profile)."""
    if result and "phases" in result:
        store.add_records(OPS_TABLE, op_rows(cell_key, result, timestamp), OPS_KEY)


def profiled_keys(store) -> set[str]:
    """cell_keys that need no profiled pass: those with ops rows, and those that did not run (not ok)."""
    from edgeports.results import TABLE

    have = {r.cell_key for r in store.records(OPS_TABLE, _Key)}
    failed = {k for (k,) in store.conn.execute(f"SELECT cell_key FROM {TABLE} WHERE status != 'ok'")}
    return have | failed


@dataclass(frozen=True)
class _Key:
    cell_key: str


def profile_or_error(runner, ids: torch.Tensor, chunk: int | None, max_len: int, decode_len: int) -> dict[str, Any]:
    """profile_cell(), or {"error": one line} when profiling fails (the cell's measurements stand)."""
    try:
        return profile_cell(runner, ids, chunk, max_len, decode_len)
    except Exception as e:  # a profiler failure must not cost the cell its latency and memory row
        text = str(e).strip().splitlines()
        return {"error": f"{type(e).__name__}: {text[0] if text else ''}"[:300]}
