"""Roofline fields: achieved FLOP/s and bytes/s of prefill and decode, against the device's peaks.

Work is analytic, per model, length and prefill mode, never read from hardware counters. The model runs once
on the meta device (shapes only: no memory, no device, any length) under a counter that sees:
  - matmuls as executed (mm/addmm/bmm/baddbmm): every projection, LoRA adapter, shared block per use, and the
    logits head for the last position only;
  - attention as SDPA executes it: a causal prefill counts the lower triangle (flash kernels skip the rest),
    a masked call (continuation chunks, decode, sliding-window bands) the whole key length it is given (a
    mask does not skip work): decode attends over the state's max_len = prompt + decode steps;
  - the SSM custom ops by their algorithms: selective scan and state update 7 FLOP per (token, channel,
    state) (decay, input, state FMA, output FMA); the SSD chunked scan 2*L*Q*(N*G + P*H) within chunks
    plus 4*L*N*P*H for chunk states and their output; causal conv 2*W per (token, channel).
Bytes are the compulsory traffic: each weight matrix once per forward call it is used in (per chunk when
chunked; a shared block per use), the embedding rows gathered, the other parameters once, and the state
(KV caches written once in prefill; read whole in each decode step, since masked SDPA reads all max_len;
SSM states read and written). Activations are not counted, so bytes/s is a lower bound of real traffic.

Peaks are measured once per run on the device (`measure_peaks`: a large matmul in the run's dtype, a
device-to-device copy counted as read + write; on CUDA in a subprocess so the sweep's parent never holds a
CUDA context). DECLARED holds the vendors' dense 16-bit tensor FLOP/s and DRAM bandwidth of RTX 4090,
Jetson Orin Nano, AGX Orin and H100 (and H200), with sources, for the report to compare against.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

SCAN_FLOP = 7  # per (token, channel, state) of a Mamba1 selective scan / state update


@dataclass(frozen=True)
class Work:
    """Analytic work of one cell: per prefill (all chunks) and per decoded token."""

    prefill_flop: float
    prefill_bytes: float
    decode_flop: float
    decode_bytes: float


@dataclass(frozen=True)
class Peaks:
    """A device's peaks as measured here (FLOP/s in `dtype`, copy bytes/s)."""

    flop_s: float
    bytes_s: float
    dtype: str
    source: str


@dataclass(frozen=True)
class Declared:
    """A vendor's figures: dense 16-bit tensor-core FLOP/s (FP32 accumulate) and DRAM bandwidth."""

    name: str
    flop_s: float
    bytes_s: float
    source: str


# Matched against the GPU name (NVML, or the Jetson device-tree model) by the first key that is a substring.
DECLARED = (
    ("H100 PCIe", Declared("H100 PCIe", 756e12, 2.0e12, "NVIDIA H100 Tensor Core GPU datasheet: BF16 tensor "
                           "1,513 TFLOPS with sparsity (756 dense), HBM2e 2.0 TB/s")),
    ("H100 NVL", Declared("H100 NVL", 835e12, 3.9e12, "NVIDIA H100 datasheet: H100 NVL BF16 1,671 TFLOPS with "
                          "sparsity (835 dense), HBM3 3.9 TB/s")),
    ("H100", Declared("H100 SXM5", 989.4e12, 3.35e12, "NVIDIA H100 Tensor Core GPU datasheet: SXM5 BF16 tensor "
                      "1,979 TFLOPS with sparsity (989.4 dense), HBM3 3.35 TB/s")),
    ("H200", Declared("H200 SXM", 989.4e12, 4.8e12, "NVIDIA H200 datasheet: BF16 tensor 1,979 TFLOPS with "
                      "sparsity (989 dense), HBM3e 4.8 TB/s")),
    ("RTX 4090", Declared("GeForce RTX 4090", 165.2e12, 1008e9, "NVIDIA Ada Lovelace architecture whitepaper, "
                          "appendix A: FP16/BF16 tensor with FP32 accumulate 165.2 TFLOPS dense (330.3 sparse); "
                          "384-bit GDDR6X at 21 Gbps = 1,008 GB/s")),
    ("Orin Nano", Declared("Jetson Orin Nano 8GB (Super, MAXN)", 16.7e12, 102e9, "NVIDIA Jetson Orin Nano Super "
                           "Developer Kit datasheet: 67 INT8 TOPS sparse from 1024 CUDA / 32 tensor cores at 1.02 "
                           "GHz, LPDDR5 102 GB/s; FP16 dense = sparse INT8 / 4. At the original 15 W mode (625 MHz, "
                           "40 TOPS, 68 GB/s): 10.2 TFLOPS, 68 GB/s")),
    ("AGX Orin", Declared("Jetson AGX Orin 64GB", 42.5e12, 204.8e9, "NVIDIA Jetson AGX Orin series datasheet: "
                          "GPU 170 INT8 TOPS sparse (2048 CUDA / 64 tensor cores at 1.3 GHz), LPDDR5 204.8 GB/s; "
                          "FP16 dense = sparse INT8 / 4")),
)


