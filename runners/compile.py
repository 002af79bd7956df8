"""torch.compile runner: JIT (our LM compiled in process) or AOT (AOTInductor packages, no model code).

Both run the programs of edgeports.exporters.compile (`InPlaceStep`: `(ids, *state) -> logits`, the State
updated in place), so they share everything here:
- The State lives in buffers kept per (batch, max_len) and zeroed by each prefill (eager allocates zeros
  there; same cost), so that a decode step always sees the same addresses: on CUDA, after one plain call
  (lazy initialisation, Triton autotuning), the decode step is captured in a CUDA graph and replayed
  from then on. Where capture fails, decode stays on plain calls and `info["cuda_graph"]` says why.
  A new (batch, max_len) drops the previous buffers and graph first, so only one set is ever held;
  `close()` drops them too (`reset()` only forgets the position, as the measurement loop resets
  between timed repeats and a new capture must not land inside one).
- A 1-token prefill (a prompt or final chunk of one token) runs the decode program.

JIT compiles at load (`info["compile_s"]`, part of the load time, never of a timed region): after one
eager call (lazily set module attributes would otherwise become guards that fail later), the prefill,
continuing-prefill and decode programs are compiled with `fullgraph=True` and L and the state-length
dims marked dynamic, then warmed on a small state. Later calls run under the `fail_on_recompile`
stance, so a call outside the compiled shapes is an error, not a silent compile inside a timed region.
AOT loads the packages and, on the CPU, binds one copy of `weights.safetensors` to all of them
(`load_constants(user_managed=True)`; CUDA packages embed their weights, see exporters/compile.py); it
imports edgeports.kernels (the `edgeports::` ops the packages call) but no model code.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import os
import time
import types
from collections.abc import Callable
from typing import Any

import torch

from edgeports.errors import EdgeportsError
from edgeports.exporters.base import Artifact
from edgeports.exporters.compile import (
    PROGRAMS_FILE,
    WEIGHTS_FILE,
    InPlaceStep,
    decode_kernels_of,
    failure,
    freezes,
    fuses,
    gemv_of,
    kinds_of,
    mode_of,
    row_gemvs,
    state_len_dims,
    tuning_of,
)
from edgeports.exporters.compile import available as exporter_available
from edgeports.models import torch_dtype
from edgeports.models.lm import is_folded
from edgeports.runners.base import DEFAULT_HEADROOM, Capabilities, StepRunner, Unsupported

NAME = "compile"
CAPS = Capabilities()
WARM_LEN, WARM_CHUNK, WARM_STATE_LEN = 7, 4, 23  # JIT warm-up shapes: chunks of 4 and 3 tokens, S = 23

Program = Callable[..., torch.Tensor]


def available() -> tuple[bool, str]:
    """Same needs as the exporter (torch >= 2.6 with AOTInductor, a C++ compiler)."""
    return exporter_available()


class CompiledRunner(StepRunner):
    """State buffers kept per (batch, max_len), CUDA-graphed decode; subclasses supply the programs."""

    backend = NAME

    def __init__(self, device: torch.device | str, dtype: torch.dtype, programs: dict[str, Program]):
        super().__init__(device, dtype)
        self.programs = programs
        self._key: tuple[int, int] | None = None
        self._bufs: tuple[torch.Tensor, ...] | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_io: tuple[torch.Tensor, torch.Tensor] | None = None  # (ids, logits) the graph reads/writes
        self.graphs = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self.graphs else None
        self.info = {"cuda_graph": "pending (captured after the first decode step)" if self.graphs else None}

    # ---- hooks for subclasses ---------------------------------------------------------------------
    def alloc_state(self, batch: int, max_len: int) -> tuple[torch.Tensor, ...]:
        """Zero state tensors for (batch, max_len), in the programs' slot order (pos last)."""
        raise NotImplementedError

    def call(self, kind: str, ids: torch.Tensor, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Run one program (state updated in place); returns logits[B,V]."""
        return self.programs[kind](ids, *state)

    # ---- StepRunner hooks -------------------------------------------------------------------------
    def new_state(self, batch: int, max_len: int) -> tuple[torch.Tensor, ...]:
        if self._key != (batch, max_len):
            self.drop_buffers()  # free the old set (and its graph) before allocating the new one
            self._bufs = self.alloc_state(batch, max_len)
            self._key = (batch, max_len)
        else:
            for t in self._bufs:
                t.zero_()
        return self._bufs

    def prefill_step(self, ids: torch.Tensor, state, first: bool):
        # a chunk is a slice of the prompt: give the programs a fresh, standard-strided inference tensor, as
        # decode's ids are (compiled code guards on strides and inference-ness; packages assume dense input)
        ids = ids.clone(memory_format=torch.contiguous_format)
        if ids.shape[1] == 1:
            kind = "decode"
        elif first:
            kind = "prefill"
        elif "prefill_cont" in self.programs:
            kind = "prefill_cont"
        else:
            raise Unsupported("this compile artifact has no continuing-prefill program (exported with chunked=False)")
        return self.call(kind, ids, state).float(), state

    def decode_step(self, ids: torch.Tensor, state):
        if self._graph is not None:
            graph_ids, logits = self._graph_io
            graph_ids.copy_(ids)
            self._graph.replay()
            return logits, state
        if not self.graphs:
            return self.call("decode", ids, state).float(), state
        # the first step on these buffers runs plainly on the capture stream (lazy per-stream initialisation,
        # Triton autotuning happen here, not in the capture), then the step is recorded there
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            logits = self.call("decode", ids, state).float()
        current.wait_stream(self._stream)
        self._capture(ids, state)
        return logits, state

    def decode(self, n: int) -> torch.Tensor:
        # the graph's logits buffer is overwritten by the next replay: hand the caller its own copy
        return super().decode(n).clone()

    def state_nbytes(self, state) -> int:
        return sum(t.numel() * t.element_size() for t in state[:-1])  # pos is bookkeeping

    # ---- CUDA graph ---------------------------------------------------------------------------------
    def _capture(self, ids: torch.Tensor, state) -> None:
        """Record the decode step on these state buffers; the next steps replay it."""
        graph_ids = ids.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            # a recompile inside a capture would do host-device copies there and fail it half-way, which leaves
            # torch's CUDA RNG marked as capturing (every later random op on the device raises): refuse it first
            with torch.compiler.set_stance("fail_on_recompile"), \
                    torch.cuda.graph(graph, stream=self._stream):  # records only: the state does not advance
                logits = self.call("decode", graph_ids, state).float()
        except Exception as e:  # noqa: BLE001 - stay on plain calls and say why
            self.graphs = False
            self.info["cuda_graph"] = f"off: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            return
        self._graph, self._graph_io = graph, (graph_ids, logits)
        self.info["cuda_graph"] = "on"

    def drop_buffers(self) -> None:
        """Forget the state buffers and the decode graph recorded on them."""
        self._graph = self._graph_io = self._bufs = self._key = None
        self._state = None

    def close(self) -> None:
        self.reset()
        self.drop_buffers()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# ---- JIT -------------------------------------------------------------------------------------------
class JitRunner(CompiledRunner):
    """Our LM compiled with torch.compile in this process (see the module docstring)."""

    def __init__(self, lm, device: torch.device | str, batch: int, chunked: bool = True, fuse: bool = True,
                 freeze: bool = False, decode_kernels: str = "custom", gemv: str = "auto"):
        """Compiles `lm` (its q/k/v and gate/up projections fused and its SSM constants folded in place when
        `fuse`, see edgeports.models.fuse: pass a copy to keep the original; on CUDA its decode step with the weights
        frozen into it when `freeze`, see exporters/compile.freezes; decode's SSM step ops as the option
        `decode_kernels` says, see exporters/compile.decode_kernels_of; its projections as `gemv` says, see
        exporters/compile.gemv_of)."""
        from edgeports.models.fuse import fold_constants, fuse_projections

        lm.requires_grad_(False).eval()
        fused = fuse_projections(lm) if fuse else 0
        folded = fold_constants(lm) if fuse else 0
        kinds = ("prefill", "prefill_cont", "decode") if chunked else ("prefill", "decode")
        gemvs = row_gemvs(gemv, torch.device(device))
        programs = {k: _compiled(InPlaceStep(lm, k, decode_kernels, gemvs and k == "decode"),
                                 tuning_of(k, torch.device(device))) for k in kinds}
        super().__init__(device, next(lm.parameters()).dtype, programs)
        self.lm = lm
        self.weight_bytes = lm.weight_bytes()
        self._dims = state_len_dims(lm, batch, WARM_STATE_LEN)
        self._compiled: set[str] = set()
        self._freeze = freeze and self.device.type == "cuda"
        self.info.update(mode="jit", params=lm.num_params(), fused_modules=fused, folded_ssm_mixers=folded,
                         frozen_decode=self._freeze, decode_kernels=decode_kernels,
                         gemv="triton" if gemvs else "inductor")
        t0 = time.perf_counter()
        ids = torch.randint(0, lm.spec.config["vocab_size"], (batch, WARM_LEN), device=self.device)
        with torch.inference_mode():  # settle lazy module attributes before dynamo guards on them
            lm.prefill(ids, lm.new_state(batch, WARM_STATE_LEN, self.device), first=True)
        self.prefill(ids, chunk=WARM_CHUNK if chunked else None, max_len=WARM_STATE_LEN)
        self.decode(3)  # compiles decode; on CUDA also the plain call + capture path
        self.sync()
        self.info["compile_s"] = round(time.perf_counter() - t0, 3)
        self.close()
        if self.graphs:  # the warm-up's graph went with its buffers; a failed capture keeps its reason
            self.info["cuda_graph"] = "pending (captured after the first decode step)"

    def alloc_state(self, batch: int, max_len: int) -> tuple[torch.Tensor, ...]:
        return self.lm.new_state(batch, max_len, self.device)

    def call(self, kind: str, ids: torch.Tensor, state) -> torch.Tensor:
        if kind not in self._compiled:  # first call compiles: L and S are dynamic, everything else static
            if kind != "decode":
                torch._dynamo.mark_dynamic(ids, 1)
            for t, dims in zip(state, self._dims, strict=True):
                for d in dims:  # dict {dim: offset}
                    torch._dynamo.mark_dynamic(t, d)
            try:  # freezing is read when Inductor compiles, which is now (torch.compile's options miss it)
                with torch._inductor.config.patch(freezing=self._freeze and kind == "decode"):
                    out = super().call(kind, ids, state)
            except Exception as e:
                raise failure(self.lm.spec, f"torch.compile of the {kind} program", e) from e
            self._compiled.add(kind)
            return out
        try:  # each program compiles once, at its first call (a guard that fails later is a bug or a misuse)
            with torch.compiler.set_stance("fail_on_recompile"):
                return super().call(kind, ids, state)
        except RuntimeError as e:
            if "fail_on_recompile" not in str(e):
                raise
            raise EdgeportsError(f"compile (jit): the {kind} call would recompile (ids {tuple(ids.shape)}, batch or "
                                 f"dtype outside what was compiled at load)") from None


def _compiled(step: InPlaceStep, options: dict[str, Any]) -> Program:
    """torch.compile of step.forward through a code object of its own: dynamo keeps its cache and recompile
    limit per code object, which every program of every model in the process would otherwise share."""
    fwd = InPlaceStep.forward
    code = fwd.__code__.replace(co_name=f"forward_{step.kind}_{next(_program_ids)}")
    fn = types.FunctionType(code, fwd.__globals__, code.co_name, fwd.__defaults__, fwd.__closure__)
    return torch.compile(types.MethodType(fn, step), fullgraph=True, options=options or None)


_program_ids = itertools.count()


# ---- AOT -------------------------------------------------------------------------------------------
class AotRunner(CompiledRunner):
    """The AOTInductor packages of an artifact (see the module docstring)."""

    def __init__(self, artifact: Artifact, device: torch.device | str):
        from safetensors.torch import load_file

        import edgeports.kernels  # noqa: F401 - registers the edgeports:: ops the packages call

        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        _check_compatible(artifact, device)
        meta = json.loads(artifact.file(PROGRAMS_FILE).read_text())
        shared = meta["weights"] == "shared"
        # shared: the packages point into these tensors (user-managed constants); embedded: each package holds
        # its own copy, and the file is read only for a parity reference
        weights = load_file(str(artifact.file(WEIGHTS_FILE)), device=str(device)) if shared else None
        programs, copies = {}, 0
        for kind in meta["programs"]:
            model = _load_package(artifact.file(meta["programs"][kind]["file"]), device)
            if shared:
                names = meta["constants"]
                missing = [n for n in model.get_constant_fqns() if n not in names]
                if missing:
                    raise EdgeportsError(f"artifact {artifact.path}: {kind} package needs constants not in "
                                         f"{WEIGHTS_FILE}: {missing[:3]}")
                constants = {n: weights[names[n]] for n in model.get_constant_fqns()}
                if "user_managed" in inspect.signature(model.load_constants).parameters:
                    model.load_constants(constants, check_full_update=True, user_managed=True)
                else:  # older torch copies them: one weight copy per package
                    model.load_constants(constants, check_full_update=True)
                    copies += 1
            else:  # compiled into the package (CUDA; a torch without package_constants_in_so)
                copies += 1
            programs[kind] = model
        super().__init__(device, torch_dtype(artifact.dtype), programs)
        self.artifact = artifact
        self._weights = weights
        self._layout = [(tuple(s["shape"]), getattr(torch, s["dtype"])) for s in artifact.state_layout]
        dims = artifact.shape_ranges.get("state_len_dims", {})
        self._dims = [dict(dims.get(s["name"], [])) for s in artifact.state_layout]  # {dim: offset over max_len}
        self._batch, self._art_max_len = artifact.options.batch, artifact.options.max_len
        self.weight_bytes = _tensor_bytes(artifact.file(WEIGHTS_FILE)) * (copies + (1 if shared else 0))
        self.info.update(mode="aot", weights=f"one copy in each of {copies} packages" if copies else meta["weights"],
                         decode_kernels=decode_kernels_of(artifact.options),
                         gemv="triton" if meta["programs"].get("decode", {}).get("ops", {}).get("edgeports::gemv") else "inductor",
                         programs={k: v["ops"] for k, v in meta["programs"].items()})

    def weights(self) -> dict[str, torch.Tensor]:
        """The artifact's weights file: the tensors the packages share, or (embedded weights) read now, on the
        CPU, for a parity reference."""
        if self._weights is not None:
            return self._weights
        from safetensors.torch import load_file

        return load_file(str(self.artifact.file(WEIGHTS_FILE)), device="cpu")

    def prefill(self, ids: torch.Tensor, chunk: int | None = None, max_len: int | None = None) -> torch.Tensor:
        if max_len is None and ids.shape[1] <= self._art_max_len:  # the default headroom, within the packages
            max_len = min(ids.shape[1] + DEFAULT_HEADROOM, self._art_max_len)
        return super().prefill(ids, chunk, max_len)

    def alloc_state(self, batch: int, max_len: int) -> tuple[torch.Tensor, ...]:
        if batch != self._batch:
            raise Unsupported(f"the packages were compiled for batch {self._batch}, not {batch}")
        if max_len > self._art_max_len:
            raise EdgeportsError(f"the packages hold up to {self._art_max_len} tokens; max_len {max_len} needs "
                                 f"an export with --max-len {max_len} or more")
        out = []
        for (shape, dtype), dims in zip(self._layout, self._dims, strict=True):
            shape = tuple(max_len + dims[i] if i in dims else n for i, n in enumerate(shape))
            out.append(torch.zeros(shape, dtype=dtype, device=self.device))
        return tuple(out)


def _tensor_bytes(path) -> int:
    """The weight bytes of a safetensors file, from its header alone (u64 length, then JSON): every tensor but
    the folded copies of parameters (edgeports.models.lm.is_folded), as LM.weight_bytes counts."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
               if k != "__metadata__" and not is_folded(k))


