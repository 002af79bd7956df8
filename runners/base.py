"""The runner protocol: what every backend's runner module declares and what its Runner does.

A runner module `runners/<name>.py` declares

    NAME: str                                        the backend name ("eager", "hf", "onnx", ...)
    CAPS: Capabilities                               devices, dtypes, prefill modes it supports
    available() -> tuple[bool, str]                  (False, reason) when it cannot run here
    load(artifact: Artifact, device: str) -> Runner  (runner-only backends get an in-memory Artifact)
    parity_reference(runner) -> LM                   optional: an fp32 eager LM with the runner's exact
                                                     weights (default: the artifact's seed/weights)

and is found by iterating this package (no central list; see edgeports.backends). Runners execute
only: `edgeports.measure` times them, identically for every backend, so a Runner exposes exactly

    prefill(ids[B,L], chunk=None, max_len=None) -> logits[B,V] fp32   fresh state, full or chunked
    decode(n) -> logits[B,V] fp32                                      n greedy steps after prefill
    reset()                                                            drop the state
    sync()                                                             wait for queued device work
    weight_bytes: int, state_bytes: int, info: dict

Most backends only differ in how one step runs, so `StepRunner` implements prefill/decode once on
top of three hooks (`new_state`, `prefill_step`, `decode_step`); a backend subclasses it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch

from edgeports.errors import EdgeportsError

DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
PREFILL_MODES = ("full", "chunk")
DEFAULT_HEADROOM = 256  # decode steps a prefill leaves room for when the caller gives no max_len


class Unsupported(EdgeportsError):
    """The backend cannot run this model or setting at all: the cell is `skipped`, not an error."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run. `prefill_modes`: "full" (one call) and/or "chunk" (chunk:<n>)."""

    devices: tuple[str, ...] = DEVICES
    dtypes: tuple[str, ...] = DTYPES
    prefill_modes: tuple[str, ...] = PREFILL_MODES

    def check(self, backend: str, device: str, dtype: str, prefill_mode: str) -> None:
        """Raise Unsupported when (device, dtype, prefill mode) is outside what the backend runs."""
        kind = device.split(":")[0]
        if kind not in self.devices:
            raise Unsupported(f"backend {backend!r} does not run on {kind} (only {', '.join(self.devices)})")
        if dtype not in self.dtypes:
            raise Unsupported(f"backend {backend!r} does not run {dtype} (only {', '.join(self.dtypes)})")
        mode = "full" if parse_prefill_mode(prefill_mode) is None else "chunk"
        if mode not in self.prefill_modes:
            raise Unsupported(f"backend {backend!r} has no {mode} prefill")


def parse_prefill_mode(mode: str) -> int | None:
    """'full' -> None; 'chunk:512' -> 512 (the chunk length); anything else is an EdgeportsError."""
    if mode == "full":
        return None
    head, _, n = mode.partition(":")
    if head == "chunk" and n.isdigit() and int(n) > 0:
        return int(n)
    raise EdgeportsError(f"bad prefill mode {mode!r} (use full or chunk:<n>, e.g. chunk:2048)")


def prefill_graph(first: bool) -> str:
    """The exported prefill graph a chunk runs (exporters/onnx.py): "prefill" (traced with first=True)
    for a full prompt or the first chunk from a fresh state, "prefill_next" (first=False, continues the
    state) for every later chunk. Graph-based runners (onnx, trt) share this choice."""
    return "prefill" if first else "prefill_next"


def capped_max_len(length: int, max_len: int | None, capacity: int) -> int:
    """The state length of a prefill of `length` tokens when the state is fixed at export (`capacity`
    tokens): the caller's max_len, else length + DEFAULT_HEADROOM capped at capacity (never below length)."""
    return max_len or max(length, min(length + DEFAULT_HEADROOM, capacity))


def check_chunked_prefill(length: int, chunk: int | None, graphs, why_missing: str) -> None:
    """Unsupported when a prefill of `length` tokens in chunks of `chunk` has a chunk after the first but
    `graphs` (the names a runner loaded) lacks prefill_next; `why_missing` says which file is absent."""
    if chunk is not None and chunk < length and prefill_graph(first=False) not in graphs:
        raise Unsupported(f"{why_missing}: chunked prefill needs it")


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """logits[B,V] -> next ids[B,1] (argmax; stays on the device, so no host sync)."""
    return logits.argmax(dim=-1, keepdim=True)


def tensor_bytes(obj: Any, _seen: set[int] | None = None, _depth: int = 0) -> int:
    """Bytes of every distinct tensor reachable from obj (tuples, lists, dicts, object attributes)."""
    seen = set() if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr() if obj.numel() else id(obj)
        if key in seen:
            return 0
        seen.add(key)
        return obj.numel() * obj.element_size()
    if _depth > 6 or obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.nn.Module)):
        return 0
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return 0
    return sum(tensor_bytes(v, seen, _depth + 1) for v in items)


