"""Tuning variants of the CUDA `ssd_chunk_scan` (exporters/plugins/kernels/ssd_chunked.cu) side by side.

Builds the kernels library once per variant (nvcc with the variant's -D tuning macros, builds in parallel),
loads each through the same ctypes binding impl="cuda" uses (impl_cuda.using_library), checks each against
impl="ref" (float64) on random inputs at small shapes (several chunks, odd lengths, headdim 32/64/128), then
times ssd_chunk_scan at mamba2-2.7b's layer shape (batch 1, 80 heads x 64, dstate 128, 1 group) per length and
dtype, next to the triton implementation's time from the same run (ratio = variant ms / triton ms; < 1 is
faster than triton). Then a per-kernel split of each variant at the last length (torch.profiler).

    python benchmarks/ssd_variants.py [--lens 4096,16384] [--dtypes bf16,fp16] [--variants default,q256]
                                      [--jobs 8] [--arch 90] [--no-split]
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _variants  # noqa: E402

# name -> nvcc flags. Defaults (ssd_chunked.cu): chunk Q=128, pass-3 blocks of BM=128 rows (64 until the H100 run
# of 2026-11-23, so "bm128" is now the default) with WCOLS=2 column tiles per warp (16 warps at headdim 64), 8 warps
# in pass 1, 4 state elements per thread in pass 2. The other variants' columns in
# results/h100-2026-11-23/14-ssd-variants.txt were measured with BM=64 under them; run now, they get BM=128.
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "q256": ("-DEP_SSD_Q=256",),  # half the chunk states of pass 1/2 to write and read
    "q256-wc4": ("-DEP_SSD_Q=256", "-DEP_SSD_WCOLS=4"),  # 64-column warp tiles (triton's 64x64 at BM=64)
    "q256-bm128": ("-DEP_SSD_Q=256", "-DEP_SSD_BM=128", "-DEP_SSD_STATE_WARPS=16"),  # 16-warp blocks in 1 and 3
    "wc4": ("-DEP_SSD_WCOLS=4",),  # half the warps per pass-3 block (8 at BM=128)
    "bm128": ("-DEP_SSD_BM=128",),  # one pass-3 block per (chunk, head), 16 warps (now the default)
    "q64": ("-DEP_SSD_Q=64",),  # smaller blocks everywhere, twice the chunk states
    "vec1-sw16": ("-DEP_SSD_PASS_VEC=1", "-DEP_SSD_STATE_WARPS=16"),  # pass 2 scalar (as before); pass 1 16 warps
}
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
# (batch, L, heads, headdim, groups, dstate): odd lengths, a partial last chunk for every Q
CHECK_SHAPES = [(2, 777, 4, 64, 2, 128), (1, 333, 3, 128, 1, 64), (2, 301, 4, 32, 2, 16)]
# as tests/exporters/test_plugins.py: |err| <= tol * (max(1, max |ref|) + |ref|)
TOL = {"bfloat16": 2e-2, "float16": 3e-3}


def _inputs(shape, dtype, seed: int, full: bool = True) -> dict:
    """Random ssd_chunk_scan arguments (all optional inputs when `full`), as the GPU tests draw them."""
    import torch

    bt, L, h, p, ng, n = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g, device="cuda").to(dt)  # noqa: E731
    kw = dict(x=r(bt, L, h, p), dt=(r(bt, L, h, dt=torch.float32) * 0.5 - 1).to(dtype),
              A=-torch.exp(r(h, dt=torch.float32)), B=r(bt, L, ng, n), C=r(bt, L, ng, n), chunk_size=256)
    if full:
        kw.update(D=r(h, dt=torch.float32), z=r(bt, L, h, p), dt_bias=r(h, dt=torch.float32) * 0.1,
                  dt_softplus=True, dt_min=0.001, dt_max=0.5, initial_state=r(bt, h, p, n, dt=torch.float32))
    return kw


@functools.cache
def _case(name: str, i: int):
    """Check case i in dtype `name`: its inputs and impl="ref"'s (y, final state) in float64, computed once."""
    import torch

    from edgeports import kernels

    kw = _inputs(CHECK_SHAPES[i], getattr(torch, name), seed=11 + i)
    dbl = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    return kw, kernels.ssd_chunk_scan(**dbl, impl="ref")


