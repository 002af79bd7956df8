"""Tuning variants of the CUDA `selective_scan` and `causal_conv1d` (exporters/plugins/kernels/) side by side.

Builds the kernels library once per variant (nvcc with the variant's -D tuning macros, in parallel: _variants.py),
loads each through the binding impl="cuda" uses (impl_cuda.using_library), checks each against impl="ref" (float64) on
random inputs at small shapes (odd lengths, chunked and single-pass scans, dstate 5..48, widths 2..4), then
times both ops at mamba-2.8b's layer shape (batch 1, d_inner 5120, dstate 16, conv width 4, silu) per length
and dtype, next to the triton implementation's time from the same run (ratio = variant ms / triton ms; < 1 is
faster than triton) and, for the conv, a device copy of x (its bandwidth floor).

    python benchmarks/plugin_variants.py [--lens 2048,16384] [--dtypes bf16,fp16] [--variants default,lanes4]
                                         [--jobs 8] [--arch 90]
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _variants  # noqa: E402

# name -> nvcc flags. Defaults (selective_scan.cu, causal_conv1d.cu): scan 8 lanes x 2 states per channel at
# dstate 16 (EP_SCAN_LANES), 32-step tiles (EP_SCAN_TILE), 64-thread blocks (EP_SCAN_THREADS), registers uncapped
# (EP_SCAN_MIN_BLOCKS), one pass unless < 4 warps per SM (EP_SCAN_CHUNK_WARPS); conv 16 outputs per thread
# (EP_CONV_VEC; 8 until the H100 run of 2026-11-23, so "tile64+cv16"'s conv side is now the default's). The conv
# flags ride on scan variants: each op's time depends only on its own flags, so one build measures one variant of
# each (the conv columns in results/h100-2026-11-23/13-plugin-variants-scan-conv.txt of the variants without a
# conv flag were measured at 8 outputs per thread).
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "lanes4+cv4": ("-DEP_SCAN_LANES=4", "-DEP_CONV_VEC=4"),  # 4 states per lane: half the warps, fewer shuffles
    "lanes16": ("-DEP_SCAN_LANES=16",),  # 1 state per lane: twice the warps, more per-step overhead
    "tile16": ("-DEP_SCAN_TILE=16",),  # fewer registers, twice the barriers per step
    "tile64+cv16": ("-DEP_SCAN_TILE=64", "-DEP_CONV_VEC=16"),  # 64-step tiles; conv: two 16-byte vectors (default)
    "threads128": ("-DEP_SCAN_THREADS=128",),  # 16 channels per block: fewer B/C re-reads, coarser balance
    "minb8": ("-DEP_SCAN_MIN_BLOCKS=8",),  # registers capped at 128 (more warps fit, a few spills)
    "twopass": ("-DEP_SCAN_CHUNK_WARPS=64", "-DEP_SCAN_CHUNK_TARGET=64"),  # the chunked form, forced
}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# (batch, dim, dstate, seqlen, all optional inputs): a partial last tile, chunked (few channels) and one-pass,
# dstate padded to 16 / 32 / 64
SCAN_SHAPES = [(2, 48, 16, 37, True), (1, 64, 16, 1000, True), (2, 70, 5, 300, False), (1, 40, 48, 700, True),
               (1, 33, 32, 515, True), (3, 600, 16, 64, True), (1, 8, 16, 1, True)]
# (batch, dim, seqlen, width, all optional inputs): aligned and unaligned rows, seqlen < width - 1
CONV_SHAPES = [(2, 40, 33, 4, True), (1, 16, 600, 4, True), (3, 7, 5, 2, False), (1, 9, 300, 3, False),
               (2, 24, 2048, 4, True), (2, 5, 2, 4, True), (1, 3, 64, 6, True)]
# as tests/exporters/test_plugins.py: |err| <= atol * max(1, max |ref|) + rtol * |ref|, (rtol, atol) per dtype
TOL = {"float32": (1e-4, 1e-4), "float16": (3e-3, 3e-3), "bfloat16": (2e-2, 2e-2)}


def _scan_inputs(shape, dtype, seed: int) -> dict:
    """Random selective_scan arguments, drawn as the GPU tests draw them."""
    import torch

    bt, d, n, L, full = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g, device="cuda").to(dt)  # noqa: E731
    delta = r(bt, d, L, dt=torch.float32) * 0.5 - 1
    kw = dict(u=r(bt, d, L), delta=(delta if full else delta.abs() * 0.2).to(dtype),
              A=-torch.exp(r(d, n, dt=torch.float32) * 0.5), B=r(bt, n, L), C=r(bt, n, L))
    if full:
        kw.update(D=r(d, dt=torch.float32), z=r(bt, d, L), delta_bias=r(d, dt=torch.float32) * 0.1,
                  delta_softplus=True, initial_state=r(bt, d, n, dt=torch.float32))
    return kw


def _conv_inputs(shape, dtype, seed: int) -> dict:
    """Random causal_conv1d arguments."""
    import torch

    bt, d, L, w, full = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda").to(dtype)  # noqa: E731
    kw = dict(x=r(bt, d, L), weight=r(d, w))
    if full:
        kw.update(bias=r(d), initial_state=r(bt, d, w - 1), activation="silu")
    return kw


def _err_ratio(got, want, dtype_name: str, state: bool) -> float:
    """Largest error as a multiple of the test's tolerance (> 1 fails; NaN fails too)."""
    rtol, atol = TOL["float32" if state else dtype_name]
    got, want = got.double(), (want if state else want.to(got.dtype)).double()
    if not want.numel():
        return 0.0
    scale = max(1.0, want.abs().max().item())
    return ((got - want).abs() / (atol * scale + rtol * want.abs())).max().item()


