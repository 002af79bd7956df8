"""Llama (Llama 3.x): GQA, llama3 rope scaling, optional attention / MLP biases."""

from edgeports.models.lm import LM
from edgeports.models.spec import ModelSpec
from edgeports.models.transformer import transformer_lm, transformer_name_map

FAMILY = "transformer"
HF_MODEL_TYPE = "llama"
HF_IGNORE = (r"^lm_head\.weight$",)  # a checkpoint with tied embeddings may still carry the copy

hf_name_map = transformer_name_map


def build(spec: ModelSpec) -> LM:
    """LlamaForCausalLM from spec.config."""
    c = spec.config
    bias = c.get("attention_bias", False)
    return transformer_lm(spec, qkv_bias=bias, o_bias=bias, mlp_bias=c.get("mlp_bias", False))
