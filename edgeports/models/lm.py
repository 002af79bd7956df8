"""The generic decoder LM: embedding -> blocks (by a layer pattern) -> norm -> last-position logits.

This is the only surface exporters and runners rely on:

    lm.state_layout(batch, max_len) -> tuple[StateSlot, ...]
    lm.new_state(batch, max_len)    -> State            (zeros; pos = 0)
    lm.prefill(ids[B,L], state, first=False) -> (logits[B,V], State)
    lm.decode(ids[B,1], state, kernels=None, inplace_states=False) -> (logits[B,V], State)

`prefill` continues from any state, so chunked prefill is `prefill` called repeatedly.
KV caches are written in place (no copy of the cache per step): the returned State may alias the
input's tensors, so a State passed to prefill/decode must not be reused afterwards.
`first=True` is the caller's promise that the state is fresh (pos == 0): attention then runs
causal SDPA over the new tokens alone (flash-able, O(L) memory) instead of masking over the whole
cache, and SSM mixers skip reading their zero initial states. Results are identical either way.

Blocks are small modules with their own slice of the State:

    block.state_slots(batch, max_len) -> list[StateSlot]   (names local to the block: "k", "conv", ...)
    block(x[B,L,H], states: list[Tensor], ctx: Ctx) -> (x[B,L,H], new_states: list[Tensor])
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeports.kernels.gemv import RowGemvs
from edgeports.models.spec import ModelSpec
from edgeports.models.state import State, StateSlot, layout_bytes
from edgeports.models.state import new_state as zeros_state

# buffers named so are copies of parameters in another form (edgeports.models.fuse.fold_constants), not weights
FOLDED_PREFIX = "folded_"


def is_folded(name: str) -> bool:
    """Whether a tensor's (dotted) name is one of those folded copies."""
    return name.rpartition(".")[2].startswith(FOLDED_PREFIX)


@dataclass
class Ctx:
    """Per-call facts every block may need. Built once per prefill/decode by the LM."""

    pos: torch.Tensor  # int64 [1]: tokens already in the state before this call
    seq_len: int  # L of this call (1 for decode)
    first: bool  # prefill of a fresh state
    decode: bool
    kernels: str | None = None  # the edgeports.kernels implementation of this call's SSM ops; None: the default
    inplace_states: bool = False  # decode's SSM step ops write the conv/SSM states into the given tensors
    gemvs: bool = False  # decode's projections run as edgeports::gemv: a norm feeding one (and an add after it) may fold in
    extras: dict[str, Any] = field(default_factory=dict)  # arch-specific (e.g. Zamba2's original embeddings)

    def positions(self) -> torch.Tensor:
        """Absolute positions of this call's tokens: int64 [L]."""
        return self.pos + torch.arange(self.seq_len, device=self.pos.device)


def _storage_key(t: torch.Tensor) -> int:
    # meta tensors (size-only builds) all report data_ptr 0: fall back to identity
    return id(t) if t.is_meta else t.data_ptr()


class Block(nn.Module):
    """A residual block owning a slice of the State. Subclasses implement both methods."""

    def state_slots(self, batch: int, max_len: int) -> list[StateSlot]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError


