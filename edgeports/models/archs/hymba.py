"""Hymba (NVIDIA, arXiv 2411.13676): attention heads and Mamba1 SSM heads in parallel in every layer.

Not in transformers: this follows the remote code of nvidia/Hymba-1.5B-Base (modeling_hymba.py), and is
checked against a plain sequential reference of its equations (tests/models/test_hymba_reference.py).

One layer (HymbaDecoderLayer): x + out_proj((norm1(attn) + norm2(ssm)) / 2) with both branches reading
one in_proj of norm(x) = [q | k | v | x_ssm | gate]; then x + MLP(norm(x)).
- attention: GQA, RoPE (NTK-scaled base), values twice as wide as queries/keys (v_head_dim = d_inner /
  heads), no o_proj of its own (out_proj is shared with the SSM branch).
- SSM head (Mamba1): causal conv + SiLU, x_proj -> (dt, B, C) each RMS-normalised, dt_proj, selective
  scan with the gate z.
- meta tokens: `num_memory_tokens` learned embeddings prepended to the sequence of a fresh state (prefill
  with first=True). They take positions 0..M-1 and occupy the KV caches and SSM states like any token.
- sliding-window layers (all but `global_attn_idx`) see the meta tokens plus themselves and the
  `sliding_window` tokens before them (the remote code's flex mask: q - kv <= sliding_window); their KV
  cache is a ring of M + sliding_window + 1 slots (layers.hybrid_attention).
- cross-layer KV sharing (`kv_reuse_group` [[producer, consumer, ...], ...] or `kv_reuse_every_i_layer`):
  a consumer computes only queries and attends over its producer's keys/values; it has no KV slots.

Deviation from the remote code, on purpose: its decode path trims a sliding-window cache to the meta
tokens + the last sliding_window - 1 keys, so a decoded token sees one key fewer than the same token in
its prefill (flex mask). Here prefill and decode both follow the flex mask, so chunked prefill, one-shot
prefill and decode agree exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeports.errors import EdgeportsError
from edgeports.models.layers.hybrid_attention import KVLayout, cached_attention, shared_attention
from edgeports.models.layers.mamba import (
    conv_slot,
    depthwise_conv,
    inverse_softplus_dt,
    run_conv,
    selective_ssm,
    split_linear,
)
from edgeports.models.layers.mlp import GatedMLP
from edgeports.models.layers.norm import RMSNorm
from edgeports.models.layers.rope import RopeConfig, RotaryEmbedding, apply_rotary
from edgeports.models.lm import LM, Block, Ctx
from edgeports.models.spec import ModelSpec
from edgeports.models.state import State, StateSlot
from edgeports.models.transformer import lm_head

FAMILY = "hybrid"
HF_MODEL_TYPE = "hymba"
HF_IGNORE = (r"^lm_head\.weight$",)  # a checkpoint with tied embeddings may still carry the copy
_KV_KEY = "hymba_kv"  # ctx.extras[(_KV_KEY, producer)] = what the producer attended over

# the remote code's HymbaConfig defaults for the keys used here (a config.json may omit any of them)
DEFAULTS = {
    "num_key_value_heads": 4, "hidden_act": "silu", "mlp_hidden_act": "silu", "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "sliding_window": 1024, "global_attn_idx": [0, 15, 31],
    "max_position_embeddings": 8192, "orig_max_position_embeddings": 2048, "mamba_d_state": 16,
    "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": "auto", "mamba_conv_bias": True,
    "mamba_proj_bias": False, "mamba_inner_layernorms": True, "kv_reuse_every_i_layer": -1,
    "kv_reuse_group": [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]], "num_mamba": 1, "num_experts": 1,
    "rope_type": "ntk", "attn_hidden_size": -1, "kq_head_dim": -1, "kq_norm": "none", "rope": True,
    "rope_theta": 10000.0, "num_memory_tokens": 128, "memory_tokens_interspersed_every": 0,
}


def hymba_config(spec: ModelSpec) -> dict:
    """spec.config over the remote code's defaults."""
    return {**DEFAULTS, **spec.config}


