"""Mamba2 parity against transformers' Mamba2ForCausalLM (its torch path, CPU, fp32): tiny-mamba2 has 4
heads in 2 SSM groups and chunk 16, so the 24-token prompt spans two chunks; logits of a prefill and 4
decode steps, one-shot and chunked, tied and untied heads, dt limits, and the conv / ssm states."""

import dataclasses

import pytest
from parity import check_chunked, check_parity
from test_parity_mamba import check_states

from edgeports.models import get_spec


def variant(**overrides):
    spec = get_spec("tiny-mamba2")
    return dataclasses.replace(spec, name=f"tiny-mamba2-{'-'.join(overrides)}", config=dict(spec.config, **overrides))


def test_prefill_and_decode(tmp_path):
    errs = check_parity("tiny-mamba2", tmp_path, prompt_len=24, decode_steps=4)
    assert len(errs) == 5


@pytest.mark.parametrize("spec", [
    variant(tie_word_embeddings=True, n_groups=1, use_bias=True),
    variant(time_step_limit=[0.02, 0.05]),  # prefill clamps dt; decode does not (as transformers)
], ids=["tied-1group-bias", "dt-limit"])
def test_variants(tmp_path, spec):
    check_parity(spec, tmp_path, prompt_len=20, decode_steps=3)


def test_chunked_prefill_and_decode(tmp_path):
    check_parity("tiny-mamba2", tmp_path, prompt_len=24, decode_steps=4, chunks=[1, 16, 7])
    check_chunked("tiny-mamba2", chunks=(1, 7, 32), length=40)


def test_states(tmp_path):
    check_states("tiny-mamba2", tmp_path)
    check_states("tiny-mamba2", tmp_path, chunks=[17, 7])