class LM(nn.Module):
    """Decoder LM with explicit state. Archs subclass it only to change embedding or head behaviour."""

    def __init__(self, spec: ModelSpec, embed: nn.Module, blocks: list[Block], norm: nn.Module, head: nn.Module):
        super().__init__()
        self.spec = spec
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        self.head = head
        self._slot_counts: list[int] | None = None

    # ---- state -------------------------------------------------------------------------------
    def state_layout(self, batch: int, max_len: int) -> tuple[StateSlot, ...]:
        """Every slot, block by block (named layers.<i>.<local>), then pos."""
        slots: list[StateSlot] = []
        for i, block in enumerate(self.blocks):
            for s in block.state_slots(batch, max_len):
                slots.append(StateSlot(f"layers.{i}.{s.name}", s.kind, s.shape, s.dtype))
        slots.append(StateSlot("pos", "pos", (1,), torch.int64))
        return tuple(slots)

    def new_state(self, batch: int, max_len: int, device: torch.device | str | None = None) -> State:
        """A fresh (zero) State on `device` (default: where the weights are)."""
        device = device if device is not None else self.head_device()
        return zeros_state(self.state_layout(batch, max_len), device)

    def state_bytes(self, batch: int, max_len: int, kinds: tuple[str, ...] = ("k", "v", "conv", "ssm")) -> int:
        """Exact bytes of the State (KV caches and SSM states) for this batch and max_len."""
        return layout_bytes(self.state_layout(batch, max_len), kinds)

    def weight_bytes(self) -> int:
        """Exact bytes of parameters and buffers that are weights (shared tensors counted once; folded copies of
        parameters are not weights)."""
        seen, total = set(), 0
        buffers = [b for n, b in self.named_buffers()
                    if b.is_floating_point() and not is_folded(n)]
        for t in list(self.parameters()) + buffers:
            if _storage_key(t) in seen:
                continue
            seen.add(_storage_key(t))
            total += t.numel() * t.element_size()
        return total

    def num_params(self) -> int:
        """Parameter count (tied or shared tensors counted once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if _storage_key(p) not in seen:
                seen.add(_storage_key(p))
                total += p.numel()
        return total

    def head_device(self) -> torch.device:
        """The device the weights live on."""
        return next(self.parameters()).device

    def _split(self, state: State) -> list[list[torch.Tensor]]:
        # slot counts per block do not depend on batch or max_len, so derive them once
        if self._slot_counts is None:
            self._slot_counts = [len(b.state_slots(1, 1)) for b in self.blocks]
        out, i = [], 0
        for n in self._slot_counts:
            out.append(list(state[i:i + n]))
            i += n
        return out

    # ---- forward -----------------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        """ids[B,L] -> x[B,L,H]. Archs override for embedding multipliers or extra context."""
        return self.embed(ids)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Last-position hidden x[B,H] -> logits[B,V] (float32). Archs override for multipliers."""
        return self.head(self.norm(x)).float()

    def _run(self, ids: torch.Tensor, state: State, first: bool, decode: bool, kernels: str | None = None,
             inplace_states: bool = False, gemvs: bool = False) -> tuple[torch.Tensor, State]:
        pos = state[-1]
        ctx = Ctx(pos=pos, seq_len=ids.shape[1], first=first, decode=decode, kernels=kernels,
                  inplace_states=inplace_states, gemvs=gemvs)
        x = self.embed_tokens(ids, ctx)  # [B,L,H]
        new_state: list[torch.Tensor] = []
        for block, states in zip(self.blocks, self._split(state), strict=True):
            x, states = block(x, states, ctx)
            new_state.extend(states)
        new_state.append(pos + ctx.seq_len)  # embed_tokens may add tokens (Hymba's meta tokens)
        return self.logits(x[:, -1]), tuple(new_state)

    def prefill(self, ids: torch.Tensor, state: State, first: bool = False) -> tuple[torch.Tensor, State]:
        """ids[B,L] -> (logits[B,V] of the last position, State advanced by L)."""
        return self._run(ids, state, first=first, decode=False)

    def decode(self, ids: torch.Tensor, state: State, kernels: str | None = None,
               inplace_states: bool = False, gemvs: bool = False) -> tuple[torch.Tensor, State]:
        """ids[B,1] -> (logits[B,V], State advanced by 1). Static shapes for a given (batch, max_len).
        kernels: the edgeports.kernels implementation of the SSM step ops (None: the module's default);
        inplace_states: those ops write the new conv/SSM states into `state`'s tensors, which come back as
        they are (edgeports.kernels' in-place ops: no copy-back for a caller that keeps the State in place);
        gemvs: the projections run as edgeports::gemv (under edgeports.kernels.gemv.RowGemvs), a norm that
        feeds one projection alone is folded into it (edgeports::rms_norm_gemv), and an SSM block's residual add
        into its out_proj (layers.mamba.BlockFold)."""
        with RowGemvs() if gemvs else contextlib.nullcontext():
            return self._run(ids, state, first=False, decode=True, kernels=kernels, inplace_states=inplace_states,
                             gemvs=gemvs)

    def forward(self, ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Flat form for exporters: prefill from any state, returning (logits, *state)."""
        logits, new = self.prefill(ids, tuple(state))
        return (logits, *new)

