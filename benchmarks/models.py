"""Whole-model benchmark: mamba-2.8b and mamba2-2.7b (zoo configs, random weights, bf16, batch 1) with
edgeports' triton kernels, edgeports' torch kernels and stock transformers (its torch fallback: mamba-ssm is
not installed), side by side in one run.

    python benchmarks/models.py [--models mamba-2.8b,mamba2-2.7b] [--lens 1k,4k,16k,64k] [--hf-lens 1k]
                                [--torch-max 4096] [--decode 32] [--json out.json]

TTFT = prefill of L tokens to the last position's logits (edgeports: lm.prefill; transformers: forward with
use_cache and logits_to_keep=1), median of repeats after a warm-up (one timed run when a call takes > 0.25 s).
TPOT = mean decode-step time over --decode steps, eager Python loop for both (no CUDA graphs): edgeports
lm.decode after the first length's prefill; transformers (generate(N+1) - generate(1)) / N, greedy, after a
16-token prompt (an SSM's step does not depend on the prompt length).
Ratios are "x times triton's time". Peak = torch allocator peak during the prefill.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import median_ms  # noqa: E402

from edgeports import kernels  # noqa: E402
from edgeports.lens import parse_lens  # noqa: E402
from edgeports.models import arch_module, build, get_spec  # noqa: E402


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_reset():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


@torch.no_grad()
def ours(lm, impl: str, L: int, decode: int, dev) -> dict:
    """TTFT (ms), peak GiB and (when decode > 0) TPOT (ms) with edgeports' LM and kernels `impl`."""
    ids = torch.randint(0, 256, (1, L), device=dev)  # any ids: speed does not depend on them
    with kernels.use(impl):
        state = lm.new_state(1, L + decode + 1)
        _peak_reset()
        ms, _ = median_ms(lambda: lm.prefill(ids, state, first=True))
        out = dict(ttft=ms, peak=_peak_gib())
        if decode:
            _, st = lm.prefill(ids, state, first=True)
            tok = ids[:, -1:]

            def steps():
                s = st
                for _ in range(decode):
                    _, s = lm.decode(tok, s)

            out["tpot"] = median_ms(steps, slow_reps=3)[0] / decode
    return out


def hf_model(spec, dev):
    """transformers' model for the spec, random weights, bf16, built directly on the device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(arch_module(spec.arch).HF_MODEL_TYPE,
                               **{k: v for k, v in spec.config.items() if k != "model_type"})
    with torch.device(dev):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()


@torch.no_grad()
def hf(model, L: int, decode: int, dev) -> dict:
    """TTFT, peak and TPOT of transformers' model (no mamba-ssm: its torch path)."""
    import inspect

    ids = torch.randint(0, 256, (1, L), device=dev)  # any ids: speed does not depend on them
    kw = {"use_cache": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kw["logits_to_keep"] = 1
    _peak_reset()
    ms, _ = median_ms(lambda: model(input_ids=ids, **kw))
    out = dict(ttft=ms, peak=_peak_gib())
    gen = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    prompt = ids[:, :16]  # an SSM's decode step does not depend on the prompt length; a short one keeps
    # the prefill inside generate() negligible next to the steps

    def generate(n):
        return lambda: model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **gen)

    t1 = median_ms(generate(1), slow_reps=3)[0]
    tn = median_ms(generate(decode + 1), slow_reps=3)[0]
    out["tpot"] = (tn - t1) / decode
    return out


def _fmt(x, base=None):
    if x is None:
        return "-"
    return f"{x:.2f}" if base is None else f"{x / base:.2f}x"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mamba-2.8b,mamba2-2.7b")
    ap.add_argument("--lens", default="1k,4k,16k,64k")
    ap.add_argument("--hf-lens", default="1k", help="lengths for transformers (its torch path is slow)")
    ap.add_argument("--torch-max", type=int, default=4096, help="longest L for edgeports' torch kernels")
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--impls", default="triton,torch")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    lens, hf_lens = parse_lens(args.lens), set(parse_lens(args.hf_lens)) if args.hf_lens else set()
    impls = args.impls.split(",")
    results = {}
    for name in args.models.split(","):
        spec = get_spec(name)
        t0 = time.time()
        lm = build(spec, dtype=args.dtype, device=dev)
        print(f"\n{name}: {lm.num_params() / 1e9:.2f} B params, built in {time.time() - t0:.0f} s", flush=True)
        res = {impl: {} for impl in impls}
        for impl in impls:
            for L in lens:
                if impl == "torch" and L > args.torch_max:
                    continue
                try:
                    # decode speed does not depend on the prompt length for SSMs: measured after the first
                    res[impl][L] = ours(lm, impl, L, args.decode if L == lens[0] else 0, dev)
                except Exception as e:  # noqa: BLE001 - OOM or a failure: the cell is empty, the run goes on
                    print(f"  {impl} L={L} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    res[impl][L] = None
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
                print(f"  {impl} L={L}: {res[impl][L]}", flush=True)
        del lm
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        res["hf"] = {}
        if hf_lens:
            model = hf_model(spec, dev)
            for L in sorted(hf_lens):
                try:
                    res["hf"][L] = hf(model, L, args.decode, dev)
                except Exception as e:  # noqa: BLE001 - OOM or a failure: the cell is empty, the run goes on
                    print(f"  hf L={L} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    res["hf"][L] = None
                print(f"  hf L={L}: {res['hf'][L]}", flush=True)
            del model
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
        results[name] = res
        _table(name, res, lens, impls, args.dtype)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


def _table(name, res, lens, impls, dtype):
    base = impls[0]
    others = [i for i in impls[1:]] + ["hf"]
    print(f"\n{name}, batch 1, {dtype}: TTFT ms (prefill L tokens) and TPOT ms (decode), ratios = x {base}'s time")
    print(f"{'L':>7} {base + ' TTFT':>12} {'peak GiB':>9} " + " ".join(f"{o + ' TTFT':>12} {'(ratio)':>8}" for o in others)
          + f" {base + ' TPOT':>11} " + " ".join(f"{o + ' TPOT':>10}" for o in others))
    for L in sorted(set(lens) | set(res["hf"])):
        b = res[base].get(L)
        if b is None:
            print(f"{L:>7} {base} failed")
            continue
        cells = []
        for o in others:
            r = res[o].get(L)
            cells.append(f"{_fmt(r and r['ttft']):>12} {_fmt(r and r['ttft'], b['ttft']):>8}")
        tp = " ".join(f"{_fmt(res[o].get(L) and res[o][L].get('tpot')):>10}" for o in others)
        print(f"{L:>7} {b['ttft']:>12.1f} {b['peak']:>9.2f} " + " ".join(cells) + f" {_fmt(b.get('tpot')):>11} {tp}")


if __name__ == "__main__":
    main()
