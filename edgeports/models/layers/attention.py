"""Multi-head attention with GQA, RoPE and an explicit KV cache, and the pre-norm transformer decoder block.

KV cache: two State slots per layer, kinds "k" and "v", [B, H_kv, max_len, head_dim] in the model dtype.
The new keys/values are written at ctx.positions() with `index_copy_` (in place, no host sync: the
position is a tensor), so the returned State aliases the input's cache tensors.

Three ways to attend, all numerically the same attention:
- prefill of a fresh state (ctx.first): causal SDPA over the new tokens alone (flash-able, no
  [L, max_len] mask); a sliding window adds a band mask only when L > window.
- prefill continuing a state: SDPA of the new queries over the whole cache with a bool mask
  [L, max_len] (key_pos <= query_pos, and key_pos > query_pos - window).
- decode: the same with L = 1, so shapes are static for a given (batch, max_len).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeports.models.layers.norm import RMSNorm
from edgeports.models.layers.rope import RotaryEmbedding, apply_rotary
from edgeports.models.lm import Block, Ctx
from edgeports.models.state import StateSlot


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """bool [Lq, Lk]: True where query at q_pos[i] may attend key at k_pos[j] (causal, optional window).

    The window follows transformers: a query sees itself and the window - 1 keys before it.
    """
    q, k = q_pos[:, None], k_pos[None, :]
    mask = k <= q
    if window is not None:
        mask = mask & (k > q - window)
    return mask


class Attention(nn.Module):
    """GQA self-attention: project -> RoPE -> write cache -> SDPA -> o_proj.

    Submodule names follow transformers (q_proj/k_proj/v_proj or fused qkv_proj, o_proj) so weight maps
    stay simple. Hybrids may override `project` (e.g. to add LoRA deltas) or call `attend` directly.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None, *,
                 qkv_bias: bool = False, o_bias: bool = False, fused_qkv: bool = False,
                 rope: RotaryEmbedding | None = None, sliding_window: int | None = None,
                 scaling: float | None = None, out_dim: int | None = None):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"Attention: {n_heads} heads is not a multiple of {n_kv_heads} kv heads")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = head_dim or dim // n_heads
        self.scaling = scaling if scaling is not None else self.head_dim ** -0.5
        self.sliding_window = sliding_window
        self.fused_qkv = fused_qkv
        q_out, kv_out = n_heads * self.head_dim, n_kv_heads * self.head_dim
        if fused_qkv:
            self.qkv_proj = nn.Linear(dim, q_out + 2 * kv_out, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(dim, q_out, bias=qkv_bias)
            self.k_proj = nn.Linear(dim, kv_out, bias=qkv_bias)
            self.v_proj = nn.Linear(dim, kv_out, bias=qkv_bias)
        self.o_proj = nn.Linear(q_out, out_dim or dim, bias=o_bias)  # out_dim: Zamba2's 2H -> H block
        self.rope = rope

    def state_slots(self, batch: int, max_len: int) -> list[StateSlot]:
        """k and v caches [B, H_kv, max_len, head_dim] in the weights' dtype."""
        shape = (batch, self.n_kv_heads, max_len, self.head_dim)
        dtype = self.o_proj.weight.dtype
        return [StateSlot("k", "k", shape, dtype), StateSlot("v", "v", shape, dtype)]

    def project(self, x: torch.Tensor, delta: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x[B,L,D] -> q[B,H,L,hd], k[B,Hkv,L,hd], v[B,Hkv,L,hd] (before RoPE). `delta` (dq, dk, dv) [B,L,*]
        is added to the projections (per-use LoRA adapters of Zamba2's shared attention)."""
        B, L, _ = x.shape
        if self.fused_qkv:
            q, k, v = self.qkv_proj(x).split(
                [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim], -1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if delta is not None:
            q, k, v = q + delta[0], k + delta[1], v + delta[2]
        q = q.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, states: list[torch.Tensor],
               ctx: Ctx) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """q[B,H,L,hd], new k/v[B,Hkv,L,hd] (rotated), caches -> (y[B,L,H*hd], caches with k/v written)."""
        k_cache, v_cache = states
        positions = ctx.positions()  # [L]
        k_cache.index_copy_(2, positions, k)
        v_cache.index_copy_(2, positions, v)
        gqa = self.n_heads != self.n_kv_heads
        L = q.shape[2]
        if ctx.first and not ctx.decode:
            window = self.sliding_window
            # an exported graph cannot branch on a symbolic L: it takes the band mask (exact for any L)
            # whenever the window is shorter than the cache
            exporting = torch.compiler.is_exporting()
            if window is not None and (window < k_cache.shape[2] if exporting else L > window):
                mask = attention_mask(positions, positions, window)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling, enable_gqa=gqa)
            else:
                # is_causal=True is exact for every L (a 1x1 causal mask hides nothing) and, unlike L > 1,
                # stays a Python bool when L is symbolic (torch.export / the ONNX exporter)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling, enable_gqa=gqa)
        else:
            key_pos = torch.arange(k_cache.shape[2], device=positions.device)
            mask = attention_mask(positions, key_pos, self.sliding_window)  # [L, max_len]
            y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=self.scaling,
                                               enable_gqa=gqa)
        B = q.shape[0]
        return y.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim), [k_cache, v_cache]

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx,
                delta: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x[B,L,D], [k_cache, v_cache] -> (out[B,L,D], [k_cache, v_cache]); `delta` as in `project`."""
        q, k, v = self.project(x, delta)
        if self.rope is not None:
            cos, sin = self.rope.cos_sin(ctx, q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y, states = self.attend(q, k, v, states, ctx)
        return self.o_proj(y), states

    def extra_repr(self) -> str:
        return (f"heads={self.n_heads}, kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"window={self.sliding_window}")


class DecoderBlock(Block):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)). Names follow transformers."""

    def __init__(self, dim: int, attn: Attention, mlp: nn.Module, eps: float = 1e-6):
        super().__init__()
        self.input_layernorm = RMSNorm(dim, eps)
        self.self_attn = attn
        self.post_attention_layernorm = RMSNorm(dim, eps)
        self.mlp = mlp

    def state_slots(self, batch: int, max_len: int) -> list[StateSlot]:
        """The attention's k and v caches."""
        return self.self_attn.state_slots(batch, max_len)

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x[B,L,D] -> x[B,L,D], updated caches."""
        h, states = self.self_attn(self.input_layernorm(x), states, ctx)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), states