def check(lib, dtypes: list[str]) -> str:
    """'ok (...)' or 'FAIL ...': each check shape and dtype against impl="ref" in float64."""
    import torch

    from edgeports import kernels
    from edgeports.kernels import impl_cuda

    worst = 0.0
    for name in dtypes:
        dtype = getattr(torch, name)
        for i, shape in enumerate(CHECK_SHAPES):
            kw, (ey, ehT) = _case(name, i)
            with impl_cuda.using_library(lib):
                y, hT = kernels.ssd_chunk_scan(**kw, impl="cuda")
            for got, want, what in ((y, ey.to(dtype), "y"), (hT, ehT, "state")):
                got, want = got.double(), want.double()
                scale = max(1.0, want.abs().max().item())
                ratio = ((got - want).abs() / (TOL[name] * (scale + want.abs()))).max().item()
                worst = max(worst, ratio)
                if not ratio <= 1.0:  # (NaN fails too)
                    return f"FAIL {name} {shape} {what}: error {ratio:.3g} x the tolerance"
    return f"ok (largest error {worst:.2f} x the tolerance)"


def _mamba2_inputs(L: int, dtype) -> dict:
    """mamba2-2.7b's layer shape, as benchmarks/plugin_kernels.py draws it."""
    import torch

    h, p, n, dev = 80, 64, 128, "cuda"
    r = lambda *s, dt=dtype: torch.randn(*s, device=dev).to(dt)  # noqa: E731
    return dict(x=r(1, L, h, p), dt=r(1, L, h), A=-torch.rand(h, device=dev) - 0.5, B=r(1, L, 1, n),
                C=r(1, L, 1, n), chunk_size=256, D=r(h, dt=torch.float32), z=r(1, L, h, p),
                dt_bias=r(h, dt=torch.float32), dt_softplus=True)


def main(argv: list[str] | None = None) -> None:
    """Build, check, time and print the variants' table."""
    ap = _variants.parser(__doc__, VARIANTS, DTYPES, lens="4096,16384")
    ap.add_argument("--no-split", action="store_true", help="skip the per-kernel split (torch.profiler)")
    args = ap.parse_args(argv)
    sel = _variants.select("ssd_variants", args, VARIANTS, DTYPES)
    dtypes, lens = list(sel.dtypes), list(sel.lens)
    libs, has_triton = _variants.start("ssd_variants", args, sel, VARIANTS, lambda lib: check(lib, dtypes))
    import torch
    from _bench import kernel_breakdown

    from edgeports import kernels
    from edgeports.kernels import impl_cuda

    print(_variants.head(["dtype", "L", "triton ms"], libs))
    for name in dtypes:
        for L in lens:
            kw = _mamba2_inputs(L, getattr(torch, name))
            tri, cells = _variants.timed(libs, lambda impl, kw=kw: kernels.ssd_chunk_scan(**kw, impl=impl), has_triton)
            print(_variants.row([name, str(L), tri], cells), flush=True)
            del kw
    if args.no_split or not libs:
        return
    L, dtype = lens[-1], getattr(torch, dtypes[0])
    print(f"\nper-kernel ms at L={L} {dtypes[0]} (torch.profiler)")
    kw = _mamba2_inputs(L, dtype)
    for vname, lib in libs.items():
        with impl_cuda.using_library(lib):
            rows = kernel_breakdown(lambda: kernels.ssd_chunk_scan(**kw, impl="cuda"), top=6)
        print(f"  {vname}: " + ", ".join(f"{_short(k)} {ms:.3f}" for k, ms, _ in rows))


def _short(kernel: str) -> str:
    """'ssd_output_kernel' of a demangled 'void ep::(anonymous namespace)::ssd_output_kernel<...>(...)'."""
    short = kernel.replace("(anonymous namespace)::", "").split("(")[0].split("<")[0]
    return short.split("::")[-1].replace("void ", "") or kernel


if __name__ == "__main__":
    main()
