"""The zoo's JSON entries: they parse, cite their source, and their numbers are self-consistent."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from edgeports.models import ModelSpec, get_spec, zoo_names

# The models of the study (DESIGN.md), each with one real published config in the zoo.
STUDY_MODELS = (
    "llama-3.2-1b", "llama-3.2-3b", "qwen2.5-0.5b", "qwen2.5-1.5b", "phi-3-mini-4k", "phi-3-mini-128k",
    "mamba-130m", "mamba-790m", "mamba-1.4b", "mamba-2.8b", "mamba2-130m", "mamba2-780m", "mamba2-1.3b",
    "mamba2-2.7b", "falcon-h1-0.5b", "falcon-h1-1.5b", "zamba2-1.2b", "zamba2-2.7b", "hymba-1.5b",
)
FAMILY = {"llama": "transformer", "qwen2": "transformer", "phi3": "transformer", "mamba": "ssm", "mamba2": "ssm",
          "falcon_h1": "hybrid", "zamba2": "hybrid", "hymba": "hybrid"}
REAL = [n for n in zoo_names() if not n.startswith("tiny-")]


def _raw(name: str) -> dict:
    return json.loads((resources.files("edgeports.models") / "zoo" / f"{name}.json").read_text())


def test_real_zoo_is_exactly_the_study_models():
    assert sorted(REAL) == sorted(STUDY_MODELS)


@pytest.mark.parametrize("name", zoo_names())
def test_entry_parses_and_is_consistent(name):
    raw = _raw(name)
    spec = get_spec(name)
    assert spec.name == name == raw["name"]
    assert spec.config["model_type"] == spec.arch
    assert FAMILY[spec.arch] == spec.family
    assert ModelSpec.from_json(spec.to_json()).config == spec.config


@pytest.mark.parametrize("name", REAL)
def test_real_entry_cites_source_and_size(name):
    raw = _raw(name)
    assert len(raw["_source"]) > 40 and "config" in raw["_source"]
    assert raw["published_params"] > 1e7
    assert raw["dtype"] == "bfloat16"


@pytest.mark.parametrize("name", REAL)
def test_real_config_is_self_consistent(name):
    """Derived widths agree with each other: guards against a mistyped number."""
    c = get_spec(name).config
    arch = get_spec(name).arch
    if arch in ("llama", "qwen2", "phi3"):
        head_dim = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
        assert c["num_attention_heads"] % c["num_key_value_heads"] == 0
        if "head_dim" not in c:
            assert head_dim * c["num_attention_heads"] == c["hidden_size"]
        scaling = c.get("rope_scaling") or {}
        if scaling.get("type") == "longrope":  # one factor per rotary frequency
            assert len(scaling["long_factor"]) == len(scaling["short_factor"]) == head_dim // 2
    elif arch == "mamba":
        assert c["intermediate_size"] == c["expand"] * c["hidden_size"]
        assert c["time_step_rank"] == -(-c["hidden_size"] // 16)  # mamba_ssm's dt_rank="auto"
    elif arch == "mamba2":
        assert c["num_heads"] * c["head_dim"] == c["expand"] * c["hidden_size"]
        assert c["vocab_size"] % 16 == 0
    elif arch == "falcon_h1":
        assert c["mamba_n_heads"] * c["mamba_d_head"] == c["mamba_d_ssm"]
    elif arch == "zamba2":
        types = c["layers_block_type"]
        assert len(types) == c["num_hidden_layers"]
        assert [i for i, t in enumerate(types) if t == "hybrid"] == c["hybrid_layer_ids"]
        assert c["n_mamba_heads"] * c["mamba_headdim"] == c["mamba_expand"] * c["hidden_size"]
    elif arch == "hymba":
        n = c["num_hidden_layers"]
        assert len(c["layer_type"]) == len(c["conv_dim"]) == n
        shared = [i for group in c["kv_reuse_group"] for i in group]
        assert len(shared) == len(set(shared)) and not set(shared) & set(c["global_attn_idx"])
        assert c["hidden_size"] % c["num_attention_heads"] == 0


HF_CONFIG = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "phi3": "Phi3Config", "mamba": "MambaConfig",
             "mamba2": "Mamba2Config", "falcon_h1": "FalconH1Config", "zamba2": "Zamba2Config"}


@pytest.mark.parametrize("name", [n for n in REAL if get_spec(n).arch in HF_CONFIG])
def test_real_config_is_accepted_by_transformers(name):
    """Every key is one transformers' config class understands with the published meaning."""
    transformers = pytest.importorskip("transformers")
    spec = get_spec(name)
    cfg = getattr(transformers, HF_CONFIG[spec.arch])(**spec.config)
    assert cfg.model_type == spec.arch
    assert cfg.num_hidden_layers == spec.config["num_hidden_layers"]
    assert cfg.hidden_size == spec.config["hidden_size"]