def declared_peaks(gpu_name: str | None) -> Declared | None:
    """The vendor figures for a GPU name ('NVIDIA H100 80GB HBM3', 'NVIDIA Jetson Orin Nano ...'), or None."""
    for key, declared in DECLARED:
        if gpu_name and key.lower() in gpu_name.lower():
            return declared
    return None


# ---------------------------------------------------------------------------------------------- counting

class _Counter(TorchDispatchMode):
    """Counts FLOPs of matmuls and of the edgeports SSM ops as they are dispatched."""

    def __init__(self):
        super().__init__()
        import edgeports.kernels  # noqa: F401  (registers torch.ops.edgeports)

        self.flop = 0.0
        aten, ep = torch.ops.aten, torch.ops.edgeports
        # formula(args, out) -> FLOPs. linear / matmul reach the mode undecomposed in some paths; the ops
        # they decompose into do not reach it again (a mode is off while it handles an op)
        self.formulas: dict[Any, Callable] = {
            aten.mm.default: lambda a, out: 2 * out.numel() * a[0].shape[-1],
            aten.addmm.default: lambda a, out: 2 * out.numel() * a[1].shape[-1],
            aten.bmm.default: lambda a, out: 2 * out.numel() * a[0].shape[-1],
            aten.baddbmm.default: lambda a, out: 2 * out.numel() * a[1].shape[-1],
            aten.matmul.default: lambda a, out: 2 * out.numel() * a[0].shape[-1],
            aten.linear.default: lambda a, out: 2 * out.numel() * a[0].shape[-1],
            # u[Bt,D,L], A[D,N]
            ep.selective_scan.default: lambda a, out: SCAN_FLOP * a[0].numel() * a[2].shape[-1],
            # state[Bt,H,P,N]
            ep.selective_state_update.default: lambda a, out: SCAN_FLOP * a[0].numel(),
            ep.ssd_chunk_scan.default: lambda a, out: _ssd_flop(*a),
            # x[Bt,D,L] / x[Bt,D], weight[D,W]
            ep.causal_conv1d.default: lambda a, out: 2 * a[0].numel() * a[1].shape[1],
            ep.causal_conv1d_update.default: lambda a, out: 2 * a[0].numel() * a[2].shape[1],
        }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = self.formulas.get(func)
        if formula is not None:
            self.flop += float(formula(args, out))
        return out


def _ssd_flop(x, dt, A, B, C, chunk_size, *_):
    """Mamba2 SSD: x[Bt,L,H,P], B/C[Bt,L,G,N]; chunk-local C.B^T and (C.B^T).X, then chunk states B^T.X and
    the states' contribution C.S (the state passing across chunks is negligible)."""
    bt, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    Q = min(int(chunk_size), L)
    return bt * (2 * L * Q * (N * G + P * H) + 4 * L * N * P * H)


def _sdpa_flop(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **_):
    """FLOPs of one SDPA call as executed (see the module docstring); q[B,H,Lq,D], k[B,Hk,Lk,D], v[..,Dv]."""
    b, h, lq, d = q.shape
    lk, dv = k.shape[-2], v.shape[-1]
    if is_causal and attn_mask is None:
        # (our causal calls have lq == lk: a fresh prefill) query i sees keys 0..i + (lk - lq)
        pairs = lq * lk - lq * (lq - 1) / 2
    else:
        pairs = lq * lk
    return 2 * b * h * pairs * (d + dv)


@functools.lru_cache(maxsize=16)
def _meta_lm(model: str, dtype: str | None):
    from edgeports.models import get_spec, torch_dtype
    from edgeports.models.info import build_meta

    spec = get_spec(model)
    lm = build_meta(spec)
    if dtype:
        lm = lm.to(dtype=torch_dtype(dtype))
    return lm.to("meta")  # buffers built on the CPU (rotary tables) move too


