"""The decode step's projections, one weight shape at a time (GPU only): edgeports::gemv's Triton kernel at its
configured launch (`triton_gemv.config_for`) and at a sweep of others, against cuBLAS (F.linear) and Inductor's
lowering of the M=1 matmul (what compile-jit's decode used before edgeports::gemv: a reduction tuned by
coordinate descent). Each time is a CUDA-graphed run of calls over enough copies of the weight to overflow
the L2 cache (decode reads every weight from HBM), reported as µs per call and % of the copy bandwidth
measured in this run.

    python benchmarks/gemv.py [--models mamba-2.8b,mamba2-2.7b,llama-3.2-1b] [--dtype float16] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import peaks  # noqa: E402

L2_OVERFLOW_BYTES = 400 * 2**20  # several times an H100's 50 MB L2
CALLS = 24


def weight_shapes(name: str, dtype: str) -> list[tuple[str, int, int]]:
    """(projection name, N, K) of each distinct projection of `name`'s decode step (one layer, fused as the
    compile backend fuses them, and the head)."""
    from backends import build_on_gpu

    from edgeports.models.fuse import fuse_projections

    lm = build_on_gpu(name, dtype, layers=1)
    fuse_projections(lm)
    seen: dict[tuple[int, int], str] = {}
    for path, m in lm.named_modules():
        if isinstance(m, nn.Linear) and m.weight.shape not in seen:
            seen[tuple(m.weight.shape)] = path.split(".")[-1]
    del lm
    torch.cuda.empty_cache()
    return [(label, n, k) for (n, k), label in seen.items()]


def time_us(fn, weights: list[torch.Tensor], x: torch.Tensor) -> float:
    """µs per call of fn(x, W) over the rotating weight copies, replayed from one CUDA graph."""
    for w in weights[:2]:
        fn(x, w)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(CALLS):
            fn(x, weights[i % len(weights)])
    graph.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) * 1e3 / CALLS)
    return best


def candidates(n: int, k: int):
    """The launch configurations swept per shape."""
    from edgeports.kernels.triton_gemv import GemvConfig

    for bn in (1, 2, 4, 8, 16):
        for bk in (256, 512, 1024):
            for warps in (4, 8):
                if bn * bk <= 8192 and bk <= max(256, k):
                    yield GemvConfig(bn, bk, warps)


def bench_shape(label: str, n: int, k: int, dtype: torch.dtype, copy_gbs: float, sweep: bool) -> dict:
    """Every variant for one [n, k] weight."""
    from edgeports.kernels import triton_gemv

    nbytes = n * k * dtype.itemsize
    weights = [torch.randn(n, k, device="cuda", dtype=dtype) / k ** 0.5
               for _ in range(max(2, -(-L2_OVERFLOW_BYTES // nbytes)))]
    x = torch.randn(1, 1, k, device="cuda", dtype=dtype)
    ref = F.linear(x.float(), weights[0].float())
    roof_us = nbytes / (copy_gbs * 1e3)  # the decode roofline's rate: bytes over the copy bandwidth

    def pct(us):
        return round(100 * roof_us / us, 1)

    row = {"proj": label, "n": n, "k": k, "mb": round(nbytes / 1e6, 2), "roof_us": round(roof_us, 2)}
    err = (triton_gemv.gemv(x, weights[0]).float() - ref).abs().max().item() / ref.abs().max().item()
    row["triton_rel_err"] = float(f"{err:.2e}")
    row["cublas_us"] = time_us(F.linear, weights, x)
    inductor = torch.compile(lambda x, w: F.linear(x, w), options={"coordinate_descent_tuning": True})
    row["inductor_us"] = time_us(inductor, weights, x)
    cfg = triton_gemv.config_for(n, k)
    row["config"] = [cfg.block_n, cfg.block_k, cfg.warps]
    row["triton_us"] = time_us(lambda x, w: triton_gemv.gemv(x, w, None, cfg), weights, x)
    if sweep:
        swept = {}
        for c in candidates(n, k):
            swept[c] = time_us(lambda x, w, c=c: triton_gemv.gemv(x, w, None, c), weights, x)
        best = min(swept, key=swept.get)
        row["best_config"], row["best_us"] = [best.block_n, best.block_k, best.warps], swept[best]
        row["sweep"] = {f"{c.block_n}x{c.block_k}/w{c.warps}": round(t, 2) for c, t in swept.items()}
    for key in ("cublas", "inductor", "triton", "best"):
        if f"{key}_us" in row:
            row[f"{key}_us"] = round(row[f"{key}_us"], 2)
            row[f"{key}_pct"] = pct(row[f"{key}_us"])
    del weights
    torch.cuda.empty_cache()
    return row


def _cell(row: dict, key: str) -> str:
    return f"{row[key + '_us']:6.2f} ({row[key + '_pct']:4.1f}%)" if key + "_us" in row else "-"


def main(argv=None) -> int:
    """Benchmark each model's projection shapes and print one table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mamba-2.8b,mamba2-2.7b,llama-3.2-1b")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--no-sweep", action="store_true", help="only the configured launch")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gemv.py needs a CUDA GPU", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    copy_gbs = peaks()["copy_gbs"]
    print(f"copy bandwidth {copy_gbs:.0f} GB/s; % = weight bytes over it / time (the decode roofline's share; a "
          "read-only stream can pass 100%)", flush=True)
    print(f"{'model':13s} {'proj':12s} {'N':>6s} {'K':>5s} {'MB':>6s} | {'cublas':>13s} {'inductor':>13s} "
          f"{'triton':>13s} {'config':>15s} | {'best':>13s} {'best config':>15s}", flush=True)
    rows, shapes = [], set()
    for model in args.models.split(","):
        for label, n, k in weight_shapes(model, args.dtype):
            if (n, k) in shapes:
                continue
            shapes.add((n, k))
            r = {"model": model, **bench_shape(label, n, k, dtype, copy_gbs, not args.no_sweep)}
            rows.append(r)
            print(f"{model:13s} {label:12s} {n:6d} {k:5d} {r['mb']:6.1f} | {_cell(r, 'cublas'):>13s} "
                  f"{_cell(r, 'inductor'):>13s} {_cell(r, 'triton'):>13s} {str(r['config']):>15s} | "
                  f"{_cell(r, 'best'):>13s} {str(r.get('best_config', '-')):>15s}  err {r['triton_rel_err']}",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"copy_gbs": copy_gbs, "dtype": args.dtype, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
