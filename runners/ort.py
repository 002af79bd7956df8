"""ONNX Runtime runner for `onnx` artifacts (exporters/onnx.py): one InferenceSession per graph.

Provider: the CUDA execution provider for a cuda device (onnxruntime-gpu; Unsupported when this
onnxruntime has none), the CPU provider otherwise; full graph optimisation (ORT_ENABLE_ALL). What ran
is in `info["provider"]`, which every row records (runner_info).

Device-resident I/O: everything goes through IO binding on torch tensors (DLPack, no copies), so the
state never leaves the device. On CUDA, ORT runs on torch's current stream (user_compute_stream) without
a host sync per run; `sync()` waits for the stream. The weights are loaded once from the artifact's
shared weights.bin into torch tensors on the device and handed to all sessions as shared initializers,
so the three graphs hold one copy (ORT's own folded constants, if any, are per session).
Bool tensors bypass DLPack, whose bool (kDLBool) onnxruntime 1.31 rejects ("Unsupported code 6"; 1.32
takes it): bool I/O is bound by pointer (`bind`), and a bool weight is copied into ORT's own memory
(`constant`; KiBs, outside torch's part and the arena of a budget). Exports now keep bool masks inside the
graphs (exporters/onnx_graph.stays_inline); older artifacts have Mamba2's [chunk_size, chunk_size] SSD masks in
weights.bin, which works on the CPU EP, but onnxruntime-gpu 1.31.1's CUDA EP refused such a bool weight as a
shared initializer (INVALID_ARGUMENT, H100): export those again.

State: the artifact's static layout (batch, max_len). A slot whose graph writes `present` only after
every read of `past` (manifest `inplace`) is bound to one buffer as both input and output, so KV caches
are updated in place; the other slots (e.g. `pos` where positions are read after it is
advanced, a ring KV cache read before its write) alternate between two buffers (ping-pong).
Prefill of a full prompt or of a first chunk runs prefill.onnx, later chunks prefill_next.onnx.

Memory budget (`--mem-budget` on CUDA, edgeports.worker.apply_mem_budget -> `limit_memory`): torch holds
the weights and the state (IO binding binds torch tensors), ONNX Runtime's arena the graphs' intermediates.
The split is fixed once, after loading: torch's part = what its allocator reserves with the weights and the
state of the artifact's static max_len allocated (the state does not change size with the prompt), plus the
per-run ids/logits and a rounding margin; the rest of the budget is ONE arena that all the sessions share
(an ORT environment allocator, `session.use_env_allocators`), capped at that size (`max_mem` =
`gpu_mem_limit`) and grown by exactly what is asked (kSameAsRequested: the default next-power-of-two growth
would reserve chunks no tensor uses). The worker caps torch's allocator at its part (per-process fraction).
So a cell that fits both caps fits the budget; one that would fit only by moving bytes between the parts is
reported as not fitting (conservative by at most the margin and the arena's fragmentation). Artifacts with
dynamic KV caches (onnx_cache=dynamic) change the state's size per prompt: no fixed split exists, refused.
Sharing one arena between sessions is safe because they all run on torch's current stream, one after the
other. The environment arena outlives the sessions (one per device per process: a worker's one budget). An
allocation failure inside ONNX Runtime (the arena's limit, cudaMalloc, the CPU allocator under RLIMIT_AS)
is raised as MemoryError, so it is an `oom` row like torch's (`oom_message` reads ORT's error text).

Artifacts with the `gqa` attention lowering (com.microsoft.GroupQueryAttention nodes) run on stock ONNX
Runtime's CPU and CUDA EPs; their KV caches are bound in place, which is the op's shared-buffer mode. On the
CUDA EP it is the fast attention lowering (onnxruntime-gpu 1.31.1, H100: tiny-llama/tiny-qwen2 and
llama-3.2-1b fp16 within parity; it once failed parity there while total_sequence_length was computed from
the device-resident position, which the CUDA EP reads on the host: exporters/onnx_custom.gqa_attend).
Artifacts with the `custom` SSM lowering (ai.edgeports nodes: one node per SSM op) run with edgeports'
custom-op library (exporters/plugins/ort): $EDGEPORTS_ORT_CUSTOM_OPS, else built once and cached by
exporters.plugin_build (the host reference for the CPU EP; on a cuda device the CUDA kernels too, with
nvcc). A library without the CUDA kernels is refused on a cuda device: ORT would move every SSM node's
tensors to the CPU and back. The library and its providers are in info["custom_ops"]. `layer_profile()`
runs ORT's profiler (enable_profiling) and maps node times onto the op categories of edgeports.measure.ops.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeports.errors import EdgeportsError
from edgeports.exporters.base import Artifact
from edgeports.models import torch_dtype
from edgeports.runners.base import (
    DTYPES,
    Capabilities,
    StepRunner,
    Unsupported,
    capped_max_len,
    check_chunked_prefill,
    prefill_graph,
)

NAME = "onnx"
CAPS = Capabilities(devices=("cpu", "cuda"), dtypes=DTYPES, prefill_modes=("full", "chunk"))
_CONTROL_FLOW = ("Scan", "Loop", "If")
ARENA_EXTEND = "kSameAsRequested"  # the arena grows by what is asked, not to the next power of two
TORCH_MARGIN = 32 << 20  # torch's caching allocator rounds blocks up (2 MiB segments): slack for its part
# ORT's wording of an allocation failure: its arena's limit (bfc_arena.cc), a failed device or host allocation
_OOM_TEXT = re.compile(r"Available memory of \d+ is smaller than requested bytes of \d+"
                       r"|Failed to allocate memory for requested buffer of size \d+"
                       r"|CUDA failure 2: out of memory|cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED"
                       r"|CUDNN_STATUS_ALLOC_FAILED|std::bad_alloc|\bout of memory\b", re.IGNORECASE)
_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")
_ENV_ARENAS: dict[str, int] = {}  # "cuda:0" -> max_mem of the environment arena registered in this process
_TORCH_DTYPES = {"float": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "double": torch.float64,
                 "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8,
                 "bool": torch.bool}


def available() -> tuple[bool, str]:
    """onnxruntime importable (the exporter's onnx/onnxscript are checked by the exporter)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime not installed (pip install 'edgeports[onnx]'; onnxruntime-gpu for CUDA)"
    return True, ""


def _ort():
    import onnxruntime

    return onnxruntime


def ortvalue(t: torch.Tensor):
    """An OrtValue viewing a contiguous torch tensor's memory (DLPack: no copy, any device and dtype but
    bool, which `bind` and `constant` handle without DLPack)."""
    if t.dtype == torch.bool:
        raise TypeError("onnxruntime 1.31 cannot import a bool tensor through DLPack (kDLBool): use "
                        "runners.ort.bind or runners.ort.constant")
    ort = _ort()
    try:
        return ort.OrtValue.from_dlpack(t)
    except (TypeError, AttributeError):  # older onnxruntime: the C binding takes a capsule and a bool flag
        from onnxruntime.capi import _pybind_state as C

        return ort.OrtValue(C.OrtValue.from_dlpack(t.__dlpack__(), False))


def bind(binding, name: str, t: torch.Tensor, is_input: bool) -> None:
    """Bind a contiguous torch tensor (any device) to an IO binding's input or output `name`, no copy: an
    OrtValue through DLPack, a bool tensor by its pointer (DLPack's bool, kDLBool, is "Unsupported code 6"
    to onnxruntime 1.31). ORT then reads/writes t's memory; t must outlive the runs that use it."""
    if t.dtype != torch.bool:
        value = ortvalue(t)
        binding.bind_ortvalue_input(name, value) if is_input else binding.bind_ortvalue_output(name, value)
        return
    import numpy as np

    args = (name, t.device.type, _index(t.device), np.bool_, list(t.shape), t.data_ptr())
    binding.bind_input(*args) if is_input else binding.bind_output(*args)


def constant(t: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, Any]:
    """A weight (a CPU tensor) as (tensor, OrtValue) on `device` for a shared initializer: the tensor moved
    to the device and viewed through DLPack; a bool one (no DLPack, see `bind`) copied into ORT's memory
    there (on the CPU the OrtValue views the returned CPU tensor's memory, which must outlive it)."""
    if t.dtype != torch.bool:
        t = t.to(device)
        return t, ortvalue(t)
    return t, _ort().OrtValue.ortvalue_from_numpy(t.numpy(), device.type, _index(device))


def _index(device: torch.device) -> int:
    """The device's ordinal (a bare "cuda" is torch's current device; the CPU is 0)."""
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if device.type == "cuda" else 0


def providers(device: torch.device) -> list:
    """The execution providers for `device` (CUDA EP on torch's current stream, or CPU)."""
    ort = _ort()
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Unsupported(f"this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider (providers: "
                          f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
    index = _index(device)
    stream = torch.cuda.current_stream(torch.device("cuda", index)).cuda_stream
    # HEURISTIC: an exhaustive cuDNN search per new prompt length would land inside timed prefills
    return [("CUDAExecutionProvider", {"device_id": str(index), "user_compute_stream": str(stream),
                                       "cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]


def budget_arena(provider_options: dict[str, str], arena_bytes: int) -> tuple[dict[str, str], dict[str, int]]:
    """The CUDA EP options and the shared arena's OrtArenaCfg for an ORT arena capped at `arena_bytes`:
    both carry the cap (gpu_mem_limit / max_mem) and kSameAsRequested growth (arena_extend_strategy 1)."""
    if arena_bytes <= 0:
        raise ValueError(f"an ONNX Runtime arena needs a positive size, not {arena_bytes}")
    options = {**provider_options, "gpu_mem_limit": str(arena_bytes), "arena_extend_strategy": ARENA_EXTEND}
    return options, {"max_mem": arena_bytes, "arena_extend_strategy": 1}


def oom_message(text: str) -> str | None:
    """One line for an ONNX Runtime error that is an allocation failure (None for any other error):
    'Failed to allocate memory for requested buffer of size 1032192 (Einsum node_einsum_1)'."""
    found = _OOM_TEXT.search(text)
    if found is None:
        return None
    node = _NODE.search(text)
    return found.group(0) + (f" ({node.group(1)} {node.group(2)})" if node else "")


def _oom_or_raise(e: Exception, what: str) -> None:
    """Re-raise an ORT allocation failure as MemoryError (an `oom` row, as torch's OOM); return otherwise."""
    message = oom_message(str(e))
    if message is not None:
        raise MemoryError(f"ONNX Runtime ({what}): {message}") from e


def _register_env_arena(device: torch.device, provider_options: dict[str, str], cfg: dict[str, int]) -> None:
    """Register the environment arena all sessions on `device` share (ORT keeps it for the process)."""
    ort = _ort()
    index = _index(device)
    key = f"{device.type}:{index}"
    if key in _ENV_ARENAS:
        if _ENV_ARENAS[key] != cfg["max_mem"]:
            raise Unsupported(f"ONNX Runtime's shared arena for {key} was registered with max_mem {_ENV_ARENAS[key]} "
                              "in this process and cannot change (one budget per worker process)")
        return
    info = ort.OrtMemoryInfo("Cuda" if device.type == "cuda" else "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR,
                             index, ort.OrtMemType.DEFAULT)
    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    ort.create_and_register_allocator_v2(provider, info, provider_options, ort.OrtArenaCfg(cfg))
    _ENV_ARENAS[key] = cfg["max_mem"]


@dataclass
class _State:
    """The state buffers: `cur` per slot (layout order, pos last) and a second buffer per ping-pong slot."""

    cur: list[torch.Tensor]
    spare: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Graph:
    """One graph's session, its in/out names and which slots it updates in place."""

    session: Any
    binding: Any
    inputs: list[str]
    outputs: list[str]
    inplace: list[bool]
    bound: dict[str, tuple] = field(default_factory=dict)  # name -> (data_ptr, shape, dtype) bound now


class OrtRunner(StepRunner):
    """prefill/decode through ONNX Runtime sessions of an onnx artifact."""

    backend = NAME
    allocates_with_torch = False  # ORT's arena; limit_memory caps it under a budget
    arena_bytes = 0  # the shared arena's cap once limit_memory ran (0: each session's own, unlimited)

    def __init__(self, artifact: Artifact, device: torch.device | str):
        super().__init__(device, torch_dtype(artifact.dtype))
        ort = _ort()
        self.artifact = artifact
        ranges = artifact.shape_ranges
        self.batch, self.max_len = ranges["batch"][0], ranges["max_len"]
        self.layout = artifact.state_layout
        # dynamic caches (onnx_cache=dynamic) are sized per prompt like eager's; static ones hold max_len
        self.cache_axes = {k: tuple(v) for k, v in ranges.get("cache_axes", {}).items()}
        self._providers = providers(self.device)
        self._custom_ops = _custom_ops_library(ranges.get("onnx_ssm", "standard"), self.device)
        self._weights = self._load_weights()
        self.weight_bytes = sum(t.numel() * t.element_size() for t, _ in self._weights.values())
        self._run_options = ort.RunOptions()
        if self.device.type == "cuda":  # ordered on torch's stream; sync() waits (no host sync per run)
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._graphs = {name: self._graph(name) for name in ranges["graphs"]}
        used = self._graphs["prefill"].session.get_providers()
        self.info = {"provider": used[0], "providers": used, "onnxruntime": ort.__version__,
                     "graphs": sorted(self._graphs), "opset": ranges.get("opset"), "onnx_ssm": ranges.get("onnx_ssm"),
                     "onnx_attention": ranges.get("onnx_attention", "standard"),
                     "cache": "dynamic" if self.cache_axes else f"static {self.max_len}", "shared_weights": len(self._weights),
                     "custom_ops": self._custom_ops,
                     "inplace_slots": {g: sum(x.inplace) for g, x in self._graphs.items()}}

    # ---- loading ----------------------------------------------------------------------------------
    def _load_weights(self) -> dict[str, tuple[torch.Tensor, Any]]:
        """weights.bin -> {name: (device tensor, OrtValue)}, one copy shared by every session."""
        import numpy as np

        from edgeports.exporters.onnx_graph import WEIGHTS_FILE, WEIGHTS_INDEX

        index = json.loads(self.artifact.file(WEIGHTS_INDEX).read_text())
        raw = np.memmap(self.artifact.file(WEIGHTS_FILE), dtype=np.uint8, mode="r")
        out = {}
        for name, e in index.items():
            buf = raw[e["offset"]:e["offset"] + e["length"]].copy()  # in memory (as eager weights are), writable
            out[name] = constant(torch.frombuffer(buf, dtype=_TORCH_DTYPES[e["dtype"]]).reshape(e["shape"]),
                                 self.device)
        return out

    def _session(self, name: str, profile_dir: str | None = None):
        ort = _ort()
        import onnx

        path = self.artifact.file(self.artifact.shape_ranges["graphs"][name]["file"])
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if profile_dir is not None:
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(profile_dir) / name)
        if self.arena_bytes:
            so.add_session_config_entry("session.use_env_allocators", "1")  # the one capped arena
        if self._custom_ops:
            so.register_custom_ops_library(self._custom_ops["library"])
        for init in onnx.load(str(path), load_external_data=False).graph.initializer:
            if init.name in self._weights:
                so.add_initializer(init.name, self._weights[init.name][1])
        try:
            return ort.InferenceSession(str(path), so, providers=self._providers)
        except Exception as e:
            _oom_or_raise(e, f"creating the {name} session")
            if type(e).__name__ == "NotImplemented":  # no kernel for an op at this dtype on this provider
                raise Unsupported(f"ONNX Runtime ({self._provider_name()}) cannot run this {self.artifact.dtype} "
                                  f"graph: {str(e).splitlines()[0]}") from None
            raise

    def _graph(self, name: str, profile_dir: str | None = None) -> _Graph:
        sess = self._session(name, profile_dir)
        meta = self.artifact.shape_ranges["graphs"][name]
        inputs, outputs = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
        inplace = [bool(meta["inplace"].get(o)) for o in outputs[1:]]
        return _Graph(sess, sess.io_binding(), inputs, outputs, inplace)

    def limit_memory(self, budget: int) -> int:
        """Split `budget` between torch (weights, state, per-run ids/logits) and one ONNX Runtime arena
        capped at the rest, shared by new sessions (see the module docstring); returns the arena's bytes.
        Used for CUDA budgets; on the CPU it caps the CPU EP's arena the same way (the worker bounds CPU
        budgets with RLIMIT_AS instead, so it only calls this on CUDA)."""
        from edgeports.measure.memory import format_bytes

        if self.cache_axes:
            raise Unsupported("this onnx artifact has dynamic KV caches (onnx_cache=dynamic), whose size changes with "
                              "the prompt: a --mem-budget cannot be split once between torch's state and ONNX Runtime's "
                              "arena; export with static caches")
        torch_part = self._torch_part()
        arena = budget - torch_part
        if arena <= 0:
            raise MemoryError(f"weights + state for max_len {self.max_len} ({format_bytes(torch_part)}) leave nothing of "
                              f"the budget ({format_bytes(budget)}) for ONNX Runtime's arena")
        base = self._providers[0][1] if isinstance(self._providers[0], tuple) else {}
        options, cfg = budget_arena(base, arena)
        self._graphs = {}
        gc.collect()  # the unlimited sessions and their arenas go before the capped arena is made
        allocator_options = {k: v for k, v in options.items() if k in ("device_id", "gpu_mem_limit", "arena_extend_strategy")}
        _register_env_arena(self.device, allocator_options, cfg)
        self.arena_bytes = arena
        if self.device.type == "cuda":
            self._providers = [("CUDAExecutionProvider", options), *self._providers[1:]]
        self._graphs = {name: self._graph(name) for name in self.artifact.shape_ranges["graphs"]}
        self.info["ort_arena"] = {"max_mem": arena, "shared_by": sorted(self._graphs), "extend": ARENA_EXTEND,
                                  "torch_part": torch_part, "torch_margin": TORCH_MARGIN}
        return arena

    def _torch_part(self) -> int:
        """Bytes torch's allocator needs for any cell: weights + the state (allocated here to read the allocator's
        rounding on CUDA) + per-run ids at max_len and logits (with greedy's argmax) + TORCH_MARGIN."""
        with torch.inference_mode():
            state = self.new_state(self.batch, self.max_len)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                held = torch.cuda.memory_reserved(self.device)
            else:
                held = self.weight_bytes + sum(t.numel() * t.element_size() for t in state.cur + list(state.spare.values()))
            del state
        per_run = 2 * self.batch * (self.max_len * 8 + self.artifact.spec.config["vocab_size"] * 4)
        return held + per_run + TORCH_MARGIN

    def _provider_name(self) -> str:
        p = self._providers[0]
        return p[0] if isinstance(p, tuple) else p

    # ---- StepRunner hooks -------------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor, chunk: int | None = None, max_len: int | None = None) -> torch.Tensor:
        """As StepRunner.prefill; the state always has the artifact's static max_len."""
        length = ids.shape[1]
        max_len = capped_max_len(length, max_len, self.max_len)
        if max_len > self.max_len:
            raise EdgeportsError(f"{length} prompt tokens + decode need max_len {max_len}, but the ONNX graphs were "
                                 f"exported for max_len {self.max_len}; export again with a larger --max-len")
        check_chunked_prefill(length, chunk, self._graphs,
                              "this onnx artifact has no prefill_next.onnx (exported with onnx_chunked=false)")
        return super().prefill(ids, chunk, max_len)

    def new_state(self, batch: int, max_len: int) -> _State:
        if batch != self.batch:
            raise EdgeportsError(f"the ONNX graphs were exported for batch {self.batch}, not {batch}")
        cur = [torch.zeros(self._shape(s, max_len), dtype=getattr(torch, s["dtype"]), device=self.device)
               for s in self.layout]
        pingpong = {i for g in self._graphs.values() for i, ok in enumerate(g.inplace) if not ok}
        return _State(cur, {i: torch.empty_like(cur[i]) for i in sorted(pingpong)})

    def _shape(self, slot: dict[str, Any], max_len: int) -> list[int]:
        """A slot's shape for max_len: the exported one, or with its cache axis resized (onnx_cache=dynamic)."""
        shape = list(slot["shape"])
        if slot["name"] in self.cache_axes:
            axis, offset = self.cache_axes[slot["name"]]
            shape[axis] = max_len + offset
        return shape

    def prefill_step(self, ids: torch.Tensor, state: _State, first: bool) -> tuple[torch.Tensor, _State]:
        return self._run(prefill_graph(first), ids, state)

    def decode_step(self, ids: torch.Tensor, state: _State) -> tuple[torch.Tensor, _State]:
        return self._run("decode", ids, state)

    def state_nbytes(self, state: _State) -> int:
        """KV/conv/SSM state buffers, ping-pong spares included (pos is bookkeeping)."""
        tensors = state.cur[:-1] + [t for i, t in state.spare.items() if i < len(state.cur) - 1]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---- one run ----------------------------------------------------------------------------------
    def _run(self, name: str, ids: torch.Tensor, state: _State) -> tuple[torch.Tensor, _State]:
        g = self._graphs[name]
        ids = ids.to(device=self.device, dtype=torch.int64).contiguous()
        logits = torch.empty((ids.shape[0], self.artifact.spec.config["vocab_size"]), dtype=torch.float32,
                             device=self.device)
        self._bind(g, g.inputs[0], ids, True)
        self._bind(g, g.outputs[0], logits, False)
        for i, (src, dst, inplace) in enumerate(zip(g.inputs[1:], g.outputs[1:], g.inplace, strict=True)):
            self._bind(g, src, state.cur[i], True)
            self._bind(g, dst, state.cur[i] if inplace else state.spare[i], False)
        try:
            g.session.run_with_iobinding(g.binding, self._run_options)
        except Exception as e:
            _oom_or_raise(e, name)
            raise
        for i, inplace in enumerate(g.inplace):
            if not inplace:
                state.cur[i], state.spare[i] = state.spare[i], state.cur[i]
        return logits, state

    @staticmethod
    def _bind(g: _Graph, name: str, t: torch.Tensor, is_input: bool) -> None:
        """Bind `t` to `name` unless it is bound already (in-place state keeps its bindings across steps).
        The shape is part of the key: prompt chunks are views sharing one base pointer."""
        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        if g.bound.get(name) == key:
            return
        bind(g.binding, name, t, is_input)
        g.bound[name] = key

    # ---- profiling --------------------------------------------------------------------------------
    def layer_profile(self, ids: torch.Tensor, chunk: int | None = None, decode_steps: int = 0) -> dict[str, Any]:
        """Prefill ids (and decode `decode_steps` tokens) in sessions with ORT's profiler on. Returns
        {"layers": {phase: [(node, op_type, ms), ...]}, "categories": {phase: {category: ms}}}, the
        prefill phase covering prefill and prefill_next."""
        from edgeports.measure.ops import breakdown

        saved = self._graphs
        out: dict[str, Any] = {"layers": {}, "categories": {}}
        with tempfile.TemporaryDirectory(prefix="edgeports-ort-profile-") as tmp:
            self._graphs = {name: self._graph(name, tmp) for name in saved}
            try:
                self.prefill(ids, chunk=chunk)
                if decode_steps:
                    self.decode(decode_steps)
                self.sync()
                rows = {name: _profile_rows(g.session.end_profiling()) for name, g in self._graphs.items()}
            finally:
                self._graphs = saved
                self.reset()
        hints = {}
        for name in rows:
            hints.update(_node_hints(self.artifact.file(self.artifact.shape_ranges["graphs"][name]["file"])))
        phases = {"prefill": rows.get("prefill", []) + rows.get("prefill_next", []), "decode": rows.get("decode", [])}
        for phase, items in phases.items():
            out["layers"][phase] = items
            out["categories"][phase] = breakdown(items, key=lambda node, op: _category(node, op, hints))
        return out

    def close(self) -> None:
        """Drop the state, the sessions and the shared weights."""
        super().close()
        self._graphs = {}
        self._weights = {}


def _profile_rows(path: str) -> list[tuple[str, str, float]]:
    """ORT profile JSON -> [(node, op_type, ms)] of the node kernels run by the main graph. The nodes of a
    Scan/Loop/If body are profiled too, inside their parent's time window: those are left out, since the
    parent's time already holds them."""
    events = json.loads(Path(path).read_text())
    os.unlink(path)
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and "op_name" in e.get("args", {})]
    windows = [(e["ts"], e["ts"] + e.get("dur", 0)) for e in nodes if e["args"]["op_name"] in _CONTROL_FLOW]
    rows = []
    for e in nodes:
        start, end = e["ts"], e["ts"] + e.get("dur", 0)
        if any(lo <= start and end <= hi and (lo, hi) != (start, end) for lo, hi in windows):
            continue
        rows.append((e["name"][: -len("_kernel_time")], e["args"]["op_name"], e.get("dur", 0) / 1e3))
    return rows


def _node_hints(path: Path) -> dict[str, str]:
    """{node name: category} from the model source line each node was traced from (torch.onnx keeps it
    per node): the standard-op SSM lowering's Exp/Mul/CumSum count as ssm_scan, not elementwise."""
    import onnx

    from edgeports.measure.ops import source_category

    out = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        cat = source_category(meta.get("pkg.torch.onnx.stack_trace"))
        if cat:
            out[node.name] = cat
    return out


def _category(node: str, op_type: str, hints: dict[str, str]) -> str:
    """A profiled node's category: GEMMs and the embedding/head by their own, the rest by source hint."""
    from edgeports.measure.ops import categorize

    own = categorize(node, op_type)
    return own if own in ("gemm", "embedding") else hints.get(node, own)


def _custom_ops_library(lowering: str, device: torch.device) -> dict[str, Any] | None:
    """{"library": path, "providers": [...]} of the custom-op library for an artifact with ai.edgeports nodes
    (None for other artifacts): given by $EDGEPORTS_ORT_CUSTOM_OPS or built (cached) for `device`;
    Unsupported when it cannot be had."""
    from edgeports.exporters import plugin_build

    if lowering != "custom":
        return None
    cuda = device.type == "cuda"
    try:
        lib = plugin_build.find_ort_ops(cuda)
        served = plugin_build.ort_ops_providers(lib)
    except EdgeportsError as e:
        raise Unsupported(f"this onnx artifact uses the ai.edgeports SSM nodes (--onnx-ssm custom), which need "
                          f"edgeports' ONNX Runtime custom-op library: {e}") from None
    if cuda and "cuda" not in served:
        raise Unsupported(f"{lib} has the SSM ops for ONNX Runtime's CPU provider only (built without nvcc); on "
                          "cuda every SSM node would run on the CPU: build it with the CUDA kernels "
                          f"(edgeports.exporters.plugin_build.build_ort_ops(cuda=True)) or unset {plugin_build.ENV_ORT_LIB}")
    return {"library": str(lib), "providers": list(served)}


def load(artifact: Artifact, device: str) -> OrtRunner:
    """An OrtRunner for an onnx artifact on `device` (cpu or cuda[:i])."""
    if artifact.path is None:
        raise EdgeportsError("the ONNX Runtime runner needs an exported artifact (edgeports export --backend onnx)")
    return OrtRunner(artifact, device)
