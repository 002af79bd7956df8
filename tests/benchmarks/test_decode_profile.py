"""benchmarks/decode_profile.py's kernel kinds (the GPU part runs on the GPU machine only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
decode_profile = pytest.importorskip("decode_profile")


@pytest.mark.parametrize("name, kind", [
    ("_gemv_kernel", "gemv/gemm"),
    ("triton_red_fused__to_copy_add_mean_mm_mul_pow_rsqrt_t_view_6", "gemv/gemm"),
    ("_state_update_fwd", "scan/conv"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_view_1", "norm/elementwise"),  # a cast, not a copy
    ("Memcpy DtoD (Device -> Device)", "copy"),
    ("triton_poi_fused_clone_3", "copy"),
])
def test_kernel_kinds(name, kind):
    assert decode_profile.kind_of(name) == kind
