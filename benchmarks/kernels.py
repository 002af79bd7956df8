"""SSM kernel benchmark: edgeports' triton kernels against the torch implementation, transformers' own torch
fallback and mamba-ssm's kernels, at the layer shapes of mamba-2.8b and mamba2-2.7b (zoo configs), batch 1,
bfloat16, prefill L = 1k..64k and the decode step. Everything in one run, next to the copy-bandwidth and
bf16-matmul peaks measured in the same run.

    python benchmarks/kernels.py [--lens 1k-64k] [--peer .peer/mamba_ssm-2.3.2.post1.tar.gz] [--json out.json]
                                 [--sweep] [--hf-max 4096] [--torch-max 16384]

Columns: ms = median time of the triton kernel; GB/s and %copy = the fewest bytes the op must move (inputs read
once, outputs written once) over that time, against the measured copy peak; TFLOP/s and %mm = useful FLOPs over
time against the measured bf16 matmul peak; then each other implementation's time as a multiple of triton's
("2.0x" = it takes twice as long). "-" = not run (over --hf-max/--torch-max, unavailable, or out of memory).
mamba-ssm's causal-conv1d package is not built by the peer, so conv rows have no mamba-ssm column.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import fmt_ratio, graph_each, hf_fallback, kernel_breakdown, load_peer, median_ms, peaks  # noqa: E402

from edgeports import kernels  # noqa: E402
from edgeports.lens import parse_lens  # noqa: E402
from edgeports.models.spec import get_spec  # noqa: E402

BF = torch.bfloat16
DEV = "cuda"


def _r(*shape, dtype=BF):
    return torch.randn(*shape, device=DEV).to(dtype)


# ---- problem builders: realistic layouts (views where the models pass views) ----------------------------
def mamba1_scan(cfg, L):
    D, N, R = cfg["intermediate_size"], cfg["state_size"], cfg["time_step_rank"]
    x_dbl = _r(1, L, R + 2 * N)  # x_proj output; B and C are strided views of it, as in the models
    A = -torch.arange(1, N + 1, device=DEV, dtype=torch.float32).repeat(D, 1) * (0.5 + torch.rand(D, N, device=DEV))
    return dict(u=_r(1, D, L), delta=(0.5 * _r(1, D, L)), A=A, B=x_dbl[:, :, R:R + N].transpose(1, 2),
                C=x_dbl[:, :, R + N:].transpose(1, 2), D=torch.ones(D, device=DEV), z=_r(1, D, L),
                delta_bias=torch.randn(D, device=DEV) - 3, delta_softplus=True)


def mamba2_ssd(cfg, L):
    H, P, N, G = cfg["num_heads"], cfg["head_dim"], cfg["state_size"], cfg["n_groups"]
    xbc = _r(1, L, H * P + 2 * G * N)  # conv output; x, B, C are views of it, as in the models
    return dict(x=xbc[..., :H * P].view(1, L, H, P), dt=_r(1, L, H), A=-torch.rand(H, device=DEV) * 8 - 1,
                B=xbc[..., H * P:H * P + G * N].view(1, L, G, N), C=xbc[..., H * P + G * N:].view(1, L, G, N),
                chunk_size=cfg["chunk_size"], D=torch.ones(H, device=DEV), z=None,
                dt_bias=torch.randn(H, device=DEV) - 3, dt_softplus=True)


def decode_case(H, P, N, G, bt, mamba2):
    A = (-torch.rand(H, device=DEV) - 0.5)[:, None, None].expand(H, P, N) if mamba2 else \
        -torch.rand(H, P, N, device=DEV) * 16
    D = torch.ones(H, device=DEV)[:, None].expand(H, P) if mamba2 else torch.ones(H, P, device=DEV)
    bias = (torch.randn(H, device=DEV) - 3)[:, None].expand(H, P) if mamba2 else torch.randn(H, P, device=DEV) - 3
    return dict(state=_r(bt, H, P, N, dtype=torch.float32), x=_r(bt, H, P), dt=_r(bt, H, P), A=A, B=_r(bt, G, N),
                C=_r(bt, G, N), D=D, z=_r(bt, H, P), dt_bias=bias, dt_softplus=True)


# ---- the competitors, each a zero-argument callable (None = not applicable here) ---------------------------
def scan_impls(kw, L, args, peer):
    out = {"triton": lambda: kernels.selective_scan(**kw, impl="triton")}
    out["torch"] = (lambda: kernels.selective_scan(**kw, impl="torch")) if L <= args.torch_max else None
    if peer is not None:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        out["mamba_ssm"] = lambda: selective_scan_fn(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"],
                                                     kw["delta_bias"], True, return_last_state=True)
    hf = hf_fallback("mamba.modeling_mamba", "mamba_selective_scan")
    out["hf"] = (lambda: hf(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"], kw["delta_bias"], True,
                            return_last_state=True)) if L <= args.hf_max else None
    return out


def ssd_impls(kw, L, args, peer):
    out = {"triton": lambda: kernels.ssd_chunk_scan(**kw, impl="triton")}
    out["torch"] = (lambda: kernels.ssd_chunk_scan(**kw, impl="torch")) if L <= args.torch_max else None
    common = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], kw["chunk_size"])
    if peer is not None:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        out["mamba_ssm"] = lambda: mamba_chunk_scan_combined(*common, D=kw["D"], dt_bias=kw["dt_bias"], dt_softplus=True,
                                                             return_final_states=True)
    hf = hf_fallback("mamba2.modeling_mamba2", "mamba2_chunk_scan")
    out["hf"] = (lambda: hf(*common, D=kw["D"], dt_bias=kw["dt_bias"], dt_softplus=True,
                            return_final_states=True)) if L <= args.hf_max else None
    return out


def conv_impls(x, w, b, L, args):
    out = {"triton": lambda: kernels.causal_conv1d(x, w, b, activation="silu", impl="triton")}
    out["torch"] = (lambda: kernels.causal_conv1d(x, w, b, activation="silu", impl="torch")) if L <= args.torch_max \
        else None
    hf = hf_fallback("mamba.modeling_mamba", "causal_conv1d_fn")
    out["hf"] = lambda: hf(x, w, b, activation="silu")
    return out


def decode_update_row(pk, peer, bt, H, P, N, G, mamba2):
    """selective_state_update at batch bt, timed as graph replays over enough input sets to exceed L2."""
    state_bytes = bt * H * P * N * 4
    cases = [decode_case(H, P, N, G, bt, mamba2) for _ in range(min(256, max(2, math.ceil(200e6 / state_bytes))))]
    t = {"triton": graph_each(cases, lambda c: kernels.selective_state_update(**c, impl="triton")),
         "torch": graph_each(cases, lambda c: kernels.selective_state_update(**c, impl="torch"))}
    if peer is not None:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as ms_ssu

        t["mamba_ssm"] = graph_each(cases, lambda c: ms_ssu(c["state"], c["x"], c["dt"], c["A"], c["B"], c["C"], c["D"],
                                                            c["z"], c["dt_bias"], True))
    if mamba2:
        hf = hf_fallback("mamba2.modeling_mamba2", "mamba2_selective_state_update")
        t["hf"] = graph_each(cases, lambda c: hf(c["state"], c["x"], c["dt"], c["A"], c["B"], c["C"], c["D"],
                                                 c["dt_bias"], True, c["z"]))
    else:  # transformers' Mamba1 step takes [Bt,D,N] (no head axis)
        hf = hf_fallback("mamba.modeling_mamba", "mamba_selective_state_update")
        t["hf"] = graph_each(cases, lambda c: hf(c["state"][:, 0], c["x"][:, 0], c["dt"][:, 0], c["A"][0], c["B"][:, 0],
                                                 c["C"][:, 0], c["D"][0], c["dt_bias"][0], True, c["z"][:, 0]))
    nb = 2 * state_bytes + bt * H * P * 2 * 4
    return row("selective_state_update", f"decode b={bt}", t, nb, 7 * bt * H * P * N, pk,
               f"state {state_bytes / 2**20:.1f} MiB, {len(cases)} sets/graph")


def decode_conv_row(pk, bt, dim, sets=32):
    """causal_conv1d_update (width 4) at batch bt, graph replays over `sets` input sets."""
    cases = [(_r(bt, dim), _r(bt, dim, 3), _r(dim, 4), _r(dim)) for _ in range(sets)]
    hf = hf_fallback("mamba.modeling_mamba", "causal_conv1d_update")
    t = {"triton": graph_each(cases, lambda c: kernels.causal_conv1d_update(*c, activation="silu", impl="triton")),
         "torch": graph_each(cases, lambda c: kernels.causal_conv1d_update(*c, activation="silu", impl="torch")),
         "hf": graph_each(cases, lambda c: hf(c[0][:, :, None], c[1], c[2], c[3], "silu"))}
    return row("causal_conv1d_update", f"decode b={bt}", t, bt * dim * 2 * (2 + 2 * 3), bt * dim * 8, pk)


def time_all(impls) -> dict:
    res = {}
    for name, fn in impls.items():
        if fn is None:
            res[name] = None
            continue
        try:
            res[name] = median_ms(fn)[0]
        except torch.cuda.OutOfMemoryError:
            res[name] = None
        torch.cuda.empty_cache()
    return res


def row(op, label, times, nbytes, flops, pk, extra=""):
    ms = times["triton"]
    gbs, tfl = nbytes / ms / 1e6, flops / ms / 1e9
    return dict(op=op, label=label, ms=ms, gbs=gbs, pct_copy=100 * gbs / pk["copy_gbs"], tflops=tfl,
                pct_mm=100 * tfl / pk["mm_tflops"], times=times, extra=extra)


def print_table(title, rows):
    print(f"\n{title}")
    print(f"{'op':<24}{'case':<14}{'triton ms':>10}{'GB/s':>8}{'%copy':>7}{'TFLOP/s':>9}{'%mm':>6}"
          f"{'torch':>9}{'hf':>9}{'mamba_ssm':>10}  note")
    for r in rows:
        t = r["times"]
        print(f"{r['op']:<24}{r['label']:<14}{r['ms']:>10.4f}{r['gbs']:>8.0f}{r['pct_copy']:>6.1f}%{r['tflops']:>9.2f}"
              f"{r['pct_mm']:>5.1f}%{fmt_ratio(t.get('torch'), r['ms']):>9}{fmt_ratio(t.get('hf'), r['ms']):>9}"
              f"{fmt_ratio(t.get('mamba_ssm'), r['ms']):>10}  {r['extra']}")


def gemm_ms(L, shapes):
    """Median ms of the layer's projections (bf16 matmuls [L,k] @ [k,n])."""
    total = 0.0
    for k, n in shapes:
        a, b = _r(L, k), _r(k, n)
        total += median_ms(lambda a=a, b=b: a @ b)[0]
    return total