def _check(c: dict) -> None:
    """Reject configs that use remote-code options this implementation does not have."""
    H, heads = c["hidden_size"], c["num_attention_heads"]
    unsupported = {
        "attn_hidden_size": c["attn_hidden_size"] not in (-1, None, H),
        "kq_head_dim": c["kq_head_dim"] not in (-1, None, H // heads),
        "kq_norm": c["kq_norm"] not in ("none", None),
        "memory_tokens_interspersed_every": bool(c["memory_tokens_interspersed_every"]),
        "num_experts": c["num_experts"] != 1,
        "num_mamba": c["num_mamba"] != 1,
        "rope_type": c["rope_type"] not in ("ntk", "default", None),
        "hidden_act": c["hidden_act"] != "silu",
        "intermediate_size": c["intermediate_size"] <= 0,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise EdgeportsError(f"hymba: config value {bad[0]}={c.get(bad[0])!r} is not supported by edgeports")


def rope_theta(c: dict, head_dim: int) -> float:
    """The rotary base: the remote code's "ntk" type raises it by ((2 max / orig_max) - 1)^(d / (d - 2))."""
    theta = float(c["rope_theta"])
    if c["rope_type"] == "ntk":
        theta *= (2 * c["max_position_embeddings"] / c["orig_max_position_embeddings"] - 1) ** (head_dim / (head_dim - 2))
    return theta


def producers(c: dict) -> dict[int, int]:
    """{consumer layer: producer layer} of cross-layer KV sharing."""
    groups = c["kv_reuse_group"]
    every = c["kv_reuse_every_i_layer"] or -1
    if groups:
        return {i: g[0] for g in groups for i in g[1:]}
    if every > 0:
        return {i: i - i % every for i in range(c["num_hidden_layers"]) if i % every}
    return {}


def windows(c: dict) -> list[int | None]:
    """Per layer: keys a query sees counting itself (sliding_window + 1), or None for global attention."""
    w = c["sliding_window"]
    glob = set(c["global_attn_idx"] or [])
    return [None if w is None or i in glob else w + 1 for i in range(c["num_hidden_layers"])]


class HymbaMixer(nn.Module):
    """The parallel attention + SSM heads of one layer (the remote code's HymbaBlock); names follow it."""

    def __init__(self, c: dict, index: int, layout: KVLayout, producer: int | None, consumers: bool,
                 rope: RotaryEmbedding | None):
        super().__init__()
        self.index = index
        H, heads = c["hidden_size"], c["num_attention_heads"]
        self.d_inner = D = int(c["mamba_expand"] * H)
        self.heads, self.head_dim, self.v_head_dim = heads, H // heads, D // heads
        self.d_state = N = c["mamba_d_state"]
        rank = c["mamba_dt_rank"]
        self.dt_rank = R = math.ceil(H / 16) if rank == "auto" else rank
        self.layout, self.producer, self.consumers, self.rope = layout, producer, consumers, rope
        self.scaling = self.head_dim ** -0.5
        kv = 0 if producer is not None else layout.n_kv_heads * (layout.k_dim + layout.v_dim)
        self.split = [H, D, D] if producer is not None else [H, layout.n_kv_heads * layout.k_dim,
                                                             layout.n_kv_heads * layout.v_dim, D, D]
        bias, eps = c["mamba_proj_bias"], c["rms_norm_eps"]
        self.in_proj = nn.Linear(H, H + kv + 2 * D, bias=bias)
        self.conv1d = depthwise_conv(D, c["mamba_d_conv"], c["mamba_conv_bias"])
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, D, bias=True)
        with torch.no_grad():  # realistic random dt (the checkpoint overwrites it)
            self.dt_proj.bias.copy_(inverse_softplus_dt(D))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(D, 1))  # [D,N]
        self.D = nn.Parameter(torch.ones(D))
        inner = c["mamba_inner_layernorms"]
        self.dt_layernorm = RMSNorm(R, eps) if inner else None
        self.B_layernorm = RMSNorm(N, eps) if inner else None
        self.C_layernorm = RMSNorm(N, eps) if inner else None
        self.inner_norms = (self.dt_layernorm, self.B_layernorm, self.C_layernorm) if inner else None
        self.pre_avg_layernorm1 = RMSNorm(D, eps)
        self.pre_avg_layernorm2 = RMSNorm(D, eps)
        self.out_proj = nn.Linear(D, H, bias=bias)

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx):
        """x[B,L,H] (normed), [conv, ssm, (k, v)] -> (y[B,L,H], states)."""
        B, L, _ = x.shape
        # q (k, v) [B,L,*]; the SSM's x and gate [B,D,L], as the conv and scan take them
        parts = split_linear(self.in_proj, x, self.split, [False] * (len(self.split) - 2) + [True, True], ctx)
        q = parts[0].view(B, L, self.heads, self.head_dim).transpose(1, 2)  # [B,H,L,hd]
        if self.rope is not None:
            cos, sin = self.rope.cos_sin(ctx, q.dtype)
            q = apply_rotary(q, cos, sin)
        conv, ssm, *kv = states
        if self.producer is not None:
            y_attn = shared_attention(q, ctx.extras[(_KV_KEY, self.producer)], self.scaling)
        else:
            lay = self.layout
            k = parts[1].view(B, L, lay.n_kv_heads, lay.k_dim).transpose(1, 2)
            v = parts[2].view(B, L, lay.n_kv_heads, lay.v_dim).transpose(1, 2)
            if self.rope is not None:
                k = apply_rotary(k, cos, sin)
            y_attn, kv, att = cached_attention(q, k, v, kv, ctx, lay, self.scaling)
            if self.consumers:
                ctx.extras[(_KV_KEY, self.index)] = att
        y_attn = y_attn.transpose(1, 2).reshape(B, L, self.d_inner)
        xs, conv = run_conv(self.conv1d, parts[-2], conv, ctx)  # [B,D,L]
        y_ssm, ssm = selective_ssm(self, xs, parts[-1], ssm, ctx, self.inner_norms)
        y_ssm = y_ssm.transpose(1, 2)  # [B,L,D]
        y = (self.pre_avg_layernorm1(y_attn) + self.pre_avg_layernorm2(y_ssm)) / 2
        return self.out_proj(y), [conv, ssm, *kv]


