"""TensorRT runner: the prefill, prefill_next and decode engines of a `trt` artifact, state kept on the device.

I/O are torch CUDA tensors bound with `set_tensor_address` (no host copies). The engines' graphs are the
ONNX exporter's: inputs [ids, *state], outputs [logits, *new_state] in the manifest's state-layout order.
Since an engine's output may not alias its input, the state lives in two buffer sets used in turn
(ping-pong), allocated once per runner so that decode can be captured in CUDA graphs (one per set) after
a first plain enqueue, as TensorRT requires; where capture fails, decode stays on plain enqueues and
`info["cuda_graph"]` says why. A full prompt or a first chunk runs prefill.engine, later chunks
prefill_next.engine (as the ONNX Runtime runner picks its graphs); an artifact without prefill_next.engine
(onnx_chunked=false) refuses chunked prefill. Prefill picks the optimisation profile whose length bucket
holds the chunk.
`layer_profile()` runs prefill/decode under an IProfiler and maps layer times onto the op categories.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from edgeports.errors import EdgeportsError
from edgeports.exporters.base import Artifact
from edgeports.models import arch_module, torch_dtype
from edgeports.runners.base import (
    DTYPES,
    Capabilities,
    StepRunner,
    Unsupported,
    capped_max_len,
    check_chunked_prefill,
    prefill_graph,
)

NAME = "trt"
CAPS = Capabilities(devices=("cuda",), dtypes=DTYPES, prefill_modes=("full", "chunk"))
CATEGORIES = ("gemm", "attention", "ssm_scan", "conv", "norm", "elementwise", "memory", "other")
# Layer-name keywords per category, first match wins; TensorRT names layers after the ONNX nodes
# (profiling verbosity DETAILED), and fused regions after the nodes they contain.
_KEYWORDS = (
    ("ssm_scan", ("selectivescan", "ssdchunkscan", "selectivestateupdate", "scan")),
    ("conv", ("causalconv1d", "conv")),
    ("attention", ("attention", "softmax", "sdpa", "mha", "flash")),
    ("gemm", ("matmul", "gemm", "linear", "fullyconnected", "einsum", "lm_head", "proj")),
    ("norm", ("norm", "reducemean", "rsqrt", "layernorm", "rmsnorm")),
    ("memory", ("cast", "reshape", "transpose", "slice", "concat", "gather", "scatter", "shuffle", "copy",
                "expand", "split", "squeeze", "unsqueeze", "pad", "reformat", "identity", "constant")),
    ("elementwise", ("add", "mul", "sub", "div", "pow", "sqrt", "exp", "log", "sigmoid", "silu", "tanh", "relu",
                     "gelu", "softplus", "neg", "elementwise", "pointwise", "activation", "unary", "where", "clip")),
)


def categorize_layer(name: str) -> str:
    """The op category (edgeports' breakdown categories) of a TensorRT layer name: by its op (the last
    path component, e.g. ".../q_proj/MatMul"), else by the whole name (scopes such as ".../attention/...")."""
    if name.lower().startswith(("reformatting", "copynode")):  # layout conversions TensorRT inserts
        return "memory"
    # a fused Myelin region ("{ForeignNode[first...last]}") is matched on its whole name
    for part in ((name,) if name.startswith("{ForeignNode") else (name.rsplit("/", 1)[-1], name)):
        low = part.lower()
        for cat, words in _KEYWORDS:
            if any(w in low for w in words):
                return cat
    return "other"


def available() -> tuple[bool, str]:
    """Same needs as the exporter: TensorRT >= 10 and a CUDA GPU."""
    from edgeports.exporters.trt import available as exporter_available

    return exporter_available()


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
             trt.int32: torch.int32, trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool}
    if dt not in table:
        raise EdgeportsError(f"TensorRT tensor type {dt} has no torch equivalent here")
    return table[dt]


class _Engine:
    """One deserialized engine with its execution context and the names of its I/O tensors."""

    def __init__(self, trt, runtime, path, io: dict):
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EdgeportsError(f"TensorRT could not deserialize {path} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.inputs = [t["name"] for t in io["inputs"]]
        self.outputs = [t["name"] for t in io["outputs"]]
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        missing = set(self.inputs + self.outputs) - names
        if missing:
            raise EdgeportsError(f"{path}: engine lacks the I/O tensors {sorted(missing)} the manifest lists")
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.profile = 0


class TrtRunner(StepRunner):
    """Runs a trt artifact's engines on one CUDA device."""

    backend = NAME
    allocates_with_torch = False  # the engines' activation memory is TensorRT's own

    def __init__(self, artifact: Artifact, device: torch.device | str):
        from edgeports.exporters import plugin_build
        from edgeports.exporters.trt import device_facts, import_tensorrt, load_plugins

        trt = import_tensorrt()
        device = torch.device(device)
        if device.type != "cuda":
            raise Unsupported("the TensorRT runner runs on CUDA devices only")
        super().__init__(device, torch_dtype(artifact.dtype))
        with torch.cuda.device(self.device):
            here = device_facts()
            for key in ("tensorrt", "compute_capability"):
                if artifact.versions.get(key) != here[key]:
                    raise EdgeportsError(f"artifact {artifact.path} was built for {key} {artifact.versions.get(key)}, "
                                         f"this machine has {here[key]}: export it again here")
            if plugin_build.PLUGINS_LIB in artifact.files:
                load_plugins(artifact.file(plugin_build.PLUGINS_LIB))
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            # one engine per graph the exporter built (io has a signature for each); prefill_next is optional
            self._engines = {g: _Engine(trt, self._runtime, artifact.file(f"{g}.engine"), sig)
                             for g, sig in artifact.shape_ranges["io"].items()}
            if not {"prefill", "decode"} <= set(self._engines):
                raise EdgeportsError(f"artifact {artifact.path} lacks a prefill or decode engine: export it again")
            self._dec = self._engines["decode"]
            self._stream = torch.cuda.Stream(self.device)
        self._trt = trt
        # (name, kind, shape, dtype) per state slot, in the graphs' order
        self._layout = [(s["name"], s["kind"], tuple(s["shape"]), getattr(torch, s["dtype"])) for s in artifact.state_layout]
        for eng in self._engines.values():
            if len(eng.inputs) != len(self._layout) + 1 or len(eng.outputs) != len(self._layout) + 1:
                raise EdgeportsError(f"artifact {artifact.path}: engine I/O do not match [ids, *state] -> "
                                     f"[logits, *state] for {len(self._layout)} state slots")
        self._buckets = [tuple(b) for b in artifact.shape_ranges["prefill_profiles"]]
        self._batch, self._art_max_len = artifact.options.batch, artifact.options.max_len
        self._bufs: list[list[torch.Tensor]] | None = None  # two state sets (ping-pong)
        self._cur = 0
        self._logits: dict[tuple[int, int], torch.Tensor] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._graph_ok: bool | None = None
        self._dec_ids = torch.zeros((self._batch, 1), dtype=self._dec.dtypes[self._dec.inputs[0]], device=self.device)
        with torch.device("meta"):
            meta = arch_module(artifact.spec.arch).build(artifact.spec).to(dtype=self.dtype)
        self.weight_bytes = meta.weight_bytes()
        self.info = {"tensorrt": trt.__version__, "trt_ssm": artifact.shape_ranges.get("trt_ssm"),
                     "engines": list(self._engines),
                     "engine_bytes": {k: artifact.file(f"{k}.engine").stat().st_size for k in self._engines},
                     "state_buffers": 2, "cuda_graph": None}

    # ---- state ------------------------------------------------------------------------------------
    def new_state(self, batch: int, max_len: int) -> list[torch.Tensor]:
        if batch != self._batch:
            raise Unsupported(f"engines were built for batch {self._batch}, not {batch}")
        if max_len > self._art_max_len:
            raise Unsupported(f"engines hold {self._art_max_len} tokens; max_len {max_len} needs a new export")
        if self._bufs is None:  # once per runner: the decode graphs capture these addresses
            self._bufs = [[torch.zeros(shape, dtype=dt, device=self.device) for _, _, shape, dt in self._layout]
                          for _ in range(2)]
        for t in self._bufs[0]:
            t.zero_()
        self._cur = 0
        return self._bufs[0]

    def state_nbytes(self, state) -> int:
        # one set is the model's state (the second is the runner's double buffer); pos is bookkeeping
        return sum(t.numel() * t.element_size() for (_, kind, _, _), t in zip(self._layout, state, strict=True) if kind != "pos")

    def _bind(self, eng: _Engine, ids: torch.Tensor) -> torch.Tensor:
        """Bind ids, the current state set as inputs and the other set + logits as outputs."""
        ctx = eng.context
        ctx.set_input_shape(eng.inputs[0], tuple(ids.shape))
        ctx.set_tensor_address(eng.inputs[0], ids.data_ptr())
        src, dst = self._bufs[self._cur], self._bufs[1 - self._cur]
        for name, t in zip(eng.inputs[1:], src, strict=True):
            ctx.set_tensor_address(name, t.data_ptr())
        for name, t in zip(eng.outputs[1:], dst, strict=True):
            ctx.set_tensor_address(name, t.data_ptr())
        shape = tuple(ctx.get_tensor_shape(eng.outputs[0]))
        key = (id(eng), *shape)
        if key not in self._logits:
            self._logits[key] = torch.empty(shape, dtype=eng.dtypes[eng.outputs[0]], device=self.device)
        logits = self._logits[key]
        ctx.set_tensor_address(eng.outputs[0], logits.data_ptr())
        return logits

    def _enqueue(self, eng: _Engine) -> None:
        if not eng.context.execute_async_v3(self._stream.cuda_stream):
            raise EdgeportsError("TensorRT enqueue failed (see the TensorRT log)")

    # ---- steps ------------------------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor, chunk: int | None = None, max_len: int | None = None) -> torch.Tensor:
        """As StepRunner.prefill; the default max_len leaves decode headroom only up to what the engines
        hold, and chunks after the first need prefill_next.engine."""
        length = ids.shape[1]
        check_chunked_prefill(length, chunk, self._engines, "this trt artifact has no prefill_next.engine "
                              "(its ONNX graphs were exported with onnx_chunked=false)")
        return super().prefill(ids, chunk, capped_max_len(length, max_len, self._art_max_len))

    def prefill_step(self, ids: torch.Tensor, state, first: bool):
        length = ids.shape[1]
        profile = next((i for i, (lo, _, hi) in enumerate(self._buckets) if lo <= length <= hi), None)
        if profile is None:
            raise Unsupported(f"prefill chunk of {length} tokens is outside the engine's profiles {self._buckets}")
        return self._run_prefill(self._engines[prefill_graph(first)], profile, ids)

    def _run_prefill(self, eng: _Engine, profile: int, ids: torch.Tensor):
        """One prefill enqueue of `eng` under optimisation profile `profile` -> (logits[B,V] fp32, new state)."""
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            if eng.profile != profile:
                eng.context.set_optimization_profile_async(profile, self._stream.cuda_stream)
                eng.profile = profile
            ids = ids.to(eng.dtypes[eng.inputs[0]]).contiguous()
            logits = self._bind(eng, ids)
            self._enqueue(eng)
            ids.record_stream(self._stream)
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        self._cur = 1 - self._cur
        return logits.float(), self._bufs[self._cur]

    def decode_step(self, ids: torch.Tensor, state):
        eng = self._dec
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            self._dec_ids.copy_(ids)
            logits = self._bind(eng, self._dec_ids)
            graph = self._graphs.get(self._cur)
            if graph is not None:
                graph.replay()
            else:
                self._enqueue(eng)  # TensorRT wants one plain enqueue with these bindings before capture
                if self._graph_ok is not False:
                    self._capture(eng)
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        self._cur = 1 - self._cur
        return logits.float(), self._bufs[self._cur]

    def _capture(self, eng: _Engine) -> None:
        """Capture this parity's decode enqueue into a CUDA graph (replayed from the next step on)."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                self._enqueue(eng)
        except Exception as e:  # e.g. layers TensorRT cannot capture: stay on plain enqueues
            self._graph_ok = False
            self.info["cuda_graph"] = f"off: {type(e).__name__}: {e}"
            return
        self._graphs[self._cur] = graph
        self._graph_ok = True
        self.info["cuda_graph"] = "on"

    # ---- per-layer profile ------------------------------------------------------------------------
    def layer_profile(self, ids: torch.Tensor, chunk: int | None = None, decode_steps: int = 0) -> dict[str, Any]:
        """Prefill ids (and decode `decode_steps` tokens) under TensorRT's IProfiler. Returns
        {"layers": {phase: [(layer, ms), ...]}, "categories": {phase: {category: ms}}}; decode runs
        without CUDA graphs here, since a profiled enqueue cannot be replayed."""
        trt = self._trt

        class _Profiler(trt.IProfiler):
            def __init__(self):
                trt.IProfiler.__init__(self)
                self.rows: list[tuple[str, float]] = []

            def report_layer_time(self, layer_name, ms):
                self.rows.append((layer_name, float(ms)))

        out: dict[str, Any] = {"layers": {}, "categories": {}}
        saved_graphs, saved_ok = self._graphs, self._graph_ok
        self._graphs, self._graph_ok = {}, False
        try:
            prefill_engines = [e for g, e in self._engines.items() if g != "decode"]
            for phase, engines in (("prefill", prefill_engines), ("decode", [self._dec])):
                prof = _Profiler()  # one per phase: prefill_next's layers count as prefill
                for eng in engines:
                    eng.context.profiler = prof
                try:
                    if phase == "prefill":
                        self.prefill(ids, chunk=chunk)
                    elif decode_steps:
                        self.decode(decode_steps)
                    self.sync()
                finally:
                    for eng in engines:
                        eng.context.profiler = None
                cats: dict[str, float] = defaultdict(float)
                for name, ms in prof.rows:
                    cats[categorize_layer(name)] += ms
                out["layers"][phase] = prof.rows
                out["categories"][phase] = {c: cats.get(c, 0.0) for c in CATEGORIES}
        finally:
            self._graphs, self._graph_ok = saved_graphs, saved_ok
        return out

    def close(self) -> None:
        """Drop graphs, buffers, contexts and engines."""
        super().close()
        self._graphs.clear()
        self._logits.clear()
        self._bufs = None
        for eng in self._engines.values():
            eng.context = None
            eng.engine = None


def load(artifact: Artifact, device: str) -> TrtRunner:
    """A TrtRunner for a trt artifact on a CUDA device."""
    if artifact.path is None:
        raise EdgeportsError("the TensorRT runner needs an exported artifact (edgeports export --backend trt)")
    return TrtRunner(artifact, device)
