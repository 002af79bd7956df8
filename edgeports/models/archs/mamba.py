"""Mamba (v1): embedding -> N x (x + MambaMixer(RMSNorm(x))) -> RMSNorm -> lm_head, as MambaForCausalLM.

Also the pieces Mamba2 shares: the SSM LM (float32 residual stream, logits cast like transformers), the
transformers weight names (backbone.embeddings / layers / norm_f, lm_head) and config defaults.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeports.models.layers.mamba import MambaMixer, ResidualMixerBlock
from edgeports.models.layers.norm import RMSNorm
from edgeports.models.lm import LM, Block
from edgeports.models.spec import ModelSpec

FAMILY = "ssm"
HF_MODEL_TYPE = "mamba"
HF_IGNORE = (r"^lm_head\.weight$",)  # a checkpoint with tied embeddings may still carry the copy

SSM_HF_RULES = (
    (r"^embed\.", "backbone.embeddings."),
    (r"^blocks\.", "backbone.layers."),
    (r"^norm\.", "backbone.norm_f."),
    (r"^head\.", "lm_head."),
)
# transformers' MambaConfig defaults for the keys we read
DEFAULTS = dict(state_size=16, expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5,
                residual_in_fp32=True, time_step_rank="auto", tie_word_embeddings=True)


class SSMLM(LM):
    """The decoder LM with a float32 residual stream: the final norm sees it, the head gets the weights' dtype."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x[B,H] -> lm_head(norm_f(x)) float32, the norm output cast to the head's dtype (as transformers)."""
        return self.head(self.norm(x).to(self.head.weight.dtype)).float()


def get(c: dict, key: str, defaults: dict):
    """c[key], else the transformers config default."""
    return c.get(key, defaults[key])


def ssm_lm(spec: ModelSpec, mixers: list[nn.Module], defaults: dict) -> SSMLM:
    """Embedding -> ResidualMixerBlock(RMSNorm, mixer) per mixer -> RMSNorm -> head (tied per config)."""
    c = spec.config
    H, eps = c["hidden_size"], get(c, "layer_norm_epsilon", defaults)
    embed = nn.Embedding(c["vocab_size"], H)
    fp32 = get(c, "residual_in_fp32", defaults)
    blocks: list[Block] = [ResidualMixerBlock(RMSNorm(H, eps), m, fp32) for m in mixers]
    head = nn.Linear(H, c["vocab_size"], bias=False)
    if get(c, "tie_word_embeddings", defaults):
        head.weight = embed.weight
    return SSMLM(spec, embed, blocks, RMSNorm(H, eps), head)


def time_step_rank(c: dict, defaults: dict) -> int:
    """"auto" -> ceil(hidden / 16), as transformers resolves it."""
    rank = get(c, "time_step_rank", defaults)
    return math.ceil(c["hidden_size"] / 16) if rank == "auto" else int(rank)


def build(spec: ModelSpec) -> LM:
    """MambaForCausalLM from spec.config (d_inner = expand * hidden, as MambaConfig sets it)."""
    c = spec.config
    g = lambda k: get(c, k, DEFAULTS)
    H = c["hidden_size"]
    mixers = [MambaMixer(H, int(g("expand") * H), g("state_size"), g("conv_kernel"), time_step_rank(c, DEFAULTS),
                         conv_bias=g("use_conv_bias"), bias=g("use_bias")) for _ in range(c["num_hidden_layers"])]
    return ssm_lm(spec, mixers, DEFAULTS)


def hf_name_map(spec: ModelSpec) -> dict[str, str]:
    """Our weight names -> transformers' (backbone.*, lm_head); mixer parameter names are the same."""
    from edgeports.models.weights import rename_map

    return rename_map(spec, SSM_HF_RULES)
