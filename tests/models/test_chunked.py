"""Chunked prefill (chunks of 1, 7, 64) equals one-shot prefill, for every tiny-* zoo model."""

import pytest
from parity import check_chunked

from edgeports.errors import EdgeportsError
from edgeports.models import arch_module, get_spec, zoo_names

TINY = [n for n in zoo_names() if n.startswith("tiny-")]


def chunk_length(spec) -> int:
    """100 tokens, but no more than a LongRoPE model's original_max_position_embeddings: LongRoPE switches
    its factors per call (as transformers does), so a chunk crossing that point rotates differently from
    a one-shot prefill by design (tests/models/test_parity_phi3.py pins that behaviour against HF)."""
    rope = spec.config.get("rope_parameters") or spec.config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type")) in ("longrope", "su"):
        return min(100, spec.config["original_max_position_embeddings"])
    return 100


@pytest.mark.parametrize("name", TINY)
def test_chunked_equals_one_shot(name):
    spec = get_spec(name)
    try:
        arch_module(spec.arch)
    except EdgeportsError:
        pytest.skip(f"arch {spec.arch!r} has no implementation yet")
    check_chunked(spec, chunks=(1, 7, 64), length=chunk_length(spec))
