"""Zamba2 parity against transformers: tiny-zamba2 (two shared blocks used at three positions with
per-use LoRA adapters and RoPE, 2 SSM groups) and a Zamba2-2.7B-style variant (no q/k/v adapters, no
RoPE) whose single shared block is used at every hybrid position."""

import dataclasses

import pytest
from parity import check_parity
from test_parity_mamba import check_states

from edgeports.models import get_spec


def plain_spec():
    """tiny-zamba2 with one shared block, no attention adapters, no RoPE, one SSM group, MLP bias."""
    spec = get_spec("tiny-zamba2")
    config = dict(spec.config, num_mem_blocks=1, use_shared_attention_adapter=False, use_mem_rope=False,
                  mamba_ngroups=1, add_bias_linear=True, layers_block_type=["hybrid", "mamba", "hybrid", "hybrid"],
                  num_hidden_layers=4)
    return dataclasses.replace(spec, name="tiny-zamba2-plain", config=config)


@pytest.mark.parametrize("spec", ["tiny-zamba2", "plain"])
def test_prefill_and_decode(tmp_path, spec):
    check_parity(plain_spec() if spec == "plain" else spec, tmp_path, prompt_len=24)


def test_each_use_has_its_own_kv_cache():
    from edgeports.models import build

    lm = build("tiny-zamba2", dtype="float32")
    kv = [s.name for s in lm.state_layout(1, 8) if s.kind in ("k", "v")]
    assert kv == [f"layers.{i}.{n}" for i in (1, 3, 5) for n in ("k", "v")]
    # the shared weights are held once: two blocks for three uses
    assert len(lm.shared) == 2


def test_states(tmp_path):
    # conv and ssm states of every layer and each shared-block use's own KV cache vs transformers' cache
    check_states("tiny-zamba2", tmp_path)
    check_states("tiny-zamba2", tmp_path, chunks=[5, 19])