@functools.cache
def _check_cases(dtypes: tuple[str, ...]) -> list:
    """(op, dtype name, shape, inputs, float64 reference outputs) of every check: drawn and computed once, for
    all variants."""
    import torch

    from edgeports import kernels

    cases = [("selective_scan", s, _scan_inputs) for s in SCAN_SHAPES] + [
        ("causal_conv1d", s, _conv_inputs) for s in CONV_SHAPES]
    out = []
    for name in dtypes:
        for i, (op, shape, make) in enumerate(cases):
            kw = make(shape, getattr(torch, name), seed=101 + i)
            dbl = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
            out.append((op, name, shape, kw, getattr(kernels, op)(**dbl, impl="ref")))
    return out


def check(lib, dtypes: list[str]) -> str:
    """'ok (...)' or 'FAIL ...': every check shape and dtype of both ops against impl="ref" in float64."""
    from edgeports import kernels
    from edgeports.kernels import impl_cuda

    worst = 0.0
    for op, name, shape, kw, want in _check_cases(tuple(dtypes)):
        with impl_cuda.using_library(lib):
            got = getattr(kernels, op)(**kw, impl="cuda")
        # the scan's state is float32 whatever the inputs; the conv's is x's dtype
        for what, a, b, state in (("y", got[0], want[0], False), ("state", got[1], want[1], op == "selective_scan")):
            ratio = _err_ratio(a, b, name, state)
            worst = max(worst, ratio)
            if not ratio <= 1.0:  # (NaN fails too)
                return f"FAIL {op} {name} {shape} {what}: error {ratio:.3g} x the tolerance"
    return f"ok (largest error {worst:.2f} x the tolerance)"


def _mamba_inputs(op: str, L: int, dtype) -> dict:
    """mamba-2.8b's layer shape, as benchmarks/plugin_kernels.py draws it."""
    import torch

    d, n, dev = 5120, 16, "cuda"
    r = lambda *s, dt=dtype: torch.randn(*s, device=dev).to(dt)  # noqa: E731
    if op == "causal_conv1d":
        return dict(x=r(1, d, L), weight=r(d, 4), bias=r(d), activation="silu")
    return dict(u=r(1, d, L), delta=r(1, d, L), A=-torch.rand(d, n, device=dev) - 0.5, B=r(1, n, L), C=r(1, n, L),
                D=r(d, dt=torch.float32), z=r(1, d, L), delta_bias=r(d, dt=torch.float32), delta_softplus=True)


def main(argv: list[str] | None = None) -> None:
    """Build, check, time and print the variants' table."""
    ap = _variants.parser(__doc__, VARIANTS, DTYPES, lens="2048,16384",
                          dtypes_help=f"timed dtypes, of {', '.join(DTYPES)} (all are checked)")
    args = ap.parse_args(argv)
    sel = _variants.select("plugin_variants", args, VARIANTS, DTYPES)
    libs, has_triton = _variants.start("plugin_variants", args, sel, VARIANTS,
                                       lambda lib: check(lib, list(DTYPES.values())))
    import torch
    from _bench import median_ms

    from edgeports import kernels

    print(_variants.head(["op", "dtype", "L", "triton ms", "copy ms"], libs))
    for op in ("selective_scan", "causal_conv1d"):
        fn = getattr(kernels, op)
        for name in sel.dtypes:
            for L in sel.lens:
                kw = _mamba_inputs(op, L, getattr(torch, name))
                copy = "-"
                if op == "causal_conv1d":  # read + write of x: the floor a memory-bound conv can reach
                    out = torch.empty_like(kw["x"])
                    copy = f"{median_ms(lambda kw=kw, out=out: out.copy_(kw['x']))[0]:.3f}"
                tri, cells = _variants.timed(libs, lambda impl, kw=kw, fn=fn: fn(**kw, impl=impl), has_triton)
                print(_variants.row([op, name, str(L), tri, copy], cells), flush=True)
                del kw


if __name__ == "__main__":
    main()
