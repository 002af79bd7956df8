"""Timing and peak helpers shared by benchmarks/kernels.py and benchmarks/models.py (GPU only).

Method (see benchmarks/NOTES-kernels.md): device events, warm-up excluded, median of repeats; L2 flushed
between repeats for prefill-size ops (triton.testing.do_bench); small decode-step ops are timed as CUDA-graph
replays rotating over enough input sets to exceed L2, so they read the state from HBM as a model does.
Peaks are measured in the same process: a large device-to-device copy (bytes read + written) and a large
bf16 matrix product.
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path

import torch


def median_ms(fn, *, slow_s: float = 0.25, rep_ms: int = 200, slow_reps: int = 1) -> tuple[float, int]:
    """Median time of fn() in ms and the number of timed runs. Calls slower than `slow_s` are timed
    `slow_reps` times (after one warm-up) with host clocks around a synchronize; the rest with do_bench."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    est = time.perf_counter() - t0
    if est > slow_s or not torch.cuda.is_available():  # (no GPU: a dry run of the script's logic)
        times = [est]
        for _ in range(slow_reps - 1):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2] * 1e3, len(times)
    import triton.testing

    ms = triton.testing.do_bench(fn, warmup=min(25, max(1, int(50 * est * 1e3))), rep=rep_ms,
                                 return_mode="median")
    return float(ms), max(1, int(rep_ms / max(ms, 1e-3)))


def graph_ms(make_call, sets: int, *, reps: int = 20) -> float:
    """Per-call ms of `sets` calls captured in one CUDA graph, each call on its own input set (built by
    make_call(i) -> zero-arg callable), median over replays: no launch overhead, no L2 reuse across calls."""
    calls = [make_call(i) for i in range(sets)]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for c in calls:  # warm up (compiles) outside the capture
            c()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / sets)
    times.sort()
    return times[len(times) // 2]


def graph_each(cases: list, call) -> float:
    """graph_ms of call(case) over the given input sets (one per call in the graph)."""
    return graph_ms(lambda i: (lambda: call(cases[i])), len(cases))


def peaks() -> dict:
    """Copy bandwidth (GB/s, read + write) and bf16 matmul rate (TFLOP/s) measured now, on random data."""
    import triton.testing

    def copy_ms(n):
        src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        return triton.testing.do_bench(lambda: dst.copy_(src), rep=300, return_mode="median")

    def mm_ms(k):
        a = torch.randn(k, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, k, device="cuda", dtype=torch.bfloat16)
        return triton.testing.do_bench(lambda: a @ b, rep=300, return_mode="median")

    n, k = 1 << 30, 8192  # 2 GiB of bf16 each way; an 8192^3 product
    copy_gbs = 2 * n * 2 / copy_ms(n) / 1e6
    mm_tflops = 2 * k ** 3 / mm_ms(k) / 1e9
    torch.cuda.empty_cache()
    props = torch.cuda.get_device_properties(0)
    return dict(copy_gbs=copy_gbs, mm_tflops=mm_tflops, gpu=props.name, sms=props.multi_processor_count,
                torch=torch.__version__, triton=triton.__version__)


def load_peer(sdist: str | None):
    """Build and import mamba-ssm's reference kernels with ../shared/tools/mamba_ssm_peer.py (copied next to the
    sdist). Returns the mamba_ssm module or None (with the reason printed)."""
    if not sdist:
        return None
    try:
        sys.path.insert(0, str(Path(sdist).parent))
        import mamba_ssm_peer

        t0 = time.time()
        mod = mamba_ssm_peer.load(sdist)
        print(f"mamba-ssm peer loaded in {time.time() - t0:.0f} s from {sdist}", flush=True)
        return mod
    except Exception as e:  # noqa: BLE001 - the comparison column is optional; say why it is missing
        print(f"mamba-ssm peer unavailable: {type(e).__name__}: {e}", flush=True)
        return None


def hf_fallback(module: str, name: str):
    """transformers' own torch path of a hub-kernel-wrapped function (the code that runs without mamba-ssm)."""
    import importlib

    return inspect.unwrap(getattr(importlib.import_module(f"transformers.models.{module}"), name))


def kernel_breakdown(fn, reps: int = 3, top: int = 8) -> list[tuple[str, float, int]]:
    """GPU kernels run by fn(): (name, ms per call, launches per call), largest first (torch.profiler)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    agg: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            a = agg.setdefault(e.name, [0.0, 0])
            a[0] += e.device_time_total / 1e3 / reps
            a[1] += 1
    rows = sorted(((k[:60], v[0], round(v[1] / reps)) for k, v in agg.items()), key=lambda r: -r[1])
    return rows[:top]


def fmt_ratio(other_ms: float | None, ms: float) -> str:
    """'3.2x' = the other implementation takes 3.2 times as long as triton."""
    return "-" if other_ms is None else f"{other_ms / ms:.2f}x"