def _show_breakdown(label, fn):
    print(f"  kernels of {label}:")
    for name, ms, n in kernel_breakdown(fn):
        print(f"    {ms:8.4f} ms  x{n:<4} {name}")


def sweep(m1, m2, L, peer, parts):
    """Block-size variants of the kernels at one length and the per-kernel time split (printed; the defaults
    come from here)."""
    print(f"\nconfig sweep at L={L} (ms)")
    if "scan" in parts:
        sweep_scan(m1, L)
    if "ssd" in parts:
        sweep_ssd(m2, L, peer)
    if "conv" in parts:
        sweep_conv(m1, L)
    if "update" in parts:
        sweep_update()


def sweep_scan(m1, L):
    from edgeports.kernels import triton_scan

    kw = mamba1_scan(m1, L)
    for bd, bt, nw, v1 in [(8, 8, 1, True), (4, 8, 1, True), (4, 16, 1, True), (2, 16, 1, True), (8, 16, 1, True),
                           (4, 8, 1, False), (8, 8, 1, False), (4, 16, 1, False)]:
        cfg = dict(BLOCK_D=bd, BLOCK_T=bt, num_warps=nw, v1=v1)
        ms = median_ms(lambda cfg=cfg: triton_scan.selective_scan(**kw, config=dict(cfg)))[0]
        print(f"  selective_scan {cfg}: {ms:.4f}")
    _show_breakdown("selective_scan triton", lambda: kernels.selective_scan(**kw, impl="triton"))


