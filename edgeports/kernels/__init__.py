"""SSM kernels: the op contract (notes/KERNELS.md), implementation discovery and dispatch.

Five functional ops (no input is mutated; SSM states are float32; the two step ops also come in place, below):
    selective_scan          Mamba1 prefill           u[Bt,D,L] -> (y[Bt,D,L], state[Bt,D,N])
    selective_state_update  Mamba1/2 decode step     x[Bt,H,P] -> (y[Bt,H,P], state[Bt,H,P,N])
    ssd_chunk_scan          Mamba2 prefill (SSD)     x[Bt,L,H,P] -> (y[Bt,L,H,P], state[Bt,H,P,N])
    causal_conv1d           depthwise causal conv    x[Bt,D,L] -> (y[Bt,D,L], state[Bt,D,W-1])
    causal_conv1d_update    one step of it           x[Bt,D] -> (y[Bt,D], state[Bt,D,W-1])

Implementations live in modules named `edgeports/kernels/impl_<name>.py`; each declares `IMPL = "<name>"`,
`available() -> (bool, reason)` and defines the five functions with the signatures below minus `impl=`.
Nothing keeps a central list: `available_impls()` discovers them by that naming convention.

Dispatch: `impl="<name>"` calls that implementation directly. `impl=None` uses the current default, set with
`use(name)`; the default default ("auto") is the custom op `torch.ops.edgeports.<op>`, one opaque node for
torch.compile / torch.export / AOTInductor, whose runtime picks triton for CUDA tensors when impl_triton is
available, else torch. `with use("torch"):` makes tracing see the decomposition instead (the ONNX standard-op
lowering). The default is a plain module global (read at trace time by dynamo), not thread-local.

In place: the two step ops take `inplace=True`, which writes the new state into the given state tensor and
returns it (y, state): under "auto" through the mutating custom ops `edgeports::selective_state_update_` /
`edgeports::causal_conv1d_update_` (an implementation may define `<op>_(...) -> y` that writes the state itself,
as triton does; otherwise its functional op runs and the state is copied), elsewhere functional + copy. A
compiled decode step then has no state copy-back of its own. ONNX lowerings keep the functional ops.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import pkgutil
from types import ModuleType

import torch

from edgeports.errors import EdgeportsError

__all__ = ["OPS", "available_impls", "causal_conv1d", "causal_conv1d_update", "default_impl", "get_impl",
           "selective_scan", "selective_state_update", "ssd_chunk_scan", "use"]

OPS = ("selective_scan", "selective_state_update", "ssd_chunk_scan", "causal_conv1d", "causal_conv1d_update")
AUTO = "auto"
_PREFIX = "impl_"

_default = AUTO


# ---- discovery -------------------------------------------------------------------------------------
def _discover() -> dict[str, ModuleType | Exception]:
    """Import every impl_<name>.py of this package (their heavy imports are lazy by convention).

    Done once, at import: dynamo cannot trace pkgutil or importlib, and `use()` / `impl=` may sit inside a
    compiled region. A module that fails to import is kept as its exception (unavailable, with the reason).
    """
    found: dict[str, ModuleType | Exception] = {}
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name.startswith(_PREFIX):
            try:
                found[m.name[len(_PREFIX):]] = importlib.import_module(f"{__name__}.{m.name}")
            except Exception as e:  # noqa: BLE001 - a broken optional backend must not break the package
                found[m.name[len(_PREFIX):]] = e
    return found


_modules = _discover()
_avail: dict[str, tuple[bool, str]] = {}  # available() may be slow (imports triton): ask once


def _availability(name: str) -> tuple[bool, str]:
    if name not in _modules:
        raise EdgeportsError(f"unknown kernel implementation {name!r} (known: {', '.join((AUTO, *_modules))})")
    if name not in _avail:
        mod = _modules[name]
        if isinstance(mod, Exception):
            _avail[name] = (False, f"import failed: {mod}")
        else:
            try:
                _avail[name] = tuple(mod.available())
            except Exception as e:  # noqa: BLE001 - an optional backend's probe must not break dispatch
                _avail[name] = (False, f"availability check failed: {type(e).__name__}: {e}")
    return _avail[name]


def available_impls() -> dict[str, tuple[bool, str]]:
    """Every implementation found by the impl_<name>.py convention -> (available, reason)."""
    return {name: _availability(name) for name in _modules}


def get_impl(name: str) -> ModuleType:
    """The implementation module `name`, or EdgeportsError if it is unknown or unavailable here."""
    if torch.compiler.is_compiling() and name in _avail and _avail[name][0]:
        return _modules[name]  # checked eagerly already; keep the traced path to dict reads
    ok, reason = _availability(name)
    if not ok:
        raise EdgeportsError(f"kernel implementation {name!r} is not available here: {reason}")
    return _modules[name]


def default_impl() -> str:
    """The implementation that `impl=None` currently means ("auto" = the dispatching custom op)."""
    return _default


@contextlib.contextmanager
def use(impl: str):
    """Within the block, `impl=None` means `impl` ("auto", "ref", "torch", "triton", ...)."""
    global _default
    if impl != AUTO:
        get_impl(impl)  # fail at the `with`, not at the first kernel call
    old, _default = _default, impl
    try:
        yield
    finally:
        _default = old


def _resolve(impl: str | None) -> ModuleType | None:
    """None means the custom op (auto); otherwise the implementation module."""
    name = _default if impl is None else impl
    return None if name == AUTO else get_impl(name)


# ---- the custom ops' runtime: triton for CUDA tensors when available, else torch ------------------
_auto_cache: dict[bool, ModuleType] = {}


def _auto_module(cuda: bool) -> ModuleType:
    if cuda not in _auto_cache:
        use_triton = cuda and "triton" in _modules and _availability("triton")[0]
        _auto_cache[cuda] = _modules["triton" if use_triton else "torch"]
    return _auto_cache[cuda]


def _fresh(outs: tuple[torch.Tensor, ...], inputs: tuple) -> tuple[torch.Tensor, ...]:
    """Custom ops may not return aliases of inputs, and fakes are contiguous: make real outputs match."""
    ptrs = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    return tuple(o.clone() if o.untyped_storage().data_ptr() in ptrs else o.contiguous() for o in outs)


def _run_auto(op: str, *args):
    return _fresh(getattr(_auto_module(args[0].is_cuda), op)(*args), args)


def _run_inplace(op: str, state: torch.Tensor, call: tuple, mod: ModuleType | None = None) -> torch.Tensor:
    """Run step op `op` (args `call`, in the op's order) writing its new state into `state`; returns y. Uses
    the implementation's `<op>_` when it has one and the state is dense, else its functional op and a copy."""
    mod = mod if mod is not None else _auto_module(state.is_cuda)
    inplace = getattr(mod, op + "_", None)
    if inplace is not None and state.is_contiguous():
        return inplace(*call)
    y, new = getattr(mod, op)(*call)
    state.copy_(new)
    return y


Tensor = torch.Tensor  # short for the custom-op signatures below


@torch.library.custom_op("edgeports::selective_scan", mutates_args=())
def _selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                       delta_bias: Tensor | None, delta_softplus: bool,
                       initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
    return _run_auto("selective_scan", u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    return torch.empty_like(u, memory_format=torch.contiguous_format), \
        u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)


@torch.library.custom_op("edgeports::selective_state_update", mutates_args=())
def _selective_state_update_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Tensor | None, z: Tensor | None, dt_bias: Tensor | None,
                               dt_softplus: bool) -> tuple[Tensor, Tensor]:
    return _run_auto("selective_state_update", state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@_selective_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty_like(state, dtype=torch.float32, memory_format=torch.contiguous_format)


@torch.library.custom_op("edgeports::selective_state_update_", mutates_args=("state",))
def _selective_state_update_inplace_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                       D: Tensor | None, z: Tensor | None, dt_bias: Tensor | None,
                                       dt_softplus: bool) -> Tensor:
    y = _run_inplace("selective_state_update", state, (state, x, dt, A, B, C, D, z, dt_bias, dt_softplus))
    return _fresh((y,), (state, x, dt, A, B, C, D, z, dt_bias))[0]


