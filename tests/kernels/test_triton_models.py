"""Whole models give the same logits and states with the triton kernels as with the torch kernels (GPU).

Prefill (spanning several SSD chunks) then decode steps, the same token ids for both implementations, fresh
random weights. Tiny zoo models of every SSM-bearing arch in float32 (tight tolerance), and the real widths of
mamba-2.8b and mamba2-2.7b in bfloat16 with the depth cut to 2 layers (the per-layer kernels are what
differs; 64 layers would only repeat them).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from edgeports import kernels
from edgeports.errors import EdgeportsError
from edgeports.models import arch_module, build, get_spec, zoo_names

SSM_TINY = [n for n in zoo_names() if n.startswith("tiny-") and get_spec(n).family in ("ssm", "hybrid")]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all()
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _spec(name: str, layers: int | None):
    spec = get_spec(name)
    try:
        arch_module(spec.arch)
    except EdgeportsError:
        pytest.skip(f"arch {spec.arch!r} has no implementation yet")
    return spec if layers is None else dataclasses.replace(spec, config=dict(spec.config, num_hidden_layers=layers))


@torch.no_grad()
def _run(lm, ids: torch.Tensor, steps: torch.Tensor, impl: str):
    with kernels.use(impl):
        state = lm.new_state(ids.shape[0], ids.shape[1] + steps.shape[1])
        logits, state = lm.prefill(ids, state, first=True)
        out = [logits]
        for i in range(steps.shape[1]):
            logits, state = lm.decode(steps[:, i:i + 1], state)
            out.append(logits)
    return out, state


@pytest.mark.gpu
@pytest.mark.parametrize("name,layers,dtype,L,tol", [
    *[(n, None, torch.float32, 150, 1e-4) for n in SSM_TINY],
    ("mamba-2.8b", 2, torch.bfloat16, 600, 3e-2),
    ("mamba2-2.7b", 2, torch.bfloat16, 600, 3e-2),
])
def test_triton_model_matches_torch(name, layers, dtype, L, tol):
    from edgeports.kernels import impl_triton

    ok, reason = impl_triton.available()
    if not ok:
        pytest.skip(reason)
    spec = _spec(name, layers)
    lm = build(spec, dtype=dtype, device="cuda")
    gen = torch.Generator().manual_seed(1)
    vocab = spec.config["vocab_size"]
    ids = torch.randint(0, vocab, (2, L), generator=gen).cuda()
    steps = torch.randint(0, vocab, (2, 3), generator=gen).cuda()
    out_t, state_t = _run(lm, ids, steps, "triton")
    out_r, state_r = _run(lm, ids, steps, "torch")
    for i, (a, b) in enumerate(zip(out_t, out_r, strict=True)):
        assert _rel(a, b) < tol, f"logits of step {i}: {_rel(a, b):.2e}"
    for a, b in zip(state_t, state_r, strict=True):
        if a.is_floating_point():
            assert _rel(a, b) < tol
        else:
            assert torch.equal(a, b)
