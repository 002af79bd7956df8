"""Mamba (v1) parity against transformers' MambaForCausalLM (its torch path, CPU, fp32): logits of a
prefill and 4 decode steps and the conv / ssm states after them.

Chunked prefill is checked against our own one-shot prefill only: transformers 5.17's Mamba1 prefill
with a cache continues the conv state but restarts the SSM state from zero (its scan takes no initial
state), so its chunked logits differ from its one-shot logits (~1e-3 relative on tiny-mamba).

`check_states` is shared with the Mamba2 test: transformers keeps W conv columns, we keep W-1 (the last
W-1 of its columns are ours); the recurrent states have our layouts ([B,D,N] / [B,H,P,N]).
"""

import pytest
import torch
from parity import _hf_step, check_chunked, check_parity, hf_model, rel_err

from edgeports.models import from_pretrained, get_spec


@torch.no_grad()
def check_states(spec, tmp_path, prompt_len: int = 24, decode_steps: int = 4, chunks=None, rtol: float = 1e-4):
    """Our conv and ssm state of every layer vs the transformers cache after a (chunked) prefill and decode."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    hf = hf_model(spec)
    hf.save_pretrained(tmp_path)
    lm = from_pretrained(tmp_path, dtype="float32")
    ids = torch.randint(0, spec.config["vocab_size"], (2, prompt_len), generator=torch.Generator().manual_seed(1))
    state, cache, start = lm.new_state(2, prompt_len + decode_steps), None, 0
    for i, n in enumerate(chunks or [prompt_len]):
        logits, cache = _hf_step(hf, ids[:, start:start + n], cache)
        _, state = lm.prefill(ids[:, start:start + n], state, first=i == 0)
        start += n
    for _ in range(decode_steps):
        nxt = logits.argmax(-1, keepdim=True)
        logits, cache = _hf_step(hf, nxt, cache)
        _, state = lm.decode(nxt, state)
    slots = {s.name: t for s, t in zip(lm.state_layout(2, prompt_len + decode_steps), state, strict=True)}
    errs, kv = {}, 0
    for i, layer in enumerate(cache.layers):
        errs[f"layers.{i}.conv"] = rel_err(slots[f"layers.{i}.conv"], layer.conv_states[0][..., 1:])
        errs[f"layers.{i}.ssm"] = rel_err(slots[f"layers.{i}.ssm"], layer.recurrent_states[0])
        keys = getattr(layer, "keys", None)  # hybrids: the attention's KV cache too
        if keys is not None and keys.numel():
            n = keys.shape[2]
            errs[f"layers.{i}.k"] = rel_err(slots[f"layers.{i}.k"][:, :, :n], keys)
            errs[f"layers.{i}.v"] = rel_err(slots[f"layers.{i}.v"][:, :, :n], layer.values)
            kv += 2
    assert len(errs) == 2 * len(lm.blocks) + kv and max(errs.values()) < rtol, errs
    assert int(slots["pos"]) == prompt_len + decode_steps


def test_prefill_and_decode(tmp_path):
    errs = check_parity("tiny-mamba", tmp_path, prompt_len=24, decode_steps=4)
    assert len(errs) == 5


def test_chunked_prefill_equals_one_shot():
    check_chunked("tiny-mamba", chunks=(1, 7, 32), length=40)


def test_states(tmp_path):
    check_states("tiny-mamba", tmp_path)


@pytest.mark.parametrize("name,millions", [("mamba-130m", 129.1), ("mamba-1.4b", 1372.2), ("mamba2-130m", 129.0),
                                            ("mamba2-1.3b", 1343.8)])
def test_published_sizes(name, millions):
    # both SSM archs at real widths, built on the meta device: parameter counts of the zoo configs
    from edgeports.models import arch_module

    spec = get_spec(name)
    with torch.device("meta"):
        lm = arch_module(spec.arch).build(spec)
    assert abs(lm.num_params() / 1e6 - millions) < 0.1, (name, lm.num_params())
