"""Phi3 parity against transformers (tiny-phi3: fused qkv/gate_up, LongRoPE, original_max_position_embeddings 96).

transformers 5.17 picks LongRoPE's factors per forward call: long when max(position_ids) + 1 > 96, else
short; cached keys keep the rotation they were written with. These tests pin each case.
"""

import dataclasses

import pytest
from parity import check_parity

from edgeports.models import get_spec

OMAX = get_spec("tiny-phi3").config["original_max_position_embeddings"]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_short_prompt(tmp_path, attn):
    check_parity("tiny-phi3", tmp_path, prompt_len=24, attn_implementation=attn)


def test_long_prompt_uses_long_factors(tmp_path):
    check_parity("tiny-phi3", tmp_path, prompt_len=OMAX + 4)


def test_decode_crosses_original_max(tmp_path):
    # prefill with the short factors; decode steps 3 and 4 reach positions past OMAX and switch to long
    check_parity("tiny-phi3", tmp_path, prompt_len=OMAX - 2, decode_steps=4)


def test_chunks_across_original_max(tmp_path):
    # first chunk rotated with short factors, second with long: the same path dependence as transformers
    check_parity("tiny-phi3", tmp_path, prompt_len=OMAX + 8, chunks=[64, OMAX + 8 - 64])


def test_partial_rotary(tmp_path):
    # Phi-4-mini style: only the first half of each head rotates (factors cover rotary_dim // 2 entries)
    spec = get_spec("tiny-phi3")
    rope = spec.config["rope_scaling"]
    config = dict(spec.config, partial_rotary_factor=0.5,
                  rope_scaling=dict(rope, short_factor=rope["short_factor"][:4], long_factor=rope["long_factor"][:4]))
    check_parity(dataclasses.replace(spec, config=config), tmp_path, prompt_len=OMAX + 4)