def _check_compatible(artifact: Artifact, device: torch.device) -> None:
    """AOTInductor packages are machine code for one device kind, GPU arch and torch release."""
    built = artifact.versions.get("device") or artifact.options.device.split(":")[0]
    if built != device.type:
        raise Unsupported(f"the packages were compiled for {built}; export again with --device {device.type}")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if artifact.versions.get("compute_capability") not in (None, f"{major}.{minor}"):
            raise EdgeportsError(f"artifact {artifact.path} was compiled for compute capability "
                                 f"{artifact.versions['compute_capability']}, this GPU is {major}.{minor}: "
                                 "export again here")
    have, built_torch = torch.__version__.split("+")[0], str(artifact.versions.get("torch", "")).split("+")[0]
    if have.split(".")[:2] != built_torch.split(".")[:2]:
        raise EdgeportsError(f"artifact {artifact.path} was compiled with torch {built_torch}, this is torch {have}: "
                             f"export again here")


def _make_libstdcxx_global() -> str | None:
    """Put the process's libstdc++ into the global symbol scope (dlopen RTLD_NOLOAD|RTLD_GLOBAL: the loaded
    library is promoted, not loaded again); returns its path, or None where there is none to promote.

    Why: a CUDA package built by torch 2.11 (H100 machine, g++ 13) carries its own copy of libstdc++ in its
    wrapper.so (thousands of std:: definitions, no libstdc++ among its NEEDED libraries), and the copy's
    locale machinery is never initialised. Loaded into a process where libstdc++ came in through torch with
    RTLD_LOCAL, the package binds to that copy, and the `std::regex` of AOTInductor's `parse_device_str`
    segfaults in the model's constructor: every CUDA package died at load, a toy fp32 one included. With
    the process's libstdc++ global, the package's std:: references bind to it (as under LD_PRELOAD, which
    made the same package load and run)."""
    if os.name != "posix":
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    except OSError:
        return None
    import ctypes

    for path in sorted(paths):
        try:
            ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
            return path
        except OSError:
            continue
    return None


