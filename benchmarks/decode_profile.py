"""Where a CUDA-graphed compile-JIT decode step spends its time (GPU only): wall time per step, the sum of
its kernels, the decode roofline (weight + state bytes over the copy bandwidth measured in this run), the
kernels per step and the largest kernels, grouped into kinds (gemv, scan/conv, copy, norm/elementwise).

    python benchmarks/decode_profile.py mamba2-2.7b mamba-2.8b --dtype float16 [--layers 8] [--out F.json]
        [--decode-kernels custom,inline] [--gemv auto,inductor]

`--layers N` cuts each model to its first N layers (a quick look; the roofline scales with it).
`--decode-kernels` and `--gemv` profile each model once per combination of values of the compile options of those
names (side by side). The step is
the JitRunner's (runners/compile.py): the numbers are those `benchmarks/backends.py` reports as compile-jit.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import peaks  # noqa: E402

# kernel name -> kind; first match wins (Inductor names fused kernels after the ops they hold)
KINDS = (("scan/conv", r"selective|state_update|conv1d|_ssd_|scan"),
         ("gemv/gemm", r"gemm|gemv|sm90|cutlass|cublas|mm_|_mm|addmm|bmm|red_fused_.*(mm|linear)"),
         ("copy", r"(?<!_to_)copy|memcpy|memset|clone|cat"),  # not Inductor's `_to_copy` (a cast, e.g. in a norm)
         ("norm/elementwise", r"."))


def kind_of(name: str) -> str:
    """The kind of a GPU kernel, from its name (KINDS)."""
    return next(k for k, pattern in KINDS if re.search(pattern, name, re.IGNORECASE))


def profile_model(name: str, dtype: str, layers: int | None, prompt: int, steps: int, copy_gbs: float,
                  top: int, freeze: bool = False, decode_kernels: str = "custom", gemv: str = "auto") -> dict:
    """Build `name` on the GPU, compile it as compile-jit does, decode after a `prompt`-token prefill; return
    the step's timing, roofline share and kernel breakdown."""
    from backends import build_on_gpu
    from torch.profiler import ProfilerActivity, profile

    from edgeports.runners.compile import JitRunner

    lm = build_on_gpu(name, dtype, layers)
    spec = lm.spec
    t0 = time.perf_counter()
    torch.cuda.reset_peak_memory_stats()
    runner = JitRunner(lm, "cuda", batch=1, chunked=False, freeze=freeze, decode_kernels=decode_kernels, gemv=gemv)
    compile_s = time.perf_counter() - t0
    ids = torch.randint(0, spec.config["vocab_size"], (1, prompt), device="cuda")
    runner.prefill(ids, max_len=prompt + 4 * steps + 16)
    runner.decode(5)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    runner.decode(2 * steps)
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) / (2 * steps) * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        runner.decode(steps)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    kernels_ms = sum(e.self_device_time_total for e in events) / steps / 1e3
    state_bytes = lm.state_bytes(1, prompt)  # what backends.py's roofline counts at this length
    roof_ms = (runner.weight_bytes + state_bytes) / (copy_gbs * 1e9) * 1e3
    by_kind: dict[str, list[float]] = {}
    for e in events:
        acc = by_kind.setdefault(kind_of(e.key), [0.0, 0.0])
        acc[0] += e.self_device_time_total / steps / 1e3
        acc[1] += e.count / steps
    largest = sorted(events, key=lambda e: -e.self_device_time_total)[:top]
    return {"model": name, "layers": layers or spec.config.get("num_hidden_layers"), "dtype": dtype,
            "freeze": freeze, "decode_kernels": decode_kernels, "gemv": runner.info["gemv"],
            "weight_gib": round(runner.weight_bytes / 2**30, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "compile_s": round(compile_s, 1), "wall_ms": round(wall_ms, 4), "kernels_ms": round(kernels_ms, 4),
            "roofline_ms": round(roof_ms, 4), "pct_roofline": round(100 * roof_ms / wall_ms, 1),
            "kernels_per_step": round(sum(e.count for e in events) / steps), "cuda_graph": runner.info.get("cuda_graph"),
            "by_kind": {k: {"ms": round(v[0], 4), "per_step": round(v[1])} for k, v in sorted(by_kind.items())},
            "top": [{"ms": round(e.self_device_time_total / steps / 1e3, 4), "per_step": round(e.count / steps),
                     "kernel": e.key[:120]} for e in largest]}


def show(r: dict) -> str:
    """A few lines per model for the console."""
    lines = [f"{r['model']} ({r['layers']} layers, {r['dtype']}, decode kernels {r['decode_kernels']}, gemv {r['gemv']}, "
             f"freeze {r['freeze']}, weights {r['weight_gib']} "
             f"GiB, peak {r['peak_gib']} GiB): {r['wall_ms']:.3f} ms/step wall, kernels "
             f"{r['kernels_ms']:.3f} ms, roofline {r['roofline_ms']:.3f} ms = {r['pct_roofline']}%, "
             f"{r['kernels_per_step']} kernels/step, compile {r['compile_s']} s, graph: {r['cuda_graph']}"]
    lines += [f"  {k:17s} {v['ms']:7.3f} ms  x{v['per_step']}" for k, v in r["by_kind"].items()]
    lines += [f"    {t['ms']:7.3f} ms x{t['per_step']:4d}  {t['kernel']}" for t in r["top"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Profile each model's decode step and print (and optionally write) the breakdown."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--layers", type=int, default=None, help="keep only the first N layers")
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--freeze", action="store_true",
                   help="compile decode with the weights frozen in (--opt freeze=true; off for compile-jit)")
    p.add_argument("--decode-kernels", default="custom",
                   help="comma-separated values of the compile option decode_kernels (custom, inline)")
    p.add_argument("--gemv", default="auto", help="comma-separated values of the compile option gemv (auto, triton, "
                   "inductor)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("decode_profile.py needs a CUDA GPU", file=sys.stderr)
        return 2
    copy_gbs = peaks()["copy_gbs"]
    print(f"copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    from edgeports.exporters.compile import DECODE_KERNELS, GEMV_MODES

    variants, gemvs = args.decode_kernels.split(","), args.gemv.split(",")
    for flag, values, known in (("--decode-kernels", variants, DECODE_KERNELS), ("--gemv", gemvs, GEMV_MODES)):
        if unknown := [v for v in values if v not in known]:
            p.error(f"{flag}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    results = []
    for name, variant, gemv in ((n, v, g) for n in args.models for v in variants for g in gemvs):
        try:
            r = profile_model(name, args.dtype, args.layers, args.prompt, args.steps, copy_gbs,
                              args.top, freeze=args.freeze, decode_kernels=variant, gemv=gemv)
        except Exception as e:  # noqa: BLE001 - one model's failure must not lose the others' profiles
            r = {"model": name, "decode_kernels": variant, "gemv": gemv, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"{name}: {r['error']}", flush=True)
        else:
            print(show(r), flush=True)
        results.append(r)
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps({"copy_gbs": copy_gbs, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
