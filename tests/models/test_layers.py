"""Layer-level checks against transformers on fresh random inputs: norms, gated norms, rope tables."""

import pytest
import torch

from edgeports.errors import EdgeportsError
from edgeports.models.layers.norm import GatedRMSNorm, RMSNorm
from edgeports.models.layers.rope import RotaryEmbedding, rope_config


def _rand(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_llama(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ours, ref = RMSNorm(48, 1e-5), LlamaRMSNorm(48, 1e-5)
    w = _rand(48, seed=1)
    ours.weight.data.copy_(w), ref.weight.data.copy_(w)
    ours, ref = ours.to(dtype), ref.to(dtype)
    x = _rand(2, 7, 48, dtype=dtype)
    assert torch.equal(ours(x), ref(x))


def _hf_gated(kind, dim, groups, norm_before_gate):
    if kind == "mamba2":
        from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated
        return MambaRMSNormGated(dim, eps=1e-5), {}
    if kind == "zamba2":
        from transformers.models.zamba2.modeling_zamba2 import Zamba2RMSNormGated
        return Zamba2RMSNormGated(dim, group_size=dim // groups, eps=1e-5), {"group_size": dim // groups}
    from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1RMSNormGated
    return (FalconH1RMSNormGated(dim, eps=1e-5, n_groups=groups, norm_before_gate=norm_before_gate),
            {"group_size": dim // groups, "norm_before_gate": norm_before_gate, "weight_in_fp32": True})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,groups,norm_before_gate", [
    ("mamba2", 1, False), ("zamba2", 4, False), ("falcon_h1", 2, True), ("falcon_h1", 1, False)])
def test_gated_rmsnorm_matches_transformers(kind, groups, norm_before_gate, dtype):
    dim = 64
    ref, kwargs = _hf_gated(kind, dim, groups, norm_before_gate)
    ours = GatedRMSNorm(dim, eps=1e-5, **kwargs)
    w = _rand(dim, seed=1)
    ours.weight.data.copy_(w), ref.weight.data.copy_(w)
    ours, ref = ours.to(dtype), ref.to(dtype)
    x, g = _rand(2, 5, dim, dtype=dtype, seed=2), _rand(2, 5, dim, dtype=dtype, seed=3)
    assert torch.equal(ours(x, g), ref(x, g))
    assert torch.equal(ours(x), ref(x))


def test_rope_buffers_stay_fp32_and_match_transformers():
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from edgeports.models import get_spec

    config = get_spec("tiny-llama").config
    rope = RotaryEmbedding(rope_config(config)).to(torch.bfloat16)
    assert rope.inv_freq.dtype == torch.float32
    ref = LlamaRotaryEmbedding(AutoConfig.for_model("llama", **{k: v for k, v in config.items() if k != "model_type"}))
    pos = torch.arange(300, 307)
    cos, sin = rope(pos, torch.float32)
    rcos, rsin = ref(torch.zeros(1, dtype=torch.float32), pos[None])
    assert torch.equal(cos, rcos[0]) and torch.equal(sin, rsin[0])


def test_longrope_switches_on_last_position():
    from edgeports.models import get_spec

    config = get_spec("tiny-phi3").config
    omax = config["original_max_position_embeddings"]
    rope = RotaryEmbedding(rope_config(config))
    short = rope(torch.arange(omax - 3, omax), torch.float32)[0]  # last position + 1 == omax: short
    long = rope(torch.arange(omax - 3, omax + 1), torch.float32)[0][:-1]  # one more: long for every token
    assert not torch.allclose(short, long)
    expected = torch.outer(torch.arange(omax - 3, omax).float(), rope.inv_freq_long)
    assert torch.allclose(long, torch.cat([expected, expected], -1).cos() * rope.attention_scaling)


def test_rope_config_old_and_new_forms_agree():
    old = {"hidden_size": 64, "num_attention_heads": 4, "rope_theta": 5e5, "max_position_embeddings": 512,
           "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64}}
    new = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 512,
           "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}
    assert rope_config(old) == rope_config(new)
    assert rope_config(dict(old, partial_rotary_factor=0.5)).rotary_dim == 8
    with pytest.raises(EdgeportsError, match="rope_type 'dynamic'"):
        rope_config(dict(old, rope_scaling={"type": "dynamic", "factor": 2.0}))
