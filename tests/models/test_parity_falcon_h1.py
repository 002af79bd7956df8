"""Falcon-H1 parity against transformers: tiny-falcon-h1 (Falcon-H1-0.5B's flags and muP multipliers:
explicit head_dim, mamba_d_ssm, 2 SSM groups, no gated norm) and a variant with the gated RMSNorm
(norm before gate), biases and GQA 4:1."""

import dataclasses

import pytest
from parity import check_parity
from test_parity_mamba import check_states

from edgeports.models import get_spec


def gated_spec():
    """tiny-falcon-h1 with mamba_rms_norm (norm_before_gate, per-group), attention/MLP/projector biases."""
    spec = get_spec("tiny-falcon-h1")
    config = dict(spec.config, mamba_rms_norm=True, mamba_norm_before_gate=True, num_key_value_heads=1,
                  attention_bias=True, mlp_bias=True, projectors_bias=True, mamba_proj_bias=True,
                  attention_in_multiplier=0.8, tie_word_embeddings=True)
    return dataclasses.replace(spec, name="tiny-falcon-h1-gated", config=config)


@pytest.mark.parametrize("spec", ["tiny-falcon-h1", "gated"])
def test_prefill_and_decode(tmp_path, spec):
    # 24 tokens = one full SSM chunk (16) + a partial one
    check_parity(gated_spec() if spec == "gated" else spec, tmp_path, prompt_len=24)


def test_chunked_prefill_matches_hf_cache(tmp_path):
    check_parity("tiny-falcon-h1", tmp_path, prompt_len=24, chunks=[17, 7])


def test_states(tmp_path):
    # conv, ssm and KV caches of every layer vs the transformers cache, one-shot and chunked
    check_states("tiny-falcon-h1", tmp_path)
    check_states("tiny-falcon-h1", tmp_path, chunks=[17, 7])