def sweep_ssd(m2, L, peer):
    from edgeports.kernels import triton_ssd

    kw2 = mamba2_ssd(m2, L)
    for T, bm, bk, nw, ns, sk, ss in [(256, 64, 32, 4, 3, 64, 2), (256, 64, 32, 4, 3, 32, 3), (256, 64, 32, 4, 3, 64, 3),
                                      (256, 64, 64, 4, 3, 64, 2), (256, 64, 32, 8, 3, 64, 2), (256, 32, 32, 4, 3, 64, 2)]:
        cfg = dict(T=T, BLOCK_M=bm, BLOCK_K=bk, num_warps=nw, num_stages=ns, STATE_K=sk, STATE_STAGES=ss)
        try:
            ms = median_ms(lambda cfg=cfg: triton_ssd.ssd_chunk_scan(**kw2, config=cfg))[0]
            print(f"  ssd_chunk_scan {cfg}: {ms:.4f}")
        except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported, not fatal
            print(f"  ssd_chunk_scan {cfg}: failed ({type(e).__name__}: {str(e)[:80]})")
    _show_breakdown("ssd_chunk_scan triton", lambda: kernels.ssd_chunk_scan(**kw2, impl="triton"))
    if peer is not None:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        _show_breakdown("mamba_chunk_scan_combined", lambda: mamba_chunk_scan_combined(
            kw2["x"], kw2["dt"], kw2["A"], kw2["B"], kw2["C"], kw2["chunk_size"], D=kw2["D"], dt_bias=kw2["dt_bias"],
            dt_softplus=True, return_final_states=True))