def _load_package(path, device: torch.device):
    """Load one package with the options this torch has (single-threaded runs suit CUDA graphs).

    Through `load_pt2`, not `aoti_load_package`: the latter takes any RuntimeError of the loader for an
    outdated package and retries with the legacy loader, which on CUDA (torch 2.11, H100) then killed the
    process with a segfault, hiding the first error. Here that error is the message."""
    try:
        from torch.export.pt2_archive._package import load_pt2
    except ImportError:  # an older torch: the public wrapper
        load_pt2 = None
    params = inspect.signature(load_pt2 or torch._inductor.aoti_load_package).parameters
    kwargs: dict[str, Any] = {}
    if "run_single_threaded" in params and device.type == "cuda":
        kwargs["run_single_threaded"] = True
    if "device_index" in params and device.type == "cuda":
        kwargs["device_index"] = device.index
    if device.type == "cuda":
        _make_libstdcxx_global()
    if load_pt2 is None:
        return torch._inductor.aoti_load_package(str(path), **kwargs)
    try:
        runners = load_pt2(str(path), **kwargs).aoti_runners
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeportsError(f"AOTInductor could not load {path}: {first[:300]}") from e
    if "model" not in runners:
        raise EdgeportsError(f"{path} holds no AOTInductor model (found {sorted(runners)})")
    return runners["model"]


