"""Mamba2: embedding -> N x (x + Mamba2Mixer(RMSNorm(x))) -> RMSNorm -> lm_head, as Mamba2ForCausalLM.

The gated norm normalises over the whole d_inner, as transformers' MambaRMSNormGated does (mamba_ssm
normalises per group of d_inner / n_groups: the same for every published Mamba2, which have n_groups = 1).
"""

from __future__ import annotations

import math

from edgeports.errors import EdgeportsError
from edgeports.models.archs.mamba import SSM_HF_RULES, get, ssm_lm
from edgeports.models.layers.mamba2 import Mamba2Mixer
from edgeports.models.layers.norm import GatedRMSNorm
from edgeports.models.lm import LM
from edgeports.models.spec import ModelSpec

FAMILY = "ssm"
HF_MODEL_TYPE = "mamba2"
HF_IGNORE = (r"^lm_head\.weight$",)

# transformers' Mamba2Config defaults for the keys we read
DEFAULTS = dict(num_heads=128, head_dim=64, state_size=128, expand=2, conv_kernel=4, n_groups=8, use_bias=False,
                use_conv_bias=True, layer_norm_epsilon=1e-5, residual_in_fp32=True, chunk_size=256,
                time_step_limit=(0.0, math.inf), tie_word_embeddings=False)


def mixer(c: dict) -> Mamba2Mixer:
    """Mamba2Mixer of a Mamba2Config dict."""
    g = lambda k: get(c, k, DEFAULTS)
    H = c["hidden_size"]
    d_inner = int(g("expand") * H)
    if g("num_heads") * g("head_dim") != d_inner:
        raise EdgeportsError(f"mamba2 config: num_heads * head_dim ({g('num_heads')} * {g('head_dim')}) "
                             f"must equal expand * hidden_size ({d_inner})")
    lo, hi = g("time_step_limit")
    return Mamba2Mixer(H, d_inner, g("num_heads"), g("state_size"), g("n_groups"), g("conv_kernel"),
                       conv_bias=g("use_conv_bias"), bias=g("use_bias"), chunk_size=g("chunk_size"),
                       dt_min=lo, dt_max=hi, norm=GatedRMSNorm(d_inner, eps=g("layer_norm_epsilon")))


def build(spec: ModelSpec) -> LM:
    """Mamba2ForCausalLM from spec.config."""
    return ssm_lm(spec, [mixer(spec.config) for _ in range(spec.config["num_hidden_layers"])], DEFAULTS)


def hf_name_map(spec: ModelSpec) -> dict[str, str]:
    """Our weight names -> transformers' (backbone.*, lm_head); mixer parameter names are the same."""
    from edgeports.models.weights import rename_map

    return rename_map(spec, SSM_HF_RULES)