def sweep_conv(m1, L):
    from edgeports.kernels import triton_conv

    for name, x in (("mamba1 conv (L-contiguous)", _r(1, 2 * m1["intermediate_size"], L)[:, :m1["intermediate_size"]]),
                    ("mamba2 conv (D-contiguous)", _r(1, L, 5376).transpose(1, 2))):
        w, b = _r(x.shape[1], 4), _r(x.shape[1])
        for bd, bt in [(16, 128), (32, 64), (64, 32), (128, 16)]:
            cfg = dict(BLOCK_D=bd, BLOCK_T=bt, num_warps=4)
            ms = median_ms(lambda cfg=cfg, x=x, w=w, b=b: triton_conv.causal_conv1d(x, w, b, None, "silu", config=cfg))[0]
            print(f"  {name} {cfg}: {ms:.4f}")


def sweep_update():
    from edgeports.kernels import triton_scan

    for bt, H, P, N, G, m2style in [(1, 1, 5120, 16, 1, False), (1, 80, 64, 128, 1, True), (64, 80, 64, 128, 1, True)]:
        sets = min(256, max(2, math.ceil(200e6 / (bt * H * P * N * 4))))
        cases = [decode_case(H, P, N, G, bt, m2style) for _ in range(sets)]
        for elems, nw in [(512, 4), (1024, 4), (2048, 4), (2048, 8), (4096, 8)]:
            cfg = dict(BLOCK_P=max(1, min(P, elems // N)), num_warps=nw)
            ms = graph_each(cases, lambda c, cfg=cfg: triton_scan.selective_state_update(**c, config=cfg))
            print(f"  state_update b={bt} H={H} {cfg}: {ms * 1e3:.2f} us")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lens", default="1k-64k")
    ap.add_argument("--peer", default=None, help="mamba-ssm sdist for the peer build (optional column)")
    ap.add_argument("--hf-max", type=int, default=4096, help="longest L for transformers' fallback (it is slow)")
    ap.add_argument("--torch-max", type=int, default=16384, help="longest L for the torch implementation")
    ap.add_argument("--sweep", action="store_true", help="also time block-size variants (and per-kernel splits)")
    ap.add_argument("--sweep-len", type=int, default=16384)
    ap.add_argument("--no-table", action="store_true", help="only the sweep")
    ap.add_argument("--sweep-only", default="scan,ssd,conv,update", help="which sweeps (comma list)")
    ap.add_argument("--ops", default="mamba1,mamba2,decode", help="which table parts (comma list)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU")
    torch.manual_seed(0)
    lens = parse_lens(args.lens)
    peer = load_peer(args.peer)
    pk = peaks()
    print(f"{pk['gpu']} ({pk['sms']} SMs), torch {pk['torch']}, triton {pk['triton']}: copy {pk['copy_gbs']:.0f} GB/s "
          f"(read+write), bf16 matmul {pk['mm_tflops']:.0f} TFLOP/s", flush=True)
    m1, m2 = get_spec("mamba-2.8b").config, get_spec("mamba2-2.7b").config
    D1, N1 = m1["intermediate_size"], m1["state_size"]
    H2, P2, N2, G2 = m2["num_heads"], m2["head_dim"], m2["state_size"], m2["n_groups"]
    d2 = m2["expand"] * m2["hidden_size"]
    rows1, rows2 = [], []
    ops = set(args.ops.split(","))
    for L in ([] if args.no_table else lens):
        if "mamba1" not in ops:
            break
        kw = mamba1_scan(m1, L)
        t = time_all(scan_impls(kw, L, args, peer))
        nb = 2 * (3 * D1 * L + 2 * N1 * L + D1 * L) + 8 * D1 * N1
        rows1.append(row("selective_scan", f"L={L}", t, nb, 7 * D1 * N1 * L, pk,
                         f"{D1 * N1 * L / t['triton'] / 1e6:.0f} Gexp/s"))
        x = _r(1, 2 * D1, L)[:, :D1]
        t = time_all(conv_impls(x, _r(D1, 4), _r(D1), L, args))
        rows1.append(row("causal_conv1d", f"L={L}", t, 4 * D1 * L, 8 * D1 * L, pk))
        gm = gemm_ms(L, [(m1["hidden_size"], 2 * D1), (D1, m1["time_step_rank"] + 2 * N1), (m1["time_step_rank"], D1),
                         (D1, m1["hidden_size"])])
        rows1[-2]["extra"] += f"; layer GEMMs {gm:.3f} ms (scan = {100 * rows1[-2]['ms'] / gm:.0f}%)"
        del kw, x
    for L in ([] if args.no_table or "mamba2" not in ops else lens):
        kw = mamba2_ssd(m2, L)
        t = time_all(ssd_impls(kw, L, args, peer))
        T = 256
        nb = 2 * (2 * L * H2 * P2 + L * H2 + 2 * L * G2 * N2) + 4 * H2 * P2 * N2
        fl = 4 * L * H2 * P2 * N2 + L * T * (G2 * N2 + H2 * P2)
        gm = gemm_ms(L, [(m2["hidden_size"], 2 * d2 + 2 * G2 * N2 + H2), (d2, m2["hidden_size"])])
        rows2.append(row("ssd_chunk_scan", f"L={L}", t, nb, fl, pk,
                         f"layer GEMMs {gm:.3f} ms (ssd = {100 * t['triton'] / gm:.0f}%)"))
        cdim = d2 + 2 * G2 * N2
        x = _r(1, L, cdim).transpose(1, 2)
        t = time_all(conv_impls(x, _r(cdim, 4), _r(cdim), L, args))
        rows2.append(row("causal_conv1d", f"L={L}", t, 4 * cdim * L, 8 * cdim * L, pk))
        del kw, x
        torch.cuda.empty_cache()
    for bt in (() if args.no_table or "decode" not in ops else (1, 64)):
        rows1.append(decode_update_row(pk, peer, bt, 1, D1, N1, 1, False))
        rows2.append(decode_update_row(pk, peer, bt, H2, P2, N2, G2, True))
        rows1.append(decode_conv_row(pk, bt, D1))
        rows2.append(decode_conv_row(pk, bt, d2 + 2 * G2 * N2))
    print_table(f"mamba-2.8b layer (d_inner {D1}, d_state {N1}), batch 1 prefill / decode, bf16", rows1)
    print_table(f"mamba2-2.7b layer ({H2} heads x {P2}, d_state {N2}, {G2} group), batch 1 prefill / decode, bf16",
                rows2)
    if args.sweep:
        sweep(m1, m2, args.sweep_len, peer, set(args.sweep_only.split(",")))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(peaks=pk, mamba1=rows1, mamba2=rows2), indent=1))


if __name__ == "__main__":
    main()
