"""torch.compile backend, export side: JIT artifacts, and AOTInductor packages that run without model code.

Two modes, chosen with `ExportOptions.extra["mode"]`:
- "aot" (default; what `edgeports export --backend compile` writes): `prefill.pt2` (the prefill of a
  fresh state, ids[B,L] with L dynamic in [2, max_len]), `prefill_cont.pt2` (a prefill continuing a
  state: the chunks after the first; left out with extra["chunked"]=False) and `decode.pt2` (ids[B,1]),
  each `torch.export` + `torch._inductor.aoti_compile_and_package`; `weights.safetensors` (every weight
  once, shared by the three packages at load) and `programs.json` (per program: export and compile
  seconds, the `edgeports::` custom-op nodes it holds; the constant-name map). The runner loads them
  with `aoti_load_package` and needs no model code, only the `edgeports::` ops (edgeports.kernels).
- "jit": the eager artifact under this backend's name; the runner builds the LM and compiles it in
  process (prefill with a dynamic L, decode replayed from a CUDA graph on CUDA).

How the State passes through torch.export (and torch.compile). `lm.prefill/decode` update the KV caches
in place (`index_copy_`) and return new tensors for the other slots (conv and SSM states, pos). Each
program is `InPlaceStep`: `(ids, *state) -> logits`, writing every new slot back into its input
tensor, so that the whole State is caller-owned buffers that a call mutates in place. torch.export
records these as input mutations and AOTInductor writes them into the caller's tensors (no aliased
outputs, no cache copy per step), and the decode step has fixed input addresses, which is what a CUDA
graph needs. The `first` flag is a Python bool, so it is traced away: a fresh-state prefill (causal
attention over the new tokens alone, SSMs ignore the zero initial state) and a continuing one (attention
over the cache) are different graphs, hence separate programs. A 1-token prefill is run by the decode
program (identical math; L=1 would be a specialised size in a dynamic graph).

Shapes: batch is static (options.batch). The cache length S (state dims of size max_len, or max_len plus a
constant) is dynamic in [2, max_len] in every program, so one artifact serves every prompt length of a
sweep with the state sized as eager sizes it (attention reads the whole cache, so a fixed S would charge
short contexts for the longest); for a given (batch, max_len) the decode step is static and is captured
once. The SSM ops reach the graphs as single `edgeports::` custom-op nodes (their fake implementations
give the shapes), never traced into Triton or Python loops; an infinite float argument of those nodes
(ssd_chunk_scan's dt_max) is stored as the float32 maximum, since the packages keep custom-op calls as JSON.

Both modes fuse q/k/v and gate/up projections and fold the SSM mixers' constants (edgeports.models.fuse;
extra["fuse"]=False keeps them apart and unfolded): fewer, larger GEMVs and fewer small kernels per decode
step. The packages' weight names are then the fused ones (programs.json "fused_projections"); the folded
constants are package constants of their own. On CUDA the decode program runs every projection as
`edgeports::gemv`, one Triton GEMV of fixed configuration compiled into the program (extra["gemv"], gemv_of).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import shutil
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
from edgeports.kernels import get_impl
from edgeports.kernels.gemv import available as gemv_available
from edgeports.models import LM, ModelSpec

NAME = "compile"
MODES = ("aot", "jit")
KINDS = ("prefill", "prefill_cont", "decode")
PROGRAMS_FILE = "programs.json"
WEIGHTS_FILE = "weights.safetensors"
MIN_MAX_LEN = 8
EXAMPLE_STATE_LEN = 37  # odd example sizes, so no dynamic dim starts equal to a static one


def available() -> tuple[bool, str]:
    """Needs torch >= 2.6 (torch.export + AOTInductor packages) and a C++ compiler (Inductor's CPU
    code and every AOTInductor package are built with it)."""
    if not hasattr(torch._inductor, "aoti_compile_and_package") or not hasattr(torch.compiler, "set_stance"):
        return False, f"torch {torch.__version__} has no AOTInductor packaging (needs torch >= 2.6)"
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return False, "no C++ compiler (g++, c++ or clang++) on PATH: Inductor needs one"
    return True, ""


def mode_of(options: ExportOptions) -> str:
    """The export mode (extra "mode"), checked."""
    return options.choice("mode", "aot", MODES)


def fuses(options: ExportOptions) -> bool:
    """Whether the programs fuse parallel projections and fold SSM constants (extra "fuse", default on;
    edgeports.models.fuse)."""
    return options.flag("fuse", True)


def kinds_of(options: ExportOptions) -> tuple[str, ...]:
    """The programs an export holds: all three, or no continuing prefill when extra chunked=False."""
    return KINDS if options.flag("chunked", True) else ("prefill", "decode")


def freezes(options: ExportOptions) -> bool:
    """Whether a CUDA JIT decode program is compiled with Inductor's freezing (extra "freeze", default off).

    Freezing makes the weights constants of the compiled step, which folds the per-step work on weights alone
    (an SSM's A = -exp(A_log), casts of D and dt_bias: mamba2-2.7b's decode went from 6 to 3 small kernels
    per layer). It is off by default because on the H100 (torch 2.11, fp16) it also re-laid the projection
    weights out in a second copy that the M=1 matmuls read more slowly: 8 layers of mamba2-2.7b took 0.85 ms
    per step frozen against 0.60 ms not, with 2.7 against 1.0 GiB allocated. CPU programs never freeze
    (Inductor pre-packs the weights there, a second copy as well)."""
    return options.flag("freeze", False)


DECODE_KERNELS = {"custom": None, "inline": "torch"}  # option value -> edgeports.kernels implementation


def decode_kernels_of(options: ExportOptions) -> str:
    """How the decode program runs the SSM step ops (extra "decode_kernels"): "custom" (default), the in-place
    `edgeports::` custom ops (one opaque kernel each that writes its state where it lies), or "inline", their
    one-step tensor math (the torch implementation; no time loop) traced into the program, where Inductor fuses
    it with its neighbours. Returns the value, checked (InPlaceStep maps it to an implementation).
    H100, fp16, 16 layers, CUDA-graphed step (benchmarks/decode_profile.py, functional custom ops then):
    inline took 1.029 against 0.962 ms for mamba2-2.7b and 1.025 against 1.031 ms for mamba-2.8b."""
    return options.choice("decode_kernels", "custom", tuple(DECODE_KERNELS))


GEMV_MODES = ("auto", "triton", "inductor")


def gemv_of(options: ExportOptions) -> str:
    """How a CUDA decode program runs its projections (extra "gemv"): "triton", each one `edgeports::gemv`, a
    Triton GEMV with a fixed configuration per weight shape (edgeports/kernels/gemv.py); "inductor", Inductor's
    own lowering of the M=1 matmuls (reductions fused with their neighbours, tuned by coordinate descent, whose
    pick varies from one compile to the next); "auto" (default): triton where it runs (CUDA, triton installed).
    Returns the value, checked (row_gemvs says what it means on a device)."""
    return options.choice("gemv", "auto", GEMV_MODES)


def row_gemvs(mode: str, device: torch.device) -> bool:
    """Whether a decode program on `device` traces its one-row projections as `edgeports::gemv` (mode: a value
    of gemv_of). Only CUDA programs do; "triton" anywhere else, or without triton, is an error."""
    if mode == "inductor":
        return False
    ok, why = gemv_available() if device.type == "cuda" else (False, f"the program runs on {device.type}")
    if not ok and mode == "triton":
        raise EdgeportsError(f"--opt gemv=triton needs a CUDA device with triton ({why}); use gemv=inductor")
    return ok


WEIGHT_MODES = ("auto", "shared", "embedded")


def weights_mode(options: ExportOptions) -> str:
    """Where AOT packages keep their weights (extra "weights"): "shared" (one weights.safetensors bound to
    every package at load), "embedded" (a copy inside each package), or "auto" (shared on the CPU, embedded
    on CUDA; see `_shares_weights`)."""
    return options.choice("weights", "auto", WEIGHT_MODES)


# the `--opt` keys this backend reads, each with the function that checks its value (edgeports.options)
OPTIONS = {"mode": mode_of, "fuse": fuses, "chunked": kinds_of, "freeze": freezes, "weights": weights_mode,
           "decode_kernels": decode_kernels_of, "gemv": gemv_of}


class InPlaceStep(nn.Module):
    """One LM call as `(ids[B,L], *state) -> logits[B,V]` that writes the new State into `state`.

    kind: "prefill" (fresh state), "prefill_cont" (continuing a state) or "decode" (L = 1).
    step_ops: how decode runs the SSM step ops, a value of the decode_kernels option ("custom", "inline").
    gemvs: decode runs its projections as `edgeports::gemv` (row_gemvs)."""

    def __init__(self, lm: LM, kind: str, step_ops: str = "custom", gemvs: bool = False):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown program kind {kind!r}")
        if gemvs and kind != "decode":
            raise ValueError("only the decode program runs its projections as gemvs")
        self.lm = lm
        self.kind = kind
        self.gemvs = gemvs
        self.kernels = kernels = DECODE_KERNELS[step_ops]  # the edgeports.kernels implementation; None: custom ops
        if kernels is not None:  # checked (and its availability cached) before tracing: see kernels.get_impl
            get_impl(kernels)

    def forward(self, ids: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
        if self.kind == "decode":
            # custom ops update the states in place (nothing to copy back); inlined step math is copied back,
            # which Inductor fuses into the kernel that computes it
            logits, new = self.lm.decode(ids, state, kernels=self.kernels, inplace_states=self.kernels is None,
                                         gemvs=self.gemvs)
        else:
            logits, new = self.lm.prefill(ids, state, first=self.kind == "prefill")
        for old, cur in zip(state, new, strict=True):
            if cur is not old:  # KV caches come back as the same (already written) tensors
                old.copy_(cur)
        return logits


def state_len_dims(lm: LM, batch: int, max_len: int) -> tuple[dict[int, int], ...]:
    """Per state slot, {dim: offset} for the dims whose size is the cache length: max_len + offset (e.g.
    Hymba's meta tokens add 6). These are the dynamic dims; a dim that depends on max_len in any other way
    cannot be expressed and is an error."""
    a, b = lm.state_layout(batch, max_len), lm.state_layout(batch, max_len + 1)
    out = []
    for sa, sb in zip(a, b, strict=True):
        dims = {i: x - max_len for i, (x, y) in enumerate(zip(sa.shape, sb.shape, strict=True)) if x != y}
        if any(sb.shape[i] != sa.shape[i] + 1 for i in dims):
            raise EdgeportsError(f"state slot {sa.name} {sa.shape} depends on max_len other than as a length dim: "
                                 f"the compile backend cannot give it a dynamic shape")
        out.append(dims)
    return tuple(out)


def example_inputs(lm: LM, kind: str, batch: int, max_len: int,
                   device: torch.device) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Example (ids, state) for tracing a program: S = min(max_len, 37), L = S // 2 (1 for decode)."""
    s = min(max_len, EXAMPLE_STATE_LEN)
    length = 1 if kind == "decode" else s // 2
    ids = torch.randint(0, lm.spec.config["vocab_size"], (batch, length), device=device)
    return ids, lm.new_state(batch, s, device)


def export_program(lm: LM, kind: str, batch: int, max_len: int, step_ops: str = "custom",
                   gemvs: bool = False) -> torch.export.ExportedProgram:
    """torch.export of InPlaceStep(lm, kind, step_ops, gemvs): L dynamic in [2, max_len] (prefill kinds), every
    cache dim S + its offset with one S dynamic in [2, max_len]; both ranges are checked on the result."""
    device = lm.head_device()
    ids, state = example_inputs(lm, kind, batch, max_len, device)
    offsets = state_len_dims(lm, batch, max_len)
    ids_dims = None if kind == "decode" else {1: _prefill_len_dim(max_len)}
    with torch.no_grad():
        ep = torch.export.export(_OneStateLen(lm, kind, step_ops, gemvs, offsets=offsets), (ids, *state),
                                 dynamic_shapes=(ids_dims, _state_len_shapes(offsets, max_len)), strict=False)
    if ids_dims is not None:
        _check_prefill_range(ep, max_len)
    _check_state_range(ep, offsets, max_len)
    return finite_op_args(ep)


class _OneStateLen(InPlaceStep):
    """InPlaceStep that first tells the tracer every cache dim is one S (its size less its offset). With Dim
    hints each dim gets a symbol of its own, and tracing relates none of them (on the CPU, torch 2.13: not a
    layer's k and v caches, nor one layer's to the next), so the programs would take unrelated lengths."""

    def __init__(self, lm: LM, kind: str, step_ops: str, gemvs: bool, offsets: tuple[dict[int, int], ...]):
        super().__init__(lm, kind, step_ops, gemvs)
        self.len_dims = [(i, d, off) for i, dd in enumerate(offsets) for d, off in dd.items()]

    def forward(self, ids: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
        if self.len_dims:
            (i0, d0, off0), *rest = self.len_dims
            for i, d, off in rest:  # an equality of two input sizes: the tracer replaces one symbol by the other
                torch._check(state[i].size(d) - off == state[i0].size(d0) - off0)
        return super().forward(ids, *state)


def _dim_hint():
    """torch.export.Dim.DYNAMIC where it takes min/max (torch >= 2.7), else None. A hint lets torch.export
    keep guards that hold over the whole range as runtime checks, where a named Dim reports each as a violated
    constraint: on CUDA (torch 2.11, H100) the llama prefill gained `min(16*L, 32*L) == 16*L` and its
    continuing prefill `min(16*S, 32*S) != 64*S`, true for every L and S. A hint still fails the export if a
    size would be specialised to one value, but it silently narrows the range for a guard that holds over
    part of it only, and it relates no dims: _check_len_range makes both errors."""
    hint = getattr(torch.export.Dim, "DYNAMIC", None)
    return hint if hint is not None and callable(hint) else None


def _prefill_len_dim(max_len: int):
    """L's dynamic dim: a hint (see _dim_hint), else a named Dim."""
    hint = _dim_hint()
    return hint(min=2, max=max_len) if hint is not None else torch.export.Dim("prefill_len", min=2, max=max_len)


def _state_len_shapes(offsets: tuple[dict[int, int], ...], max_len: int) -> tuple[dict | None, ...]:
    """The state slots' dynamic_shapes: each cache dim a hint over [2, max_len] + its offset (_OneStateLen
    ties them to one S), else one named Dim S and its derived dims S + offset."""
    hint = _dim_hint()
    s_dim = torch.export.Dim("state_len", min=2, max=max_len)  # not "S": sympy reads that as its S

    def dim(off: int):
        if hint is not None:
            return hint(min=2 + off, max=max_len + off)
        return s_dim + off if off else s_dim

    return tuple({d: dim(off) for d, off in dd.items()} or None for dd in offsets)


def _check_prefill_range(ep: torch.export.ExportedProgram, max_len: int) -> None:
    """Raise unless the program takes every L in [2, max_len] (the manifest's prefill_len range)."""
    _check_len_range(ep, "the prompt length L", [(_user_input(ep, 0).shape[1], 0)], max_len)  # ids [B, L]


def _check_state_range(ep: torch.export.ExportedProgram, offsets: tuple[dict[int, int], ...], max_len: int) -> None:
    """Raise unless every cache dim is S + its offset for one S that takes every value in [2, max_len] (the
    manifest's state_len range)."""
    sizes = [(_user_input(ep, 1 + i).shape[d], off) for i, dd in enumerate(offsets) for d, off in dd.items()]
    if sizes:
        _check_len_range(ep, "the state length S", sizes, max_len)


def _user_input(ep: torch.export.ExportedProgram, i: int) -> torch.Tensor:
    """The fake value of the program's i-th user input (ids, *state)."""
    name = ep.graph_signature.user_inputs[i]
    return next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == name).meta["val"]


def _check_len_range(ep: torch.export.ExportedProgram, what: str, sizes: list[tuple[Any, int]], max_len: int) -> None:
    """Raise unless every (size, offset) is symbolic and size - offset is one expression, a symbol plus a
    constant, that takes every value in [2, max_len]."""
    exprs = set()
    for size, off in sizes:
        if not isinstance(size, torch.SymInt):
            raise ValueError(f"torch.export specialised {what} to {size - off}")
        exprs.add(size.node.expr - off)
    syms = next(iter(exprs)).free_symbols if len(exprs) == 1 else set()
    if len(syms) != 1 or not (shift := next(iter(exprs)) - next(iter(syms))).is_Integer:
        raise ValueError(f"torch.export made {what} {', '.join(sorted(map(str, exprs)))} over its "
                         f"{len(sizes)} dims, not one symbol")
    vr = ep.range_constraints.get(next(iter(syms)))
    if vr is not None:
        lo, hi = vr.lower + shift, vr.upper + shift  # sympy bounds (int() fails on int_oo)
        if lo > 2 or hi < max_len:
            raise ValueError(f"torch.export narrowed {what} to [{lo}, {hi}], not [2, {max_len}]")


def _is_edgeports_op(node: torch.fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "edgeports"


def _functionalized_edgeports_op(node: torch.fx.Node) -> torch._ops.OpOverload | None:
    """The in-place `edgeports::` op a functionalization wrapper node (auto_functionalized) calls, if any."""
    if isinstance(node.target, torch._ops.HigherOrderOperator) and node.target.name().startswith("auto_functionalized"):
        op = node.args[0] if node.args else None
        if isinstance(op, torch._ops.OpOverload) and op.namespace == "edgeports":
            return op
    return None


def finite_op_args(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Replace infinite float arguments of the `edgeports::` nodes (ssd_chunk_scan's dt_max=inf) by the
    float32 maximum, in place. AOTInductor stores custom-op calls as JSON, which has no inf (the package
    then fails to load); clamping at the float32 maximum is the same clamp for every finite value."""
    big = torch.finfo(torch.float32).max

    def finite(a):
        return math.copysign(big, a) if isinstance(a, float) and math.isinf(a) else a

    for node in ep.graph.nodes:
        if node.op == "call_function" and _is_edgeports_op(node):
            node.args = tuple(finite(a) for a in node.args)
            node.kwargs = {k: finite(v) for k, v in node.kwargs.items()}
    ep.graph_module.recompile()
    return ep


def graph_ops(ep: torch.export.ExportedProgram) -> dict[str, int]:
    """Counts of the `edgeports::` custom-op nodes (in-place ones through their functionalization wrapper) and
    of loop/branch higher-order ops in a program."""
    out: dict[str, int] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        if (inplace := _functionalized_edgeports_op(node)) is not None:
            name = inplace.name()
        elif isinstance(node.target, torch._ops.HigherOrderOperator):
            name = f"hop::{node.target.name()}"
        elif _is_edgeports_op(node):
            name = node.target.name()
        else:
            continue
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


def _shares_weights(mode: str, device: torch.device) -> bool:
    """Whether the weights stay out of the packages, so that prefill and decode share one device copy.

    "auto" shares on the CPU only, and CUDA packages embed their weights: one copy per package, which the
    runner reports in its weight bytes. (On torch 2.11 CUDA packages exported with weights=shared were as big
    as embedded ones, H100 2026-11-22: the CUDA side of leaving constants out was not confirmed.)"""
    can_share = hasattr(torch._inductor.config.aot_inductor, "package_constants_in_so")
    if mode == "shared" and not can_share:
        raise EdgeportsError(f"--opt weights=shared needs a torch whose AOTInductor can leave constants out of a "
                             f"package (torch {torch.__version__} cannot); use weights=embedded")
    return can_share and (mode == "shared" or mode == "auto" and device.type == "cpu")


def tuning_of(kind: str, device: torch.device) -> dict[str, Any]:
    """Inductor options per program. The CUDA decode step gets coordinate-descent tuning, which also makes
    Inductor lower its M=1 matmuls (GEMVs) to Triton reductions fused with their neighbours (norms,
    activations) instead of cuBLAS calls: fewer kernels per step, which is where a CUDA-graphed decode step
    loses time (H100, mamba-2.8b cut to 8 layers: 0.63 -> 0.55 ms per step). Prefill keeps the defaults
    (its GEMMs are compute-bound, where cuBLAS wins)."""
    return {"coordinate_descent_tuning": True} if kind == "decode" and device.type == "cuda" else {}


def compile_package(ep: torch.export.ExportedProgram, path: Path, options: dict[str, Any] | None = None,
                    share_weights: bool = False) -> None:
    """AOTInductor-compile one program into a .pt2 package (its weights left out with `share_weights`).

    Embedded weights go into the package as a blob beside the compiled library where this torch can
    (package_constants_on_disk_format="binary_blob"; the loader reads it in): by default Inductor appends
    constants over 2 GB to the library itself and the loaded model mmaps its own file to find them.
    Compiled under `uncached_int_arrays`."""
    configs: dict[str, Any] = {"aot_inductor.package_constants_in_so": False} if share_weights else {}
    if not share_weights and hasattr(torch._inductor.config.aot_inductor, "package_constants_on_disk_format"):
        configs["aot_inductor.package_constants_on_disk_format"] = "binary_blob"
    configs.update(options or {})
    with uncached_int_arrays():
        torch._inductor.aoti_compile_and_package(ep, package_path=str(path), inductor_configs=configs)


@contextlib.contextmanager
def uncached_int_arrays() -> Iterator[bool]:
    """AOTInductor's C++ wrapper codegen with every size/stride array declared where it is used; yields
    whether the patch applied (False: a torch whose wrapper codegen is laid out otherwise, left as it is).

    Why: the wrapper caches the `int_array_N` it declared under a key holding the id() of the writeline
    callable or of its owner, and a short-lived one's id is recycled, so a later call can get back a name
    declared in a buffer it cannot see. mamba2-2.7b's CUDA decode package failed to compile with
    "'int_array_583' was not declared in this scope" (H100, torch 2.11; pytorch PR 193628 describes the same
    mechanism). A declaration per use costs a few lines of C++; a missing one fails the export."""
    try:
        from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
    except ImportError:
        yield False
        return
    name = "codegen_int_array_var"
    cached = CppWrapperCpu.__dict__[name] if name in CppWrapperCpu.__dict__ else None  # its own, not inherited
    if cached is None or not hasattr(CppWrapperCpu, "_codegen_int_array_var_impl"):  # a torch laid out otherwise
        yield False
        return

    def codegen_int_array_var(self, int_array, writeline, known_statically=False, graph=None):
        return self._codegen_int_array_var_impl(int_array, writeline, known_statically)

    CppWrapperCpu.codegen_int_array_var = codegen_int_array_var
    try:
        yield True
    finally:
        CppWrapperCpu.codegen_int_array_var = cached


def save_weights(programs: list[torch.export.ExportedProgram], path: Path) -> dict[str, str]:
    """Every parameter, buffer and constant of the programs into one safetensors file, each storage once
    (tied weights are one entry). Returns {constant name in the programs: key in the file}."""
    from safetensors.torch import save_file

    keys: dict[tuple, str] = {}
    names: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for ep in programs:
        for name, t in [*ep.state_dict.items(), *ep.constants.items()]:
            if not isinstance(t, torch.Tensor):
                continue
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), t.stride())
            if ident not in keys:
                keys[ident] = name
                tensors[name] = t.detach().contiguous().cpu()
            names[name] = keys[ident]
    save_file(tensors, str(path))
    return names


def device_facts(device: torch.device) -> dict[str, str | None]:
    """What a compiled package is tied to besides torch: the device kind, GPU and compute capability."""
    if device.type != "cuda":
        return {"device": device.type, "gpu": None, "compute_capability": None}
    major, minor = torch.cuda.get_device_capability(device)
    return {"device": "cuda", "gpu": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def failing_op(exc: BaseException) -> str:
    """Best guess of the op (and model source line) a compile/export failure comes from, for one error line."""
    text = "\n".join(str(e) for e in _chain(exc))
    op = None
    for pattern in (r"target=(?:torch\.ops\.)?([\w.:]+)", r"torch\.ops\.(\w+\.\w+)", r"\b(\w+::\w+)",
                    r"\b(\w+\.\w+\.default)\b", r"\b(aten\.\w+)"):
        m = re.search(pattern, text)
        if m:
            op = f"op {m.group(1)}"
            break
    where = None
    for e in _chain(exc):
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if "/edgeports/models/" in f.filename or "/edgeports/kernels/" in f.filename]
        if frames:
            f = frames[-1]
            where = f"{Path(f.filename).name}:{f.lineno} ({(f.line or '').strip()[:80]})"
            break
    if op and where:
        return f"{op} in {where}"
    return op or where or "an unidentified op"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def failure(spec: ModelSpec, what: str, exc: BaseException) -> EdgeportsError:
    """The one-line error for a model that does not compile or export: arch, program, op, torch's reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    # a C++ compile error's first line is only "C++ compile error": the compiler's own first error says why
    cause = next((line for line in lines[1:] if " error: " in line or line.startswith(("error:", "fatal error"))), "")
    return EdgeportsError(f"compile: {what} of {spec.name} (arch {spec.arch}) failed at {failing_op(exc)}: "
                          f"{type(exc).__name__}: {first[:300]}" + (f" ({cause[-300:]})" if cause else ""))


@contextlib.contextmanager
def reported(spec: ModelSpec, what: str) -> Iterator[None]:
    """Turn any failure inside the block into `failure(...)` (EdgeportsErrors pass through)."""
    try:
        yield
    except EdgeportsError:
        raise
    except Exception as e:
        raise failure(spec, what, e) from e


def export(source: ModelSpec | LM, out_dir: str | Path, options: ExportOptions) -> Artifact:
    """Write a compile artifact: AOTInductor packages (mode aot) or the eager artifact (mode jit)."""
    # checked before any work, in both modes
    fuse, kinds, weights = fuses(options), kinds_of(options), weights_mode(options)
    freezes(options)
    step_ops, gemv = decode_kernels_of(options), gemv_of(options)
    if mode_of(options) == "jit":
        from edgeports.exporters import eager

        return eager.export(source, out_dir, options, backend=NAME)
    if options.max_len < MIN_MAX_LEN:
        raise EdgeportsError(f"compile export needs --max-len >= {MIN_MAX_LEN}, got {options.max_len}")
    t0 = time.perf_counter()
    spec = resolve_spec(source)
    # model code: imported here, not when runners/compile.py imports this module
    from edgeports.models.fuse import (
        fold_constants,
        fuse_projections,
        has_unfolded_constants,
        has_unfused_projections,
    )

    if isinstance(source, LM):
        lm = source
        options = lm_options(lm, options, device=str(lm.head_device()))
        if fuse and (has_unfused_projections(lm) or has_unfolded_constants(lm)):
            lm = copy.deepcopy(lm)  # fusing renames weights, folding adds buffers: never change the caller's LM
    else:
        lm = build_lm(spec, options)
    if fuse:
        fuse_projections(lm)
        if has_unfolded_constants(lm):  # an LM handed in folded (a JIT runner's) is used as it is
            fold_constants(lm)
    # what the weight names are, not what was asked: an LM handed in may come fused (a JIT runner's) with fuse off
    fused_names = not has_unfused_projections(lm)
    lm.requires_grad_(False).eval()
    device = lm.head_device()
    share = _shares_weights(weights, device)
    gemvs = row_gemvs(gemv, device)
    batch, max_len = options.batch, options.max_len
    with stage(out_dir) as tmp:
        programs: dict[str, dict[str, Any]] = {}
        eps = []
        for kind in kinds:
            t = time.perf_counter()
            with reported(spec, f"torch.export of the {kind} program"):
                ep = export_program(lm, kind, batch, max_len, step_ops, gemvs and kind == "decode")
            t_export = time.perf_counter() - t
            with reported(spec, f"AOTInductor compile of the {kind} program"):
                compile_package(ep, tmp / f"{kind}.pt2", tuning_of(kind, device), share)
            programs[kind] = {"file": f"{kind}.pt2", "export_s": round(t_export, 3),
                              "compile_s": round(time.perf_counter() - t - t_export, 3), "ops": graph_ops(ep)}
            eps.append(ep)
        constants = save_weights(eps, tmp / WEIGHTS_FILE)
        (tmp / PROGRAMS_FILE).write_text(json.dumps(
            {"programs": programs, "constants": constants, "weights": "shared" if share else "embedded",
             "fused_projections": fused_names},
            indent=1, sort_keys=True))
        dims = state_len_dims(lm, batch, max_len)
        layout = lm.state_layout(batch, max_len)
        shape_ranges = {"batch": [batch, batch], "prefill_len": [2, max_len], "state_len": [2, max_len],
                        "state_len_dims": {s.name: sorted(d.items()) for s, d in zip(layout, dims, strict=True) if d}}
        art = write_manifest(tmp, Path(out_dir), backend=NAME, spec=spec, options=options,
                             state_layout=layout_json(layout), shape_ranges=shape_ranges,
                             versions={**library_versions("safetensors"), **device_facts(device)},
                             export_s=time.perf_counter() - t0)
    return art