@_selective_state_update_inplace_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("edgeports::ssd_chunk_scan", mutates_args=())
def _ssd_chunk_scan_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, D: Tensor | None,
                       z: Tensor | None, dt_bias: Tensor | None, dt_softplus: bool, dt_min: float, dt_max: float,
                       initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
    return _run_auto("ssd_chunk_scan", x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_min, dt_max,
                     initial_state)


@_ssd_chunk_scan_op.register_fake
def _(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_min, dt_max, initial_state):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        x.new_empty((x.shape[0], x.shape[2], x.shape[3], B.shape[3]), dtype=torch.float32)


@torch.library.custom_op("edgeports::causal_conv1d", mutates_args=())
def _causal_conv1d_op(x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor | None,
                      activation: str | None) -> tuple[Tensor, Tensor]:
    return _run_auto("causal_conv1d", x, weight, bias, initial_state, activation)


@_causal_conv1d_op.register_fake
def _(x, weight, bias, initial_state, activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        x.new_empty((x.shape[0], x.shape[1], weight.shape[1] - 1))


@torch.library.custom_op("edgeports::causal_conv1d_update", mutates_args=())
def _causal_conv1d_update_op(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None,
                             activation: str | None) -> tuple[Tensor, Tensor]:
    return _run_auto("causal_conv1d_update", x, conv_state, weight, bias, activation)


@_causal_conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty_like(conv_state, memory_format=torch.contiguous_format)


@torch.library.custom_op("edgeports::causal_conv1d_update_", mutates_args=("conv_state",))
def _causal_conv1d_update_inplace_op(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None,
                                     activation: str | None) -> Tensor:
    y = _run_inplace("causal_conv1d_update", conv_state, (x, conv_state, weight, bias, activation))
    return _fresh((y,), (x, conv_state, weight, bias))[0]


@_causal_conv1d_update_inplace_op.register_fake
def _(x, conv_state, weight, bias, activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---- public functions ------------------------------------------------------------------------------
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                   *, impl=None):
    """Mamba1 selective scan. u, delta, z: [Bt,D,L]; A: [D,N] f32; B, C: [Bt,N,L]; D, delta_bias: [D] f32;
    initial_state: [Bt,D,N] f32 -> (y [Bt,D,L] dtype of u, final_state [Bt,D,N] f32)."""
    mod = _resolve(impl)
    fn = torch.ops.edgeports.selective_scan if mod is None else mod.selective_scan
    return fn(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, *, impl=None,
                           inplace=False):
    """One decode step. state: [Bt,H,P,N] f32; x, dt, z: [Bt,H,P]; A: [H,P,N] f32; B, C: [Bt,G,N];
    D, dt_bias: [H,P] -> (y [Bt,H,P] dtype of x, new_state [Bt,H,P,N] f32). inplace: new_state is `state`,
    written (float32 state required)."""
    mod = _resolve(impl)
    args = (state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))
    if inplace:
        _check_inplace_state(state, torch.float32)
        y = torch.ops.edgeports.selective_state_update_(*args) if mod is None else \
            _run_inplace("selective_state_update", state, args, mod)
        return y, state
    fn = torch.ops.edgeports.selective_state_update if mod is None else mod.selective_state_update
    return fn(*args)


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, dt_min=0.0,
                   dt_max=math.inf, initial_state=None, *, impl=None):
    """Mamba2 SSD. x, z: [Bt,L,H,P]; dt: [Bt,L,H]; A: [H] f32; B, C: [Bt,L,G,N]; D, dt_bias: [H];
    initial_state: [Bt,H,P,N] f32 -> (y [Bt,L,H,P] dtype of x, final_state [Bt,H,P,N] f32).
    chunk_size is a blocking parameter only: the result does not depend on it."""
    mod = _resolve(impl)
    fn = torch.ops.edgeports.ssd_chunk_scan if mod is None else mod.ssd_chunk_scan
    return fn(x, dt, A, B, C, int(chunk_size), D, z, dt_bias, bool(dt_softplus), float(dt_min), float(dt_max),
              initial_state)


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None, *, impl=None):
    """Depthwise causal conv. x: [Bt,D,L]; weight: [D,W]; bias: [D]; initial_state: [Bt,D,W-1] (oldest first);
    activation None or "silu" -> (y [Bt,D,L], final_state [Bt,D,W-1] = the last W-1 inputs)."""
    _check_activation(activation)
    mod = _resolve(impl)
    fn = torch.ops.edgeports.causal_conv1d if mod is None else mod.causal_conv1d
    return fn(x, weight, bias, initial_state, activation)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, *, impl=None, inplace=False):
    """One step of causal_conv1d. x: [Bt,D]; conv_state: [Bt,D,W-1] -> (y [Bt,D], new_conv_state [Bt,D,W-1]).
    inplace: new_conv_state is `conv_state`, written."""
    _check_activation(activation)
    mod = _resolve(impl)
    args = (x, conv_state, weight, bias, activation)
    if inplace:
        y = torch.ops.edgeports.causal_conv1d_update_(*args) if mod is None else \
            _run_inplace("causal_conv1d_update", conv_state, args, mod)
        return y, conv_state
    fn = torch.ops.edgeports.causal_conv1d_update if mod is None else mod.causal_conv1d_update
    return fn(*args)


def _check_inplace_state(state: torch.Tensor, dtype: torch.dtype) -> None:
    if state.dtype != dtype:
        raise EdgeportsError(f"an in-place step needs a {dtype} state (the op's new state), got {state.dtype}")


def _check_activation(activation):
    if activation not in (None, "silu"):
        raise EdgeportsError(f"causal_conv1d activation must be None or 'silu', got {activation!r}")
