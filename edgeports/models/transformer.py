"""The Llama-style decoder LM shared by the transformer archs (llama, qwen2, phi3).

`transformer_lm(spec, ...)` builds it from the HF config keys these archs share; an arch module only says
what differs (biases, fused projections, sliding windows, rope quirks). `TRANSFORMER_HF_RULES` renames
our parameters to the transformers checkpoint names (see edgeports.models.weights.rename_map).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from edgeports.models.layers.attention import Attention, DecoderBlock
from edgeports.models.layers.mlp import GatedMLP
from edgeports.models.layers.norm import RMSNorm
from edgeports.models.layers.rope import RopeConfig, RotaryEmbedding, rope_config
from edgeports.models.lm import LM
from edgeports.models.spec import ModelSpec

# our name -> transformers name, for LlamaForCausalLM-shaped checkpoints
TRANSFORMER_HF_RULES = (
    (r"^embed\.", "model.embed_tokens."),
    (r"^blocks\.", "model.layers."),
    (r"^norm\.", "model.norm."),
    (r"^head\.", "lm_head."),
)


def head_dim(config: dict[str, Any]) -> int:
    """config's head_dim, else hidden_size // num_attention_heads (transformers' rule)."""
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def lm_head(config: dict[str, Any], embed: nn.Embedding) -> nn.Linear:
    """The output projection, sharing the embedding matrix when tie_word_embeddings is set."""
    head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)
    if config.get("tie_word_embeddings", False):
        head.weight = embed.weight
    return head


def transformer_lm(spec: ModelSpec, *, qkv_bias: bool = False, o_bias: bool = False, mlp_bias: bool = False,
                   fused_qkv: bool = False, fused_gate_up: bool = False, windows: list[int | None] | None = None,
                   rope: RopeConfig | None = None) -> LM:
    """Embedding -> N x DecoderBlock(GQA attention + gated MLP) -> RMSNorm -> head, from spec.config.

    windows: per-layer sliding window (None = full attention); rope: overrides `rope_config(spec.config)`.
    """
    c = spec.config
    dim, n_layers = c["hidden_size"], c["num_hidden_layers"]
    hd, eps = head_dim(c), c.get("rms_norm_eps", 1e-6)
    windows = windows or [None] * n_layers
    rotary = RotaryEmbedding(rope or rope_config(c, hd))  # one module shared by every layer
    embed = nn.Embedding(c["vocab_size"], dim)
    blocks = [
        DecoderBlock(
            dim,
            Attention(dim, c["num_attention_heads"], c.get("num_key_value_heads"), hd, qkv_bias=qkv_bias,
                      o_bias=o_bias, fused_qkv=fused_qkv, rope=rotary, sliding_window=windows[i]),
            GatedMLP(dim, c["intermediate_size"], c.get("hidden_act", "silu"), bias=mlp_bias, fused=fused_gate_up),
            eps,
        )
        for i in range(n_layers)
    ]
    return LM(spec, embed, blocks, RMSNorm(dim, eps), lm_head(c, embed))


def transformer_name_map(spec: ModelSpec) -> dict[str, str]:
    """Our parameter names -> transformers checkpoint names for a LlamaForCausalLM-shaped model."""
    from edgeports.models.weights import rename_map

    return rename_map(spec, TRANSFORMER_HF_RULES)
