"""Time the TensorRT plugins' CUDA kernels (impl "cuda") against the other GPU implementations.

Shapes are the real ones of Mamba-2.8b (d_inner 5120, d_state 16) and Mamba2-2.7b (80 heads x 64, d_state
128, 1 group), batch 1, bfloat16. Prints one table per op: median ms per implementation and its ratio to
"cuda", all measured in this run (CUDA events, warm-up excluded).

    python benchmarks/plugin_kernels.py [--lens 2048,16384] [--reps 10]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from edgeports import kernels

IMPLS = ("cuda", "triton", "torch", "mamba_ssm")


def _time(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _cases(lens: list[int]):
    """(op, label, kwargs-builder) for each benchmarked call."""
    dev, bf = "cuda", torch.bfloat16
    r = lambda *s, dt=bf: torch.randn(*s, device=dev).to(dt)
    for L in lens:
        d, n = 5120, 16
        yield "selective_scan", f"mamba-2.8b L={L}", lambda d=d, n=n, L=L: dict(
            u=r(1, d, L), delta=r(1, d, L), A=-torch.rand(d, n, device=dev) - 0.5, B=r(1, n, L), C=r(1, n, L),
            D=r(d, dt=torch.float32), z=r(1, d, L), delta_bias=r(d, dt=torch.float32), delta_softplus=True)
    for L in lens:
        h, p, n = 80, 64, 128
        yield "ssd_chunk_scan", f"mamba2-2.7b L={L}", lambda h=h, p=p, n=n, L=L: dict(
            x=r(1, L, h, p), dt=r(1, L, h), A=-torch.rand(h, device=dev) - 0.5, B=r(1, L, 1, n), C=r(1, L, 1, n),
            chunk_size=256, D=r(h, dt=torch.float32), z=r(1, L, h, p), dt_bias=r(h, dt=torch.float32),
            dt_softplus=True)
    for label, (h, p, n, expand) in {"mamba-2.8b": (1, 5120, 16, False), "mamba2-2.7b": (80, 64, 128, True)}.items():
        def ssu(h=h, p=p, n=n, expand=expand):
            A = (-torch.rand(h, device=dev))[:, None, None].expand(h, p, n) if expand else -torch.rand(h, p, n, device=dev)
            return dict(state=r(1, h, p, n, dt=torch.float32), x=r(1, h, p), dt=r(1, h, p), A=A, B=r(1, 1, n),
                        C=r(1, 1, n), D=torch.ones(h, p, device=dev), z=r(1, h, p),
                        dt_bias=torch.zeros(h, p, device=dev), dt_softplus=True)
        yield "selective_state_update", f"{label} decode", ssu
    for L in lens:
        yield "causal_conv1d", f"d=5120 W=4 L={L}", lambda L=L: dict(
            x=r(1, 5120, L), weight=r(5120, 4), bias=r(5120), activation="silu")
    yield "causal_conv1d_update", "d=5120 W=4 decode", lambda: dict(
        x=r(1, 5120), conv_state=r(1, 5120, 3), weight=r(5120, 4), bias=r(5120), activation="silu")


def main() -> None:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lens", default="2048,16384")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("plugin_kernels: needs a CUDA GPU")
    avail = kernels.available_impls()
    impls = [i for i in IMPLS if avail.get(i, (False,))[0]]
    print(f"# {torch.cuda.get_device_name()}  impls: {', '.join(impls)}  "
          f"(absent: {', '.join(f'{i} ({avail[i][1]})' for i in IMPLS if i in avail and i not in impls) or '-'})")
    print(f"| op | case | {' | '.join(f'{i} ms' for i in impls)} | {' | '.join(f'{i}/cuda' for i in impls[1:])} |")
    print("|---|---|" + "---|" * (2 * len(impls) - 1))
    for op, label, make in _cases([int(x) for x in args.lens.split(",")]):
        kw = make()
        ms = {}
        for impl in impls:
            try:
                ms[impl] = _time(lambda fn=getattr(kernels, op), kw=kw, impl=impl: fn(**kw, impl=impl), args.reps)
            except Exception as e:  # an impl without this op or shape shows as n/a, the table goes on
                ms[impl] = None
                print(f"<!-- {impl} {op} {label}: {type(e).__name__}: {str(e)[:120]} -->")
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
        ratios = [fmt(ms[i] / ms["cuda"]) if ms[i] is not None and ms.get("cuda") else "n/a" for i in impls[1:]]
        print(f"| {op} | {label} | {' | '.join(fmt(ms[i]) for i in impls)} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    main()
