"""Llama parity against transformers (tiny-llama: GQA 4:2, llama3 rope scaling, tied embeddings)."""

import pytest
from parity import check_parity


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefill_and_decode(tmp_path, attn):
    check_parity("tiny-llama", tmp_path, prompt_len=24, attn_implementation=attn)


def test_long_prompt_batch2(tmp_path):
    # positions past original_max_position_embeddings (64): all three llama3 frequency bands matter
    check_parity("tiny-llama", tmp_path, prompt_len=80, batch=2)


def test_chunked_prefill_matches_hf_cache(tmp_path):
    check_parity("tiny-llama", tmp_path, prompt_len=31, chunks=[13, 1, 17])
