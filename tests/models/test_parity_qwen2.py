"""Qwen2 parity against transformers (tiny-qwen2: q/k/v biases, GQA, tied embeddings; a sliding-window variant)."""

import dataclasses

import pytest
from parity import check_chunked, check_parity

from edgeports.models import get_spec


def sliding_spec():
    """tiny-qwen2 with a window of 8 on layer 1 (layer 0 stays full attention, as max_window_layers=1 says)."""
    spec = get_spec("tiny-qwen2")
    config = dict(spec.config, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    return dataclasses.replace(spec, name="tiny-qwen2-sliding", config=config)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefill_and_decode(tmp_path, attn):
    check_parity("tiny-qwen2", tmp_path, prompt_len=24, attn_implementation=attn)


def test_sliding_window(tmp_path):
    # one-shot prefill longer than the window takes the band-mask path; decode masks the cache
    check_parity(sliding_spec(), tmp_path, prompt_len=24)


def test_sliding_window_chunked_matches_hf_cache(tmp_path):
    check_parity(sliding_spec(), tmp_path, prompt_len=24, chunks=[5, 12, 7])


def test_sliding_window_chunked_equals_one_shot():
    check_chunked(sliding_spec(), chunks=(1, 7, 64), length=70)