class HymbaBlock(Block):
    """x + mixer(norm(x)), then x + mlp(norm(x)) (the remote code's HymbaDecoderLayer, one expert)."""

    def __init__(self, c: dict, mixer: HymbaMixer):
        super().__init__()
        H, eps = c["hidden_size"], c["rms_norm_eps"]
        self.input_layernorm = RMSNorm(H, eps)
        self.mamba = mixer
        self.pre_moe_layernorm = RMSNorm(H, eps)
        self.mlp = GatedMLP(H, c["intermediate_size"], c["mlp_hidden_act"])
        self.n_meta = c["num_memory_tokens"]

    def state_slots(self, batch: int, max_len: int) -> list[StateSlot]:
        """conv [B,D,K-1], ssm [B,D,N] f32, and (producers only) k/v caches that also hold the meta tokens."""
        m = self.mamba
        dtype = m.out_proj.weight.dtype
        slots = [conv_slot(m.conv1d, batch), StateSlot("ssm", "ssm", (batch, m.d_inner, m.d_state), torch.float32)]
        if m.producer is None:
            slots += m.layout.slots(batch, max_len + self.n_meta, dtype)
        return slots

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx):
        """x[B,L,H] -> x[B,L,H], updated states."""
        h, states = self.mamba(self.input_layernorm(x), states, ctx)
        x = x + h
        return x + self.mlp(self.pre_moe_layernorm(x)), states


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


