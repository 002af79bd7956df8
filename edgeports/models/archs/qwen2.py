"""Qwen2 / Qwen2.5: Llama with q/k/v biases and optional sliding-window layers."""

from edgeports.models.archs.llama import HF_IGNORE
from edgeports.models.lm import LM
from edgeports.models.spec import ModelSpec
from edgeports.models.transformer import transformer_lm, transformer_name_map

FAMILY = "transformer"
HF_MODEL_TYPE = "qwen2"
__all__ = ["FAMILY", "HF_IGNORE", "HF_MODEL_TYPE", "build", "hf_name_map", "windows"]

hf_name_map = transformer_name_map


def windows(config: dict) -> list[int | None]:
    """Per-layer sliding window, as transformers' Qwen2Config derives it (use_sliding_window, layer_types,
    max_window_layers)."""
    n = config["num_hidden_layers"]
    window = config.get("sliding_window") if config.get("use_sliding_window", False) else None
    types = config.get("layer_types") or [
        "sliding_attention" if window is not None and i >= config.get("max_window_layers", 28) else "full_attention"
        for i in range(n)]
    return [window if t == "sliding_attention" else None for t in types]


def build(spec: ModelSpec) -> LM:
    """Qwen2ForCausalLM from spec.config."""
    return transformer_lm(spec, qkv_bias=True, windows=windows(spec.config))
