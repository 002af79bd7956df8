"""Zamba2 (Zyphra): a Mamba2 backbone with shared transformer blocks, as transformers' Zamba2 does.

Layer i is either a Mamba2 layer (x + mamba(norm(x))) or a hybrid layer:
    t = shared[b](concat(x, e))  with e the (unscaled) token embeddings of this call
    t = linear_i(t)                                     (one H x H projection per hybrid layer)
    x = x + mamba_i(norm(x + t))
The `num_mem_blocks` shared blocks are used in turn at the hybrid positions (use u takes block
u % num_mem_blocks). A shared block: attention over the 2H concatenation (head_dim 2H / heads, scale
(head_dim / 2)^-1/2, RoPE if use_mem_rope) projected back to H, RMSNorm, gated MLP, no residuals. Each use
has its own LoRA adapters (rank adapter_rank) on the MLP's gate_up projection, and on q/k/v when
use_shared_attention_adapter, and its own KV cache slots. The shared weights are registered once, on the
LM (`lm.shared`); the hybrid layers refer to them without owning them.

As in transformers (and mamba_ssm's step), dt is clamped to time_step_min only in prefill, not in decode.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeports.models.layers.attention import Attention
from edgeports.models.layers.mamba2 import Mamba2Mixer
from edgeports.models.layers.mlp import GatedMLP
from edgeports.models.layers.norm import GatedRMSNorm, RMSNorm
from edgeports.models.layers.rope import RotaryEmbedding, rope_config
from edgeports.models.lm import LM, Block, Ctx
from edgeports.models.spec import ModelSpec
from edgeports.models.state import StateSlot
from edgeports.models.transformer import lm_head

FAMILY = "hybrid"
HF_MODEL_TYPE = "zamba2"
HF_IGNORE = (r"^lm_head\.weight$",)  # a checkpoint with tied embeddings may still carry the copy
_EMBEDS = "zamba2_embeds"  # ctx.extras key: this call's token embeddings [B,L,H]

# transformers' default layer pattern (Zamba2Config with layers_block_type=None: the 54-layer 2.7B model)
_DEFAULT_TYPES = (["mamba"] + (["mamba"] * 5 + ["hybrid"]) * 7 + ["mamba"] * 4 + ["hybrid"] + ["mamba"] * 3
                  + ["hybrid"] + ["mamba"] * 2)


def hybrid_layers(c: dict) -> list[int]:
    """Indices of the hybrid layers: from layers_block_type, else hybrid_layer_ids, else transformers' default."""
    types = c.get("layers_block_type")
    if types:
        return [i for i, t in enumerate(types) if t == "hybrid"]
    if c.get("hybrid_layer_ids") is not None:
        return list(c["hybrid_layer_ids"])
    return [i for i, t in enumerate(_DEFAULT_TYPES) if t == "hybrid"]


def mamba_mixer(c: dict) -> Mamba2Mixer:
    """Zamba2MambaMixer: in/out projection biases add_bias_linear, gated norm over d_inner / ngroups."""
    H = c["hidden_size"]
    d_inner = int(c.get("mamba_expand", 2) * H)
    n_groups = c.get("mamba_ngroups", 1)
    return Mamba2Mixer(
        H, d_inner=d_inner, n_heads=c.get("n_mamba_heads", 8), d_state=c.get("mamba_d_state", 64),
        n_groups=n_groups, d_conv=c.get("mamba_d_conv", 4), conv_bias=True, bias=c.get("add_bias_linear", False),
        chunk_size=c.get("chunk_size", 256), dt_min=c.get("time_step_min", 0.001),
        norm=GatedRMSNorm(d_inner, eps=1e-5, group_size=d_inner // n_groups),
    )


class MambaLayer(Block):
    """x + mamba(norm(x + t)), t the shared block's output in a hybrid layer (Zamba2MambaDecoderLayer)."""

    def __init__(self, c: dict):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c.get("rms_norm_eps", 1e-5))
        self.mamba = mamba_mixer(c)

    def state_slots(self, batch: int, max_len: int) -> list[StateSlot]:
        """The mixer's conv and ssm states."""
        return self.mamba.state_slots(batch, max_len)

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx, t: torch.Tensor | None = None):
        """x[B,L,H] (+ t[B,L,H]) -> x[B,L,H], states."""
        h, states = self.mamba(self.input_layernorm(x if t is None else x + t), states, ctx)
        return x + h, states


def _lora(dim: int, rank: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, out, bias=False))


class SharedBlock(nn.Module):
    """The shared transformer (Zamba2AttentionDecoderLayer): attention over [x, e], then the MLP."""

    def __init__(self, c: dict, rope: RotaryEmbedding | None):
        super().__init__()
        H, heads, eps = c["hidden_size"], c["num_attention_heads"], c.get("rms_norm_eps", 1e-5)
        hd = 2 * H // heads
        self.input_layernorm = RMSNorm(2 * H, eps)
        self.self_attn = Attention(2 * H, heads, c.get("num_key_value_heads") or heads, hd, rope=rope,
                                   scaling=(hd / 2) ** -0.5, out_dim=H)
        self.pre_ff_layernorm = RMSNorm(H, eps)
        ffn = c.get("intermediate_size") or 4 * H
        self.feed_forward = GatedMLP(H, ffn, c.get("hidden_act", "gelu"), bias=c.get("add_bias_linear", False),
                                     fused=True)

    def forward(self, x: torch.Tensor, adapters: nn.ModuleDict, kv: list[torch.Tensor], ctx: Ctx):
        """x[B,L,2H] (= [hidden, embeddings]), this use's adapters and KV caches -> (y[B,L,H], kv)."""
        h = self.input_layernorm(x)
        delta = (adapters["q"](h), adapters["k"](h), adapters["v"](h)) if "q" in adapters else None
        a, kv = self.self_attn(h, kv, ctx, delta)
        a = self.pre_ff_layernorm(a)
        return self.feed_forward(a, adapters["gate_up"](a)), kv