class HymbaLM(LM):
    """The decoder LM plus the meta tokens, prepended when a fresh state is prefilled."""

    def __init__(self, spec: ModelSpec, embed, blocks, norm, head, n_meta: int):
        super().__init__(spec, embed, blocks, norm, head)
        self.n_prefix = n_meta  # tokens prepended to a fresh state (parity.check_chunked reads it)
        self.memory_tokens = nn.Parameter(torch.randn(n_meta, embed.weight.shape[1])) if n_meta else None

    def embed_tokens(self, ids: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        """ids[B,L] -> x[B,L,H], or [B,M+L,H] with the meta tokens first for a fresh state."""
        x = self.embed(ids)
        if ctx.first and self.n_prefix:
            x = torch.cat([self.memory_tokens.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
            ctx.seq_len += self.n_prefix
        return x

    def prefill(self, ids: torch.Tensor, state: State, first: bool = False) -> tuple[torch.Tensor, State]:
        """As LM.prefill. A fresh state (pos == 0) always gets the meta tokens, with or without first=True;
        a traced / exported graph cannot look at pos, so there the first chunk must be prefilled with first=True."""
        if not first and self.n_prefix and not _tracing() and int(state[-1]) == 0:
            first = True
        return super().prefill(ids, state, first)


def build(spec: ModelSpec) -> LM:
    """HymbaForCausalLM (remote code) from spec.config."""
    c = hymba_config(spec)
    _check(c)
    H, heads = c["hidden_size"], c["num_attention_heads"]
    n_layers, hd = c["num_hidden_layers"], H // heads
    v_hd = int(c["mamba_expand"] * H) // heads
    rope = None
    if c["rope"]:
        rope = RotaryEmbedding(RopeConfig(rope_type="default", theta=rope_theta(c, hd), head_dim=hd, rotary_dim=hd))
    prod, wins = producers(c), windows(c)
    layouts = [KVLayout(c["num_key_value_heads"] or heads, hd, v_hd, wins[i], c["num_memory_tokens"])
               for i in range(n_layers)]
    for cons, p in prod.items():
        if p in prod or p >= cons or layouts[p] != layouts[cons]:
            raise EdgeportsError(f"hymba: layer {cons} reuses the KV of layer {p}, which is not an earlier "
                                 f"layer with its own KV cache and the same attention window")
    mixers = [HymbaMixer(c, i, layouts[i], prod.get(i), i in prod.values(), rope) for i in range(n_layers)]
    embed = nn.Embedding(c["vocab_size"], H)
    blocks = [HymbaBlock(c, m) for m in mixers]
    eps = c["rms_norm_eps"]
    return HymbaLM(spec, embed, blocks, RMSNorm(H, eps), lm_head(c, embed), c["num_memory_tokens"])


HF_RULES = (
    (r"^embed\.", "model.embed_tokens."),
    (r"^memory_tokens$", "model.memory_tokens"),
    (r"^blocks\.(\d+)\.mlp\.", r"model.layers.\1.moe.experts.0."),
    (r"^blocks\.(\d+)\.mamba\.(x_proj|dt_proj)\.", r"model.layers.\1.mamba.\2.0."),
    (r"^blocks\.(\d+)\.mamba\.(A_log|D)$", r"model.layers.\1.mamba.\2.0"),
    (r"^blocks\.", "model.layers."),
    (r"^norm\.", "model.final_layernorm."),
    (r"^head\.", "lm_head."),
)


def hf_name_map(spec: ModelSpec) -> dict[str, str]:
    """Our weight names -> the remote code's checkpoint names (nvidia/Hymba-1.5B-Base layout)."""
    from edgeports.models.weights import rename_map

    return rename_map(spec, HF_RULES)


__all__ = ["FAMILY", "HF_MODEL_TYPE", "HymbaLM", "build", "hf_name_map"]
