"""edgeports::gemv and RowGemvs (edgeports/kernels/gemv.py) on the CPU, where the op is F.linear: which calls
are routed to it in eager, under torch.compile and under torch.export, and the compile backend's `gemv` option.
The Triton kernel itself: tests/kernels/test_triton.py (interpreter on the CPU, the GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeports.errors import EdgeportsError
from edgeports.exporters import compile as cexport
from edgeports.exporters.base import ExportOptions
from edgeports.kernels.gemv import RowGemvs, gemv
from edgeports.models import build, get_spec
from edgeports.models.fuse import fold_constants, fuse_projections


class TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 8, bias=False)
        self.c = nn.Parameter(torch.randn(5, 8))

    def forward(self, x):
        with RowGemvs():
            h = self.b(torch.relu(self.a(x)))
            return h @ self.c.t(), h @ self.c.t().contiguous()  # the second: not a transposed weight


def _targets(graph: torch.fx.Graph) -> list[str]:
    return [str(n.target) for n in graph.nodes if n.op == "call_function"]


def test_row_gemvs_route_one_row_linears_only():
    """One-row projections (F.linear, x @ W.t()) become edgeports::gemv nodes with the same values; a
    prefill-shaped call, or a matmul by a weight not laid out [N, K], stays as it is."""
    m = TwoLinears().requires_grad_(False)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm.graph)
        return gm

    one, many = torch.randn(1, 1, 8), torch.randn(1, 5, 8)
    for x, gemvs in ((one, 3), (many, 0)):
        torch._dynamo.reset()
        y = torch.compile(m, fullgraph=True, backend=record)(x)
        assert sum("edgeports.gemv" in t for t in _targets(graphs[-1])) == gemvs
        h = m.b(torch.relu(m.a(x)))
        torch.testing.assert_close(y, (h @ m.c.t(), h @ m.c.t()), rtol=1e-6, atol=1e-6)
    ep = torch.export.export(m, (one,), strict=False)
    assert _targets(ep.graph).count("edgeports.gemv.default") == 3


def test_gemv_refuses_several_rows():
    with pytest.raises(EdgeportsError, match="one activation row"):
        gemv(torch.randn(2, 8), torch.randn(4, 8))
    assert torch.equal(gemv(torch.ones(1, 1, 3), torch.eye(3)), torch.ones(1, 1, 3))


@pytest.mark.parametrize("name, fused_norms", [("tiny-mamba", 2), ("tiny-llama", 0), ("tiny-mamba2", 4)])
def test_decode_program_with_gemvs(name, fused_norms):
    """A decode program traced with gemvs runs every projection (each Linear, the head) as edgeports::gemv;
    an SSM block's norm and in_proj as one edgeports::rms_norm_gemv (its residual add inside out_proj's), as
    Mamba2's gated norm and out_proj; no other norm is left in the program but the final one; and it computes
    what the program without them does."""
    lm = build(get_spec(name), dtype="float32", seed=3).requires_grad_(False).eval()
    fuse_projections(lm)
    fold_constants(lm)
    linears = sum(isinstance(m, nn.Linear) for m in lm.modules())  # Mamba's dt_proj: x @ W.t() (no bias)
    plain = cexport.export_program(lm, "decode", 1, 32)
    routed = cexport.export_program(lm, "decode", 1, 32, gemvs=True)
    assert _targets(routed.graph).count("edgeports.gemv.default") == linears - fused_norms
    assert _targets(routed.graph).count("edgeports.rms_norm_gemv.default") == fused_norms
    assert not {"edgeports.gemv.default", "edgeports.rms_norm_gemv.default"} & set(_targets(plain.graph))
    assert cexport.graph_ops(routed)["edgeports::gemv"] == linears - fused_norms
    rsqrts = [_targets(p.graph).count("aten.rsqrt.default") for p in (plain, routed)]
    assert rsqrts[0] - rsqrts[1] == fused_norms  # each folded norm is a norm the program no longer computes
    ids, state = cexport.example_inputs(lm, "decode", 1, 32, torch.device("cpu"))
    s1, s2 = [t.clone() for t in state], [t.clone() for t in state]
    torch.testing.assert_close(routed.module()(ids, *s1), plain.module()(ids, *s2), rtol=1e-5, atol=1e-5)
    for a, b in zip(s1, s2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_rms_norm_gemv_is_norm_then_linear():
    """The op's CPU form against GatedRMSNorm (no gate, one group) and F.linear; several rows refused."""
    from edgeports.kernels.gemv import rms_norm_gemv
    from edgeports.models.layers.norm import GatedRMSNorm

    norm = GatedRMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    assert norm.is_plain_rms() and not GatedRMSNorm(24, group_size=8).is_plain_rms()
    x, w, b = torch.randn(1, 1, 24), torch.randn(10, 24), torch.randn(10)
    torch.testing.assert_close(rms_norm_gemv(x, norm.weight, norm.eps, w, b), F.linear(norm(x), w, b))
    r = torch.randn(1, 1, 10)  # a residual added in
    torch.testing.assert_close(rms_norm_gemv(x, norm.weight, norm.eps, w, b, residual=r), r + F.linear(norm(x), w, b))
    torch.testing.assert_close(gemv(x, w, b, residual=r), r + F.linear(x, w, b))
    # result dtypes: the weight's (a float32 x, e.g. a residual stream, normed into bf16 weights), else the residual's
    assert rms_norm_gemv(x, norm.weight, norm.eps, w.bfloat16()).dtype == torch.bfloat16
    assert gemv(x.bfloat16(), w.bfloat16(), residual=r).dtype == torch.float32
    with pytest.raises(EdgeportsError, match="the residual has 9 elements, the projection 10 outputs"):
        gemv(x, w, b, residual=torch.randn(9))
    with pytest.raises(EdgeportsError, match="one activation row"):
        rms_norm_gemv(torch.randn(1, 2, 24), norm.weight, 1e-5, w)


def test_gemv_option():
    """gemv=auto is Inductor's lowering off CUDA; gemv=triton there is one actionable error; bad values refused."""
    cpu = torch.device("cpu")
    assert not cexport.row_gemvs("auto", cpu) and not cexport.row_gemvs("inductor", cpu)
    with pytest.raises(EdgeportsError, match="gemv=triton needs a CUDA device"):
        cexport.row_gemvs("triton", cpu)
    assert cexport.gemv_of(ExportOptions()) == "auto"
    with pytest.raises(EdgeportsError, match="gemv must be one of auto, triton, inductor"):
        cexport.gemv_of(ExportOptions(extra=(("gemv", "cublas"),)))


def test_inplace_step_refuses_gemvs_outside_decode():
    with pytest.raises(ValueError, match="only the decode program"):
        cexport.InPlaceStep(build(get_spec("tiny-llama"), dtype="float32"), "prefill", gemvs=True)


def test_cpu_export_with_gemv_triton_says_why(tmp_path):
    options = ExportOptions(dtype="float32", max_len=16, extra=(("gemv", "triton"),))
    with pytest.raises(EdgeportsError, match="needs a CUDA device") as err:
        cexport.export(get_spec("tiny-llama"), tmp_path / "a", options)
    assert "\n" not in str(err.value)
    assert F.linear is torch.nn.functional.linear  # no mode left active
