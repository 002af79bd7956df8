"""Falcon-H1 (TII): attention and Mamba2 in parallel in every layer, with muP multipliers, as
transformers' FalconH1 does:

    h = norm(x)
    x = x + ssm_out * mamba(h * ssm_in)  [in_proj output * mup vector]  +  attn_out * attn(h * attn_in)
    x = x + mlp(norm(x))                 mlp: down(act(gate(x) * m0) * up(x)) * m1
embeddings * embedding_multiplier, logits * lm_head_multiplier, keys * key_multiplier (before RoPE). The
mup vector scales the in_proj output by section [z | x | B | C | dt] with ssm_multipliers[0..4]. The
Mamba2 mixer's inner width is mamba_d_ssm (else expand * hidden); its gated RMSNorm (mamba_rms_norm) is
per group, norm before gate by default, weight applied in float32; without it y * silu(z).
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
from edgeports.models.transformer import TRANSFORMER_HF_RULES, head_dim, lm_head

FAMILY = "hybrid"
HF_MODEL_TYPE = "falcon_h1"
HF_IGNORE = (r"^lm_head\.weight$",)  # a checkpoint with tied embeddings may still carry the copy


class FalconH1Attention(Attention):
    """GQA attention whose keys are scaled by key_multiplier right after k_proj (before RoPE)."""

    def __init__(self, *args, key_multiplier: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.key_multiplier = key_multiplier

    def project(self, x, delta=None):
        """As Attention.project, keys times key_multiplier."""
        q, k, v = super().project(x, delta)
        return q, k * self.key_multiplier, v


def mup_vector(c: dict, d_inner: int) -> torch.Tensor:
    """float32 [2 d_inner + 2 G N + heads]: ssm_multipliers over the in_proj sections [z | x | B | C | dt]."""
    gn = c.get("mamba_n_groups", 1) * c.get("mamba_d_state", 256)
    sizes = [d_inner, d_inner, gn, gn, c.get("mamba_n_heads", 128)]
    mults = c.get("ssm_multipliers") or [1.0] * 5
    return torch.cat([torch.full((n,), float(m), device="cpu") for n, m in zip(sizes, mults, strict=True)])


def mamba_mixer(c: dict) -> Mamba2Mixer:
    """FalconH1Mixer: d_inner = mamba_d_ssm, in_proj bias mamba_proj_bias, out_proj bias projectors_bias."""
    H = c["hidden_size"]
    d_inner = c.get("mamba_d_ssm", 1024) or int(c.get("mamba_expand", 2) * H)  # FalconH1Config's defaults
    n_groups = c.get("mamba_n_groups", 1)
    norm = None
    if c.get("mamba_rms_norm", False):
        norm = GatedRMSNorm(d_inner, eps=c.get("rms_norm_eps", 1e-5), group_size=d_inner // n_groups,
                            norm_before_gate=c.get("mamba_norm_before_gate", True), weight_in_fp32=True)
    lo, hi = c.get("time_step_limit") or (0.0, float("inf"))
    return Mamba2Mixer(
        H, d_inner=d_inner, n_heads=c.get("mamba_n_heads", 128), d_state=c.get("mamba_d_state", 256),
        n_groups=n_groups, d_conv=c.get("mamba_d_conv", 4), conv_bias=c.get("mamba_conv_bias", True),
        bias=c.get("mamba_proj_bias", False), out_bias=c.get("projectors_bias", False),
        chunk_size=c.get("mamba_chunk_size", 256), dt_min=lo, dt_max=hi, norm=norm,
        in_scale=mup_vector(c, d_inner),
    )


class FalconH1Block(Block):
    """FalconH1DecoderLayer: parallel Mamba2 and attention on one norm, then the MLP. Names follow it."""

    def __init__(self, c: dict, rope: RotaryEmbedding):
        super().__init__()
        H, eps = c["hidden_size"], c.get("rms_norm_eps", 1e-5)
        bias = c.get("attention_bias", False)
        self.input_layernorm = RMSNorm(H, eps)
        self.mamba = mamba_mixer(c)
        heads = c["num_attention_heads"]
        self.self_attn = FalconH1Attention(H, heads, c.get("num_key_value_heads", 8) or heads, head_dim(c),
                                           qkv_bias=bias, o_bias=bias, rope=rope,
                                           key_multiplier=c.get("key_multiplier", 1.0))
        self.pre_ff_layernorm = RMSNorm(H, eps)
        gate_mult, down_mult = c.get("mlp_multipliers") or (1.0, 1.0)
        self.feed_forward = GatedMLP(H, c["intermediate_size"], c.get("hidden_act", "silu"),
                                     bias=c.get("mlp_bias", False), gate_mult=gate_mult, out_mult=down_mult)
        self.ssm_in = c.get("ssm_in_multiplier", 1.0)
        self.ssm_out = c.get("ssm_out_multiplier", 1.0)
        self.attn_in = c.get("attention_in_multiplier", 1.0)
        self.attn_out = c.get("attention_out_multiplier", 1.0)

    def state_slots(self, batch: int, max_len: int) -> list[StateSlot]:
        """The mixer's conv and ssm states, then the attention's k and v caches."""
        return self.mamba.state_slots(batch, max_len) + self.self_attn.state_slots(batch, max_len)

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], ctx: Ctx):
        """x[B,L,H] -> x[B,L,H], states."""
        h = self.input_layernorm(x)
        m, ssm_states = self.mamba(h * self.ssm_in, states[:2], ctx)
        a, kv = self.self_attn(h * self.attn_in, states[2:], ctx)
        x = x + (m * self.ssm_out + a * self.attn_out)
        return x + self.feed_forward(self.pre_ff_layernorm(x)), ssm_states + kv


class FalconH1LM(LM):
    """The decoder LM with Falcon-H1's embedding and lm_head multipliers."""

    def __init__(self, spec: ModelSpec, embed, blocks, norm, head):
        super().__init__(spec, embed, blocks, norm, head)
        self.embedding_multiplier = spec.config.get("embedding_multiplier", 1.0)
        self.lm_head_multiplier = spec.config.get("lm_head_multiplier", 1.0)

    def embed_tokens(self, ids: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        """ids[B,L] -> embeddings * embedding_multiplier."""
        return self.embed(ids) * self.embedding_multiplier

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x[B,H] -> lm_head(norm(x)) * lm_head_multiplier, float32."""
        return (self.head(self.norm(x)) * self.lm_head_multiplier).float()


def build(spec: ModelSpec) -> LM:
    """FalconH1ForCausalLM from spec.config."""
    c = spec.config
    rope = RotaryEmbedding(rope_config(c, head_dim(c)))
    embed = nn.Embedding(c["vocab_size"], c["hidden_size"])
    blocks = [FalconH1Block(c, rope) for _ in range(c["num_hidden_layers"])]
    return FalconH1LM(spec, embed, blocks, RMSNorm(c["hidden_size"], c.get("rms_norm_eps", 1e-5)), lm_head(c, embed))


def hf_name_map(spec: ModelSpec) -> dict[str, str]:
    """Our weight names -> transformers' (the Llama renames plus final_layernorm)."""
    from edgeports.models.weights import rename_map

    rules = [(r"^norm\.", "model.final_layernorm."), *TRANSFORMER_HF_RULES]
    return rename_map(spec, rules)