class _Traffic:
    """Forward hooks adding the bytes of each weight matrix per use, and the embedding rows gathered."""

    def __init__(self, lm: torch.nn.Module):
        self.bytes = 0.0
        self.handles = []
        seen: set[int] = set()
        matrix_bytes = 0
        for m in lm.modules():
            if isinstance(m, torch.nn.Linear):
                self.handles.append(m.register_forward_hook(self._linear))
                for p in (m.weight, m.bias):
                    if p is not None and id(p) not in seen:
                        seen.add(id(p))
                        matrix_bytes += _nbytes(p)
            elif isinstance(m, torch.nn.Embedding):
                self.handles.append(m.register_forward_hook(self._embedding))
                if id(m.weight) not in seen:
                    seen.add(id(m.weight))
                    matrix_bytes += _nbytes(m.weight)
        # everything else (norm weights, conv filters, A, D, dt biases) is read once per forward call
        self.other = sum(_nbytes(p) for p in lm.parameters() if id(p) not in seen)

    def _linear(self, m, _inputs, _out):
        self.bytes += _nbytes(m.weight) + (_nbytes(m.bias) if m.bias is not None else 0)

    def _embedding(self, m, inputs, _out):
        self.bytes += inputs[0].numel() * m.weight.shape[1] * m.weight.element_size()

    def close(self):
        for h in self.handles:
            h.remove()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _state_bytes(lm, batch: int, max_len: int, kinds: tuple[str, ...]) -> int:
    from edgeports.models.state import layout_bytes

    return layout_bytes(lm.state_layout(batch, max_len), kinds)


@functools.lru_cache(maxsize=1024)
def work(model: str, prompt_len: int, decode_len: int, chunk: int | None = None, batch: int = 1,
         dtype: str | None = None) -> Work:
    """Analytic FLOPs and bytes of one cell (model: a zoo name or local HF dir; dtype None = the model's).

    Continuation chunks of one length cost the same wherever they start (they attend over the whole cache),
    so a chunked prefill is counted from its first chunk, one full continuation chunk and the last one."""
    lm = _meta_lm(model, dtype)
    max_len = prompt_len + decode_len
    step = min(chunk or prompt_len, prompt_len)
    counter, traffic = _Counter(), _Traffic(lm)
    attention = [0.0]
    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kwargs):
        attention[0] += _sdpa_flop(q, k, v, *args, **kwargs)
        return q.new_empty((*q.shape[:-1], v.shape[-1]))

    def run(fn) -> tuple[float, float]:
        f0, a0, b0 = counter.flop, attention[0], traffic.bytes
        fn()
        return counter.flop - f0 + attention[0] - a0, traffic.bytes - b0 + traffic.other

    try:
        # is_tracing: code that would read a state's position on the host (Hymba: meta tokens for pos == 0)
        # takes its traced path; a meta tensor has no value to read
        with torch.device("meta"), torch.inference_mode(), mock.patch.object(F, "scaled_dot_product_attention", sdpa), \
                mock.patch.object(torch.jit, "is_tracing", lambda: True), counter:
            state = [lm.new_state(batch, max_len)]

            def prefill(n: int, first: bool):
                _, state[0] = lm.prefill(torch.zeros(batch, n, dtype=torch.long), state[0], first=first)

            flop, nbytes = run(lambda: prefill(step, True))
            rest = prompt_len - step
            if rest:
                full, last = divmod(rest, step)
                if full:
                    f, b = run(lambda: prefill(step, False))
                    flop, nbytes = flop + full * f, nbytes + full * b
                if last:
                    f, b = run(lambda: prefill(last, False))
                    flop, nbytes = flop + f, nbytes + b
            d_flop, d_bytes = run(lambda: lm.decode(torch.zeros(batch, 1, dtype=torch.long), state[0]))
    finally:
        traffic.close()
        assert F.scaled_dot_product_attention is original
    kv_written = _state_bytes(lm, batch, prompt_len, ("k", "v"))
    ssm = _state_bytes(lm, batch, 1, ("conv", "ssm"))
    kv_read = _state_bytes(lm, batch, max_len, ("k", "v"))
    return Work(prefill_flop=flop, prefill_bytes=nbytes + kv_written + ssm,
                decode_flop=d_flop, decode_bytes=d_bytes + kv_read + 2 * ssm)


# ---------------------------------------------------------------------------------------------- peaks

def _timed(fn: Callable[[], Any], sync: Callable[[], None], min_s: float = 0.2, warmup: int = 2) -> float:
    """Seconds per call of fn (mean over as many calls as fill min_s, after warm-up)."""
    for _ in range(warmup):
        fn()
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n >= 3 and time.perf_counter() - t0 >= min_s:
            break
    sync()
    return (time.perf_counter() - t0) / n


