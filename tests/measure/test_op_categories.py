"""Operator categories: kernel names (torch profiler), ONNX node op types and TensorRT layer names."""

import pytest

from edgeports.measure.ops import CATEGORIES, breakdown, categorize, source_category


@pytest.mark.parametrize("name,op_type,cat", [
    # CUDA kernels as torch.profiler names them
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", None, "gemm"),
    ("flash_fwd_kernel<Flash_fwd_kernel_traits<128, 64, 64, 4>>", None, "attention"),
    ("_selective_scan_fwd_kernel", None, "ssm_scan"),
    ("_chunk_scan_fwd_kernel", None, "ssm_scan"),
    ("causal_conv1d_fwd_kernel", None, "conv"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", None, "elementwise"),
    ("Memcpy DtoD (Device -> Device)", None, "memory"),
    ("triton_red_fused__to_copy_mean_pow_rsqrt_0", None, "norm"),
    # ONNX Runtime nodes: the op type decides, the embedding/head by name
    ("node_linear_3", "MatMul", "gemm"),
    ("node_Attention_12", "Attention", "attention"),
    ("node_scan__2", "Scan", "ssm_scan"),
    ("node_ssd", "SsdChunkScan", "ssm_scan"),
    ("node_conv", "Conv", "conv"),
    ("node_mul_150", "RMSNormalization", "norm"),
    ("node_where_3", "Where", "elementwise"),
    ("node_ScatterND_1", "ScatterND", "memory"),
    ("node_embedding", "Gather", "embedding"),
    ("node_gather_7", "Gather", "memory"),
    ("node_Mystery", "NoSuchOp", "other"),
    # TensorRT layers: the op (last path component), then the scopes
    ("/lm/blocks.0/mixer/in_proj/MatMul", None, "gemm"),
    ("/lm/blocks.0/mixer/SelectiveScan", None, "ssm_scan"),
    ("Reformatting CopyNode for Input Tensor 0 to /lm/Cast", None, "memory"),
    ("{ForeignNode[/lm/embed/Gather.../lm/blocks.0/Add]}", None, "embedding"),
])
def test_categorize(name, op_type, cat):
    assert categorize(name, op_type) == cat


def test_source_category_reads_the_innermost_line():
    trace = ('File "exporters/onnx.py", line 113, in forward\n    logits, new = self.lm.decode(ids, state)\n'
             'File "models/layers/mamba2.py", line 77, in forward\n    y, ssm_state = kernels.selective_state_update(')
    assert source_category(trace) == "ssm_scan"
    assert source_category(trace.replace("kernels.selective_state_update(", "run_conv(self.conv1d, x)")) == "conv"
    assert source_category(trace.replace("kernels.selective_state_update(", "q = self.q_proj(x)")) is None
    assert source_category(None) is None and source_category("") is None


def test_breakdown_sums_per_category():
    out = breakdown([("a", "MatMul", 1.5), ("b", "Gemm", 0.5), ("c", "Scan", 2.0)])
    assert set(out) == set(CATEGORIES) and out["gemm"] == 2.0 and out["ssm_scan"] == 2.0 and out["other"] == 0.0
    assert breakdown([("x", None, 1.0)], key=lambda n, o: "conv")["conv"] == 1.0
