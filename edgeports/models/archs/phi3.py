"""Phi-3: fused qkv and gate_up projections, LongRoPE scaling (128k variants), sliding window."""

from edgeports.models.archs.llama import HF_IGNORE
from edgeports.models.layers.rope import rope_config
from edgeports.models.lm import LM
from edgeports.models.spec import ModelSpec
from edgeports.models.transformer import head_dim, transformer_lm, transformer_name_map

FAMILY = "transformer"
HF_MODEL_TYPE = "phi3"
__all__ = ["FAMILY", "HF_IGNORE", "HF_MODEL_TYPE", "build", "hf_name_map"]

hf_name_map = transformer_name_map


def build(spec: ModelSpec) -> LM:
    """Phi3ForCausalLM from spec.config."""
    c = spec.config
    return transformer_lm(spec, fused_qkv=True, fused_gate_up=True,
                          windows=[c.get("sliding_window")] * c["num_hidden_layers"],
                          rope=rope_config(c, head_dim(c), yarn_is_longrope=True))
