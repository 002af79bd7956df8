"""fuse_projections: the fused model computes what the unfused one does (prefill and decode), on fresh weights."""

import copy

import pytest
import torch

from edgeports.models import build, get_spec
from edgeports.models.fuse import fuse_projections
from edgeports.models.layers.attention import Attention
from edgeports.models.layers.mlp import GatedMLP


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