def module_weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of parameters and floating-point buffers, shared storage counted once."""
    tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    return tensor_bytes(tensors)


class Runner(abc.ABC):
    """A loaded model on one device, ready to run prefill and decode (see the module docstring)."""

    backend: str = ""
    device: torch.device
    dtype: torch.dtype
    weight_bytes: int = 0
    info: dict[str, Any]
    # whether all device memory comes from torch's caching allocator, where a CUDA --mem-budget is enforced;
    # a runner that sets False and cannot bound its own memory (limit_memory) has the budget refused
    allocates_with_torch: bool = True

    @abc.abstractmethod
    def prefill(self, ids: torch.Tensor, chunk: int | None = None, max_len: int | None = None) -> torch.Tensor:
        """Reset the state and consume ids[B,L] (in chunks of `chunk` tokens when given); the state
        holds up to `max_len` tokens (default L + DEFAULT_HEADROOM). Returns last-position logits[B,V]."""

    @abc.abstractmethod
    def decode(self, n: int) -> torch.Tensor:
        """Generate n tokens greedily after the last prefill; returns the logits[B,V] of the last step."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Drop the state (frees KV caches between cells)."""

    @property
    @abc.abstractmethod
    def state_bytes(self) -> int:
        """Bytes of the state the runner holds now (KV caches, conv and SSM states)."""

    def sync(self) -> None:
        """Block until all work queued on the device has finished (timing boundaries call this)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Release what the runner holds. The default drops the state."""
        self.reset()

    def limit_memory(self, budget: int) -> int:
        """Bound the device memory this runner allocates outside torch's caching allocator so that, with
        torch's part, the whole fits `budget` bytes (a CUDA --mem-budget; called once after loading, with no
        state held). Returns the bytes granted outside torch; the caller caps torch's allocator at `budget`
        minus that. The default: 0 when everything comes from torch, else Unsupported (the budget would
        not bind the runner). A runner with its own allocator overrides this (runners/ort.py)."""
        if self.allocates_with_torch:
            return 0
        raise Unsupported(f"a CUDA --mem-budget is enforced through torch's allocator, and backend {self.backend!r} "
                          "allocates device memory outside it without a limit: the budget cannot be emulated for it")


class StepRunner(Runner):
    """Prefill/decode loops shared by every backend; subclasses implement one step of each.

    Hooks (all under torch.inference_mode):
        new_state(batch, max_len) -> state         whatever object the backend threads through
        prefill_step(ids[B,l], state, first) -> (logits[B,V], state)
        decode_step(ids[B,1], state) -> (logits[B,V], state)
        state_nbytes(state) -> int                 default: every tensor reachable from state
    """

    def __init__(self, device: torch.device | str, dtype: torch.dtype):
        self.device = torch.device(device)
        self.dtype = dtype
        self.info = {}
        self._state: Any = None
        self._logits: torch.Tensor | None = None
        self._pos = 0
        self._max_len = 0

    @abc.abstractmethod
    def new_state(self, batch: int, max_len: int) -> Any: ...

    @abc.abstractmethod
    def prefill_step(self, ids: torch.Tensor, state: Any, first: bool) -> tuple[torch.Tensor, Any]: ...

    @abc.abstractmethod
    def decode_step(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...

    def state_nbytes(self, state: Any) -> int:
        """Bytes of a state object (override when it holds tensors that are not state)."""
        return tensor_bytes(state)

    def prefill(self, ids: torch.Tensor, chunk: int | None = None, max_len: int | None = None) -> torch.Tensor:
        batch, length = ids.shape
        if length < 1:
            raise EdgeportsError("prefill needs at least one token")
        max_len = max_len or length + DEFAULT_HEADROOM
        if max_len < length:
            raise EdgeportsError(f"prefill of {length} tokens does not fit a state of max_len {max_len}")
        self.reset()
        with torch.inference_mode():
            state = self.new_state(batch, max_len)
            step = chunk or length
            for start in range(0, length, step):
                logits, state = self.prefill_step(ids[:, start:start + step], state, start == 0)
        self._state, self._logits, self._pos, self._max_len = state, logits, length, max_len
        return logits

    def decode(self, n: int) -> torch.Tensor:
        if self._logits is None:
            raise EdgeportsError("decode called before prefill")
        if self._pos + n > self._max_len:
            raise EdgeportsError(f"decode of {n} tokens overflows the state ({self._pos} + {n} > max_len {self._max_len})")
        logits, state = self._logits, self._state
        with torch.inference_mode():
            for _ in range(n):
                logits, state = self.decode_step(greedy(logits), state)
        self._state, self._logits = state, logits
        self._pos += n
        return logits

    def reset(self) -> None:
        self._state, self._logits, self._pos = None, None, 0

    @property
    def state_bytes(self) -> int:
        return 0 if self._state is None else self.state_nbytes(self._state)