def _matmul_rate(n: int, dev: torch.device, dt: torch.dtype, sync, min_s: float) -> float:
    a, b = torch.randn(n, n, device=dev).to(dt), torch.randn(n, n, device=dev).to(dt)
    out = torch.empty(n, n, device=dev, dtype=dt)
    return 2 * n**3 / _timed(lambda: torch.mm(a, b, out=out), sync, min_s)


def _copy_rate(nbytes: int, dev: torch.device, sync, min_s: float) -> float:
    src = torch.ones(nbytes // 4, device=dev)
    dst = torch.empty_like(src)
    return 2 * nbytes / _timed(lambda: dst.copy_(src), sync, min_s)  # each byte read once, written once


def measure_peaks(device: str = "cpu", dtype: str = "bfloat16") -> Peaks:
    """Measured peaks of this device: n x n matmul FLOP/s in dtype and device copy bytes/s (read + write).
    Sizes: 8192 / 1 GiB on a GPU with room for them, less on small ones; 1024 / 64 MiB on a CPU."""
    from edgeports.models import torch_dtype

    dev = torch.device(device)
    dt = torch_dtype(dtype)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        n = 8192 if free > 4 << 30 else 4096
        copy_bytes = min(1 << 30, free // 8)
        sync = lambda: torch.cuda.synchronize(dev)  # noqa: E731
        name = torch.cuda.get_device_name(dev)
    else:
        n, copy_bytes = 1024, 64 << 20
        sync = lambda: None  # noqa: E731
        name = "cpu"
    min_s = 0.2 if dev.type == "cuda" else 0.1
    flop_s, bytes_s = _matmul_rate(n, dev, dt, sync, min_s), _copy_rate(copy_bytes, dev, sync, min_s)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return Peaks(flop_s=flop_s, bytes_s=bytes_s, dtype=dtype,
                 source=f"measured on {name}: {dtype} matmul {n}^3, copy of {copy_bytes >> 20} MiB (read + write)")


def peaks_for_run(device: str, dtype: str, timeout_s: float = 300.0) -> tuple[Peaks | None, str | None]:
    """Peaks measured once for a run: in this process on the CPU, in a subprocess on CUDA (the sweep's parent
    must not hold a CUDA context: it would take device memory from the workers). (None, reason) on failure."""
    try:
        if not device.startswith("cuda"):
            return measure_peaks(device, dtype), None
        cmd = [sys.executable, "-m", "edgeports.measure.roofline", device, dtype]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"peak measurement failed: {tail[:200]}"
        return Peaks(**json.loads(done.stdout.strip().splitlines()[-1])), None
    except Exception as e:  # a failed peak measurement costs the roofline fields, never the sweep
        return None, f"peak measurement failed: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------- row fields

def row_fields(config: dict[str, Any], fields: dict[str, Any], peaks: Peaks | None, peaks_reason: str | None,
               model_source: str | None = None) -> dict[str, Any]:
    """The Row's roofline fields for a measured cell (config: CellConfig fields; fields: its metrics)."""
    if fields.get("status", "ok") != "ok" or not fields.get("ttft_p50_ms"):
        return {}
    out: dict[str, Any] = {}
    if peaks is not None:
        out.update(peak_flop_s=peaks.flop_s, peak_bytes_s=peaks.bytes_s, peak_source=peaks.source)
    else:
        out["roofline_reason"] = peaks_reason
    from edgeports.runners.base import parse_prefill_mode

    try:
        w = work(model_source or config["model"], config["prompt_len"], config["decode_len"],
                 parse_prefill_mode(config["prefill_mode"]), config["batch"], config["dtype"])
    except Exception as e:  # e.g. a local model dir that moved: the row keeps its measurements
        out["roofline_reason"] = f"no analytic work count: {type(e).__name__}: {e}"[:300]
        return out
    ttft_s = fields["ttft_p50_ms"] / 1e3
    out.update(prefill_flop_s=w.prefill_flop / ttft_s, prefill_bytes_s=w.prefill_bytes / ttft_s)
    if fields.get("tpot_p50_ms"):
        tpot_s = fields["tpot_p50_ms"] / 1e3
        out.update(decode_flop_s=w.decode_flop / tpot_s, decode_bytes_s=w.decode_bytes / tpot_s)
    return out


def roofline_fraction(achieved: float | None, peak: float | None) -> float | None:
    """achieved / peak, or None."""
    return achieved / peak if achieved is not None and peak and math.isfinite(peak) else None


def main(argv: list[str]) -> int:
    """`python -m edgeports.measure.roofline DEVICE DTYPE`: print the measured Peaks as one JSON line."""
    device, dtype = argv
    print(json.dumps(asdict(measure_peaks(device, dtype))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