# ---- module protocol -------------------------------------------------------------------------------
def load(artifact: Artifact, device: str) -> CompiledRunner:
    """A JIT or AOT runner, as the artifact's mode says."""
    if torch.device(device).type == "cpu":
        # Inductor's C++ kernels run on the system libgomp, torch's own ops on the libgomp bundled with torch:
        # two OpenMP pools whose idle threads spin by default and starve each other (calls 100x slower on a
        # busy 2-core box). libgomp reads this when the first compiled kernel library loads, i.e. later.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if mode_of(artifact.options) == "jit":
        from edgeports.runners.eager import load_lm

        lm = load_lm(artifact, device)
        return JitRunner(lm, device, artifact.options.batch, chunked="prefill_cont" in kinds_of(artifact.options),
                         fuse=fuses(artifact.options), freeze=freezes(artifact.options),
                         decode_kernels=decode_kernels_of(artifact.options), gemv=gemv_of(artifact.options))
    return AotRunner(artifact, device)


def parity_reference(runner: CompiledRunner):
    """An fp32 eager LM with the runner's exact weights (JIT: a copy of its LM; AOT: weights.safetensors)."""
    if isinstance(runner, JitRunner):
        return copy.deepcopy(runner.lm).float()
    from edgeports.models import build
    from edgeports.models.fuse import fuse_projections

    art = runner.artifact
    lm = build(art.spec, dtype="float32", device=runner.device, seed=art.options.seed)
    if json.loads(art.file(PROGRAMS_FILE).read_text()).get("fused_projections"):
        fuse_projections(lm)  # the packages' weight names
    prefix = "lm."  # InPlaceStep holds the LM as `lm`
    stored = runner.weights()
    weights = {name[len(prefix):]: stored[key] for name, key in
               json.loads(art.file(PROGRAMS_FILE).read_text())["constants"].items()}
    missing, _ = lm.load_state_dict(weights, strict=False)
    if missing:
        raise EdgeportsError(f"artifact {art.path}: {WEIGHTS_FILE} lacks {missing[:3]}")
    return lm
