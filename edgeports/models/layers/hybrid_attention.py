"""Attention cores for the hybrids: sliding windows with an always-visible prefix over a ring-buffer KV
cache, and K/V reuse across layers (Hymba).

A cache layout (`KVLayout`) says how many leading positions every query sees (`sink`: Hymba's meta tokens),
how many keys a query sees counting itself (`window`, transformers' convention; None = all), and the
head dims (keys and values may differ: Hymba's values are twice as wide as its keys).

The cache holds `sink` slots for the prefix and a ring of R slots for the rest, R = min(window, max_len -
sink): position p >= sink lives in slot sink + (p - sink) % R. A windowed layer's cache therefore stays
O(sink + window) at any context length (the memory point of sliding windows). When the ring cannot wrap
(R covers all positions) a slot is its position and new keys are written before attending, like
`layers.attention.Attention`; when it can wrap, the new queries attend over [cache, new keys] (the cache
as it was before this call) and only the newest R keys are written afterwards.

`cached_attention` returns, with the output, the exact keys/values/mask it attended over (`Attended`), so a
KV-sharing layer runs `shared_attention` with its own queries on its producer's keys without any cache of
its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgeports.models.layers.attention import attention_mask
from edgeports.models.lm import Ctx
from edgeports.models.state import StateSlot

_NEVER = 2 ** 62  # position of a slot not written yet: no query position reaches it


@dataclass(frozen=True)
class KVLayout:
    """The attention pattern and cache geometry of one layer (see the module docstring)."""

    n_kv_heads: int
    k_dim: int
    v_dim: int
    window: int | None = None
    sink: int = 0

    def ring(self, max_len: int) -> int:
        """R: ring slots after the sink for a cache of `max_len` positions (sink included)."""
        rest = max_len - self.sink
        return rest if self.window is None else min(self.window, rest)

    def slots(self, batch: int, max_len: int, dtype: torch.dtype) -> list[StateSlot]:
        """k [B,Hkv,S,k_dim] and v [B,Hkv,S,v_dim], S = sink + ring(max_len)."""
        s = self.sink + self.ring(max_len)
        return [StateSlot("k", "k", (batch, self.n_kv_heads, s, self.k_dim), dtype),
                StateSlot("v", "v", (batch, self.n_kv_heads, s, self.v_dim), dtype)]


@dataclass
class Attended:
    """Keys/values [B,Hkv,S,d] a layer attended over and its bool mask [L,S] (None: plain causal, S == L)."""

    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, sink: int) -> torch.Tensor:
    """bool [Lq, Lk]: causal, within `window` (itself included), or one of the first `sink` positions."""
    mask = attention_mask(q_pos, k_pos, window)
    if window is not None and sink:
        mask = mask | ((k_pos[None, :] < sink) & (k_pos[None, :] <= q_pos[:, None]))
    return mask


def _slot_positions(pos: torch.Tensor, sink: int, ring: int) -> torch.Tensor:
    """Position held by each cache slot before this call (pos tokens written so far): int64 [sink + ring]."""
    meta = torch.arange(sink, device=pos.device)
    meta = torch.where(meta < pos, meta, _NEVER)
    r = torch.arange(ring, device=pos.device)
    n = pos - sink  # ring tokens written so far
    latest = sink + r + ring * torch.div(n - 1 - r, ring, rounding_mode="floor")
    return torch.cat([meta, torch.where(r < n, latest, _NEVER)])


def _write(cache: torch.Tensor, new: torch.Tensor, positions: torch.Tensor, n_sink: int, sink: int,
           ring: int) -> None:
    """Write new[:, :, i] (at positions[i]) into its slot; the first n_sink are prefix tokens (slot = pos).

    Only the newest `ring` non-prefix tokens are written: older ones of this call would share their slots.
    """
    if n_sink:
        cache[:, :, :n_sink] = new[:, :, :n_sink]
    rest, rest_pos = new[:, :, n_sink:], positions[n_sink:]
    # the newest min(n, ring) of them, selected without branching on n (a symbolic n stays exportable)
    n = rest.shape[2]
    keep = torch.arange(torch.sym_min(n, ring), device=new.device) + (n - torch.sym_min(n, ring))
    rest, rest_pos = rest.index_select(2, keep), rest_pos.index_select(0, keep)
    cache.index_copy_(2, sink + (rest_pos - sink) % ring, rest)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, caches: list[torch.Tensor], ctx: Ctx,
                     layout: KVLayout, scaling: float) -> tuple[torch.Tensor, list[torch.Tensor], Attended]:
    """q[B,H,L,dk], new k[B,Hkv,L,dk] / v[B,Hkv,L,dv] (rotated), [k_cache, v_cache] ->
    (y[B,H,L,dv], caches with the new keys written (in place), what was attended over).

    With ctx.first the call starts at position 0 and its first `layout.sink` tokens are the prefix.
    """
    k_cache, v_cache = caches
    positions = ctx.positions()  # [L]
    sink = layout.sink
    ring = k_cache.shape[2] - sink
    n_sink = sink if ctx.first else 0
    L = q.shape[2]
    # ring < window means the cache was sized for every position (max_len - sink < window): no wrap
    can_wrap = layout.window is not None and ring >= layout.window
    if ctx.first and not ctx.decode:
        # a fresh state: attend over the new tokens alone (causal SDPA unless the window cuts in)
        # (an exported graph cannot branch on a symbolic L: it takes the mask whenever the window is
        # shorter than the cache)
        exporting = torch.compiler.is_exporting()
        banded = layout.window is not None and (layout.window < k_cache.shape[2] if exporting else L > layout.window)
        mask = visible(positions, positions, layout.window, sink) if banded else None
        att = Attended(k, v, mask)
        _write(k_cache, k, positions, n_sink, sink, ring)
        _write(v_cache, v, positions, n_sink, sink, ring)
    elif not can_wrap:
        # slot == position: write, then attend over the whole cache
        _write(k_cache, k, positions, n_sink, sink, ring)
        _write(v_cache, v, positions, n_sink, sink, ring)
        key_pos = torch.arange(k_cache.shape[2], device=positions.device)
        att = Attended(k_cache, v_cache, visible(positions, key_pos, layout.window, sink))
    else:
        # the ring may wrap: attend over [cache as it was, new keys], then keep the newest keys
        key_pos = torch.cat([_slot_positions(ctx.pos, sink, ring), positions])
        att = Attended(torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2),
                       visible(positions, key_pos, layout.window, sink))
        _write(k_cache, k, positions, n_sink, sink, ring)
        _write(v_cache, v, positions, n_sink, sink, ring)
    return shared_attention(q, att, scaling), [k_cache, v_cache], att


def shared_attention(q: torch.Tensor, att: Attended, scaling: float) -> torch.Tensor:
    """q[B,H,L,dk] over another layer's keys/values -> y[B,H,L,dv].

    Values wider than the keys (Hymba: dv = 2 dk) are attended in dk-wide slices, as the remote code does
    for flex attention: flash kernels need equal head dims, and torch.export cannot trace SDPA's math
    path with unequal ones and a dynamic length.
    """
    dk, dv = q.shape[-1], att.v.shape[-1]
    if dv != dk and dv % dk == 0:
        return torch.cat([_sdpa(q, att.k, v, att.mask, scaling) for v in att.v.split(dk, dim=-1)], dim=-1)
    return _sdpa(q, att.k, att.v, att.mask, scaling)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scaling: float):
    gqa = q.shape[1] != k.shape[1]
    if mask is None:
        # no mask: q and k are the same new tokens, so causal is exact for every L (1 too), and a Python
        # bool (unlike L > 1) keeps a symbolic L exportable
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa)
