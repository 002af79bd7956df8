"""Roofline: analytic work against hand-derived formulas, peaks, declared figures, row fields."""

import math

import pytest

from edgeports.measure import roofline as rl
from edgeports.models import get_spec

F32 = 4


def llama_numbers():
    c = get_spec("tiny-llama").config
    H, inter, n_layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv, hd, V = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["vocab_size"]
    macs = H * heads * hd + 2 * H * kv * hd + heads * hd * H + 3 * H * inter  # q, k, v, o, gate, up, down per token
    norms = (2 * n_layers + 1) * H
    kv_per_token = n_layers * 2 * kv * hd * F32
    return dict(H=H, layers=n_layers, heads=heads, hd=hd, V=V, macs=macs, norms=norms, kv_per_token=kv_per_token)


def test_transformer_work_matches_the_formulas():
    n = llama_numbers()
    L, d = 300, 5
    M = L + d
    w = rl.work("tiny-llama", L, d)
    head = 2 * n["H"] * n["V"]  # tied head, last position only
    attn_pf = n["layers"] * 2 * n["heads"] * (L * (L + 1) / 2) * 2 * n["hd"]  # causal: lower triangle
    assert w.prefill_flop == 2 * n["macs"] * n["layers"] * L + head + attn_pf
    attn_dec = n["layers"] * 2 * n["heads"] * M * 2 * n["hd"]  # decode attends over the masked max_len cache
    assert w.decode_flop == 2 * n["macs"] * n["layers"] + head + attn_dec
    weights = (n["macs"] * n["layers"] + n["H"] * n["V"]) * F32  # matrices incl. the (tied) head, once per call
    assert w.prefill_bytes == weights + L * n["H"] * F32 + n["norms"] * F32 + L * n["kv_per_token"]
    assert w.decode_bytes == weights + n["H"] * F32 + n["norms"] * F32 + M * n["kv_per_token"]


def test_chunked_prefill_counts_each_chunk():
    n = llama_numbers()
    L, d, c = 1000, 4, 256
    M = L + d
    w = rl.work("tiny-llama", L, d, chunk=c)
    chunks = [256, 256, 256, 232]
    attn = n["layers"] * 2 * n["heads"] * 2 * n["hd"] * (c * (c + 1) / 2 + sum(q * M for q in chunks[1:]))
    head = 2 * n["H"] * n["V"] * len(chunks)
    assert w.prefill_flop == 2 * n["macs"] * n["layers"] * L + head + attn
    weights = (n["macs"] * n["layers"] + n["H"] * n["V"] + n["norms"]) * F32
    assert w.prefill_bytes == len(chunks) * weights + L * n["H"] * F32 + L * n["kv_per_token"]


def test_ssm_ops_are_counted_by_their_formulas():
    c = get_spec("tiny-mamba2").config
    H, V, n_layers, N, P = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"], c["state_size"], c["head_dim"]
    d_inner, heads, G, W = c["expand"] * H, c["num_heads"], c["n_groups"], c["conv_kernel"]
    conv_dim = d_inner + 2 * G * N
    macs = H * (d_inner + conv_dim + heads) + d_inner * H  # in_proj, out_proj
    w = rl.work("tiny-mamba2", 64, 2)
    step = rl.SCAN_FLOP * heads * P * N + 2 * conv_dim * W  # state update + conv update per layer
    assert w.decode_flop == 2 * macs * n_layers + 2 * H * V + n_layers * step
    L, Q = 64, c["chunk_size"]
    ssd = 2 * L * Q * (N * G + P * heads) + 4 * L * N * P * heads
    assert w.prefill_flop == 2 * macs * n_layers * L + 2 * H * V + n_layers * (ssd + 2 * conv_dim * L * W)
    # no KV cache: prefill writes the SSM and conv states once, each decode step reads and writes them; the
    # rest of the difference is the L - 1 more embedding rows prefill gathers
    ssm_bytes = n_layers * (heads * P * N * 4 + conv_dim * (W - 1) * F32)
    assert w.decode_bytes - w.prefill_bytes == 2 * ssm_bytes - ssm_bytes - (L - 1) * H * F32


def test_work_of_a_real_config_on_the_meta_device():
    """qwen2.5-0.5b at 4k: about 2 x params x L matmul FLOPs plus attention; no memory is allocated."""
    w = rl.work("qwen2.5-0.5b", 4096, 32)
    assert 3.0e12 < w.prefill_flop < 4.5e12
    assert 0.9e9 < w.decode_bytes < 1.2e9  # ~0.99 GB of bf16 weights + the KV cache


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM5"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090"),
    ("tegra234 integrated GPU (NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super)",
     "Jetson Orin Nano 8GB (Super, MAXN)"),
    ("tegra234 integrated GPU (Jetson AGX Orin Developer Kit)", "Jetson AGX Orin 64GB"),
])
def test_declared_peaks(name, key):
    d = rl.declared_peaks(name)
    assert d.name == key and d.flop_s > 1e12 and d.bytes_s > 1e10 and d.source
    assert rl.declared_peaks("NVIDIA A100-SXM4-80GB") is None and rl.declared_peaks(None) is None


def test_measured_peaks_on_the_cpu():
    p = rl.measure_peaks("cpu", "float32")
    assert math.isfinite(p.flop_s) and p.flop_s > 1e8 and p.bytes_s > 1e8
    assert p.dtype == "float32" and p.source.startswith("measured on cpu")
    assert rl.peaks_for_run("cpu", "float32")[1] is None


def test_row_fields():
    config = dict(model="tiny-llama", prompt_len=300, decode_len=5, prefill_mode="full", batch=1, dtype="float32")
    peaks = rl.Peaks(flop_s=1e12, bytes_s=1e11, dtype="float32", source="test")
    w = rl.work("tiny-llama", 300, 5, None, 1, "float32")
    out = rl.row_fields(config, {"status": "ok", "ttft_p50_ms": 2.0, "tpot_p50_ms": 0.5}, peaks, None)
    assert out["prefill_flop_s"] == pytest.approx(w.prefill_flop / 2e-3)
    assert out["decode_bytes_s"] == pytest.approx(w.decode_bytes / 0.5e-3)
    assert out["peak_flop_s"] == 1e12 and out["peak_source"] == "test"
    assert rl.row_fields(config, {"status": "oom"}, peaks, None) == {}
    no_peaks = rl.row_fields(config, {"status": "ok", "ttft_p50_ms": 2.0}, None, "peak measurement failed: x")
    assert no_peaks["roofline_reason"] == "peak measurement failed: x" and "decode_flop_s" not in no_peaks