class HybridLayer(Block):
    """One use of a shared block (Zamba2HybridLayer): its adapters, KV caches, linear and Mamba layer."""

    def __init__(self, c: dict, shared: SharedBlock):
        super().__init__()
        H, rank = c["hidden_size"], c.get("adapter_rank", 128)
        self._shared = (shared,)  # registered on the LM, not here: shared weights have one name
        adapters = {"gate_up": _lora(H, rank, 2 * shared.feed_forward.hidden)}
        if c.get("use_shared_attention_adapter", False):
            adapters.update({n: _lora(2 * H, rank, 2 * H) for n in ("q", "k", "v")})
        self.adapters = nn.ModuleDict(adapters)
        self.linear = nn.Linear(H, H, bias=False)
        self.mamba_decoder = MambaLayer(c)

    @property
    def shared(self) -> SharedBlock:
        """The shared block this layer uses."""
        return self._shared[0]

    def state_slots(self, batch: int, max_len: int) -> list[StateSlot]:
        """This use's k/v caches, then the Mamba layer's conv and ssm states."""
        return self.shared.self_attn.state_slots(batch, max_len) + self.mamba_decoder.state_slots(batch, max_len)

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx):
        """x[B,L,H] -> x[B,L,H], states."""
        kv, mamba = states[:2], states[2:]
        t, kv = self.shared(torch.cat([x, ctx.extras[_EMBEDS]], dim=-1), self.adapters, kv, ctx)
        x, mamba = self.mamba_decoder(x, mamba, ctx, self.linear(t))
        return x, kv + mamba


class Zamba2LM(LM):
    """The decoder LM owning the shared blocks; the token embeddings reach every hybrid layer via ctx."""

    def __init__(self, spec: ModelSpec, embed, blocks, norm, head, shared: list[SharedBlock]):
        super().__init__(spec, embed, blocks, norm, head)
        self.shared = nn.ModuleList(shared)

    def embed_tokens(self, ids: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        """ids[B,L] -> x[B,L,H]; also kept in ctx for the shared blocks' concatenated input."""
        x = self.embed(ids)
        ctx.extras[_EMBEDS] = x
        return x


def build(spec: ModelSpec) -> LM:
    """Zamba2ForCausalLM from spec.config."""
    c = spec.config
    hybrid = hybrid_layers(c)
    rope = None
    if c.get("use_mem_rope", False):
        H, heads = c["hidden_size"], c["num_attention_heads"]
        rope = RotaryEmbedding(rope_config(c, 2 * H // heads))
    shared = [SharedBlock(c, rope) for _ in range(min(c.get("num_mem_blocks", 1), len(hybrid)) or 1)]
    blocks: list[Block] = []
    for i in range(c["num_hidden_layers"]):
        if i in hybrid:
            blocks.append(HybridLayer(c, shared[hybrid.index(i) % len(shared)]))
        else:
            blocks.append(MambaLayer(c))
    embed = nn.Embedding(c["vocab_size"], c["hidden_size"])
    norm = RMSNorm(c["hidden_size"], c.get("rms_norm_eps", 1e-5))
    head = lm_head({**c, "tie_word_embeddings": c.get("tie_word_embeddings", True)}, embed)
    return Zamba2LM(spec, embed, blocks, norm, head, shared)


def hf_name_map(spec: ModelSpec) -> dict[str, str]:
    """Our weight names -> transformers' checkpoint names.

    transformers saves shared block b once, under its first hybrid layer, with every use's adapters in
    lists indexed by the use (model.layers.<first>.shared_transformer...linear_q_adapter_list.<use>.0.weight).
    """
    from edgeports.models.weights import rename_map

    hybrid = hybrid_layers(spec.config)
    n_blocks = min(spec.config.get("num_mem_blocks", 1), len(hybrid)) or 1
    first = [hybrid[b] for b in range(n_blocks)]
    rules = []
    for u, i in enumerate(hybrid):
        st = rf"model.layers.{first[u % n_blocks]}.shared_transformer"
        rules += [(rf"^blocks\.{i}\.adapters\.(q|k|v)\.", rf"{st}.self_attn.linear_\1_adapter_list.{u}."),
                  (rf"^blocks\.{i}\.adapters\.gate_up\.", rf"{st}.feed_forward.gate_up_proj_adapter_list.{u}.")]
    rules += [(rf"^shared\.{b}\.", rf"model.layers.{first[b]}.shared_transformer.") for b in range(n_blocks)]
    rules += [(r"^embed\.", "model.embed_tokens."), (r"^blocks\.", "model.layers."),
              (r"^norm\.", "model.final_layernorm."), (r"^head\.", "lm_head.")]
    return rename_map(spec, rules)
