"""fuse_projections and fold_constants: the rewritten model computes what the original does (prefill and decode),
on fresh weights."""

import copy

import pytest
import torch

from edgeports.models import build, get_spec
from edgeports.models.fuse import fold_constants, fuse_projections, has_unfolded_constants
from edgeports.models.layers.attention import Attention
from edgeports.models.layers.mamba import FOLDED_CONSTANTS
from edgeports.models.layers.mlp import GatedMLP


def _run(lm, ids, steps=3):
    """Prefill logits, then `steps` greedy decode logits, and the final state."""
    out = []
    with torch.inference_mode():
        logits, state = lm.prefill(ids, lm.new_state(1, 40, "cpu"), first=True)
        out.append(logits)
        for _ in range(steps):
            logits, state = lm.decode(logits.argmax(-1, keepdim=True), state)
            out.append(logits)
    return out, state


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-mamba2", "tiny-falcon-h1", "tiny-zamba2", "tiny-hymba"])
def test_folded_constants_match_parameters(name):
    torch.manual_seed(1)
    lm = build(get_spec(name), dtype="float32", seed=int(torch.randint(0, 2**31, ()).item()))
    with torch.no_grad():  # A_log, D and the dt bias away from their regular init, so a mix-up would show
        for n, p in lm.named_parameters():
            if n.endswith(("A_log", ".D", "dt_bias", "dt_proj.bias")):
                p.add_(torch.randn_like(p) * 0.3)
    folded = copy.deepcopy(lm)
    assert has_unfolded_constants(folded)
    n = fold_constants(folded)
    assert n == sum(1 for m in lm.modules() if isinstance(getattr(m, "A_log", None), torch.nn.Parameter)) > 0
    assert not has_unfolded_constants(folded)
    assert folded.state_dict().keys() == lm.state_dict().keys()  # buffers, not weights
    assert folded.weight_bytes() == lm.weight_bytes()
    ids = torch.randint(0, lm.spec.config["vocab_size"], (1, 23))
    (ref, ref_state), (got, got_state) = _run(lm, ids), _run(folded, ids)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    for a, b in zip(ref_state, got_state, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    # folded models read the buffers, not the parameters, until folded again
    with torch.no_grad():
        for m in folded.modules():
            if isinstance(getattr(m, "A_log", None), torch.nn.Parameter):
                m.A_log.add_(1.0)
    _, stale = _run(folded, ids)
    for a, b in zip(ref_state, stale, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    buffers = [t for n, t in folded.named_buffers() if "folded_" in n]
    fold_constants(folded)
    _, fresh = _run(folded, ids)
    assert any(not torch.allclose(b, a, rtol=1e-3, atol=1e-3) for a, b in zip(ref_state, fresh, strict=True))
    # refolding wrote the same buffers (a captured graph reading them sees the new values)
    assert all(a is b for a, b in zip(buffers, [t for n, t in folded.named_buffers() if "folded_" in n], strict=True))
    # a cast after folding: the bfloat16 buffers lost digits, so the parameters are used, as unfolded
    unfolded = copy.deepcopy(folded)
    for m in unfolded.modules():
        for name in FOLDED_CONSTANTS:
            if hasattr(m, name):
                delattr(m, name)
    (a, _), (b, _) = _run(copy.deepcopy(folded).bfloat16(), ids), _run(unfolded.bfloat16(), ids)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-phi3", "tiny-falcon-h1", "tiny-zamba2", "tiny-hymba"])
def test_fused_model_matches_unfused(name):
    torch.manual_seed(0)
    lm = build(get_spec(name), dtype="float32", seed=int(torch.randint(0, 2**31, ()).item()))
    fused = copy.deepcopy(lm)
    n = fuse_projections(fused)
    unfused_before = sum(isinstance(m, Attention) and not m.fused_qkv or isinstance(m, GatedMLP) and not m.fused
                         for m in lm.modules())
    assert n == unfused_before
    assert all(m.fused_qkv for m in fused.modules() if isinstance(m, Attention))
    assert all(m.fused for m in fused.modules() if isinstance(m, GatedMLP))
    assert fuse_projections(fused) == 0  # idempotent
    assert lm.num_params() == fused.num_params()
    ids = torch.randint(0, lm.spec.config["vocab_size"], (1, 23))
    with torch.inference_mode():
        sa, sb = lm.new_state(1, 40, "cpu"), fused.new_state(1, 40, "cpu")
        (a, sa), (b, sb) = lm.prefill(ids, sa, first=True), fused.prefill(ids, sb, first=True)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        for _ in range(3):
            nxt = a.argmax(-1, keepdim=True)  # [B, 1]
            (a, sa), (b, sb) = lm.decode(nxt, sa), fused.decode(nxt, sb)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        for x, y in zip(sa, sb, strict=True):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)
