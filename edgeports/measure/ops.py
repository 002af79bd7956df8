"""Operator categories of the breakdown (DESIGN.md), shared by every profiler.

`categorize(name, op_type=None)` maps one profiled item onto CATEGORIES: a CUDA kernel name from the
torch profiler ("ampere_bf16_s16816gemm...", "flash_fwd_kernel", "_selective_scan_fwd..."), an ONNX
Runtime node (its name and op type: "MatMul", "Attention", "Scan", "SelectiveScan"), or a TensorRT layer
name (".../q_proj/MatMul", "{ForeignNode[...]}"). The op type, when known, decides; otherwise keywords
in the name do, first match wins, so the specific categories (ssm_scan, attention) come before the
generic ones (gemm, elementwise). "embedding" is the token-embedding lookup and the logits head.
"""

from __future__ import annotations

CATEGORIES = ("gemm", "attention", "ssm_scan", "conv", "norm", "elementwise", "memory", "embedding", "other")

# ONNX op types (standard domain, com.microsoft fusions ORT makes, ai.edgeports custom nodes), lower case
_OP_TYPES = {
    "ssm_scan": ("selectivescan", "selectivestateupdate", "ssdchunkscan", "scan", "loop", "cumsum"),
    "conv": ("conv", "causalconv1d", "causalconv1dupdate", "convtranspose"),
    "attention": ("attention", "multiheadattention", "groupqueryattention", "softmax"),
    "gemm": ("matmul", "gemm", "fusedmatmul", "matmulnbits", "einsum", "matmulinteger"),
    "norm": ("rmsnormalization", "layernormalization", "simplifiedlayernormalization", "skiplayernormalization",
             "skipsimplifiedlayernormalization", "reducemean", "groupnormalization"),
    "memory": ("cast", "reshape", "transpose", "slice", "concat", "gather", "gathernd", "gatherelements",
               "scatternd", "scatterelements", "expand", "split", "squeeze", "unsqueeze", "pad", "identity",
               "constant", "constantofshape", "shape", "range", "tile", "memcpyfromhost", "memcpytohost", "trilu",
               "flatten", "size", "nonzero"),
    "elementwise": ("add", "mul", "sub", "div", "pow", "sqrt", "exp", "log", "sigmoid", "tanh", "relu", "gelu",
                    "fastgelu", "biasgelu", "softplus", "neg", "reciprocal", "clip", "min", "max", "mod", "abs",
                    "equal", "less", "lessorequal", "greater", "greaterorequal", "and", "or", "not", "isnan",
                    "cos", "sin", "erf", "quickgelu", "bitwiseand", "sum", "reducesum", "reducemax", "argmax", "where"),
}
_BY_OP_TYPE = {op: cat for cat, ops in _OP_TYPES.items() for op in ops}

# Name keywords, first match wins (kernel names, TensorRT layers, ONNX node names without a type).
_KEYWORDS = (
    ("embedding", ("embed", "lm_head", "logits")),
    ("ssm_scan", ("selective_scan", "selectivescan", "selective_state_update", "selectivestateupdate", "ssd_",
                  "ssdchunkscan", "chunk_scan", "chunk_state", "state_passing", "bmm_chunk", "mamba", "scan")),
    ("conv", ("causal_conv1d", "causalconv1d", "conv")),
    ("attention", ("attention", "flash", "fmha", "sdpa", "mha", "softmax")),
    ("gemm", ("gemm", "matmul", "cutlass", "cublas", "sm80_xmma", "sm90_xmma", "xmma", "linear", "einsum", "proj",
              "fullyconnected", "s16816", "wgmma")),
    ("norm", ("rms_norm", "rmsnorm", "layer_norm", "layernorm", "norm", "reducemean", "rsqrt")),
    ("memory", ("copy", "memcpy", "memset", "cast", "reshape", "transpose", "slice", "concat", "cat_", "gather",
                "scatter", "index", "shuffle", "reformat", "expand", "split", "squeeze", "pad", "identity",
                "constant", "fill")),
    ("elementwise", ("elementwise", "pointwise", "vectorized", "reduce", "add", "mul", "sub", "div", "pow", "sqrt",
                     "exp", "log", "sigmoid", "silu", "tanh", "relu", "gelu", "softplus", "neg", "where", "clip",
                     "activation", "unary", "triton_poi", "triton_red", "triton_per")),
)


def categorize(name: str, op_type: str | None = None) -> str:
    """The breakdown category (one of CATEGORIES) of a kernel, graph node or engine layer.

    A node named like the embedding or the logits head is "embedding" whatever its op type (a Gather
    or a MatMul); otherwise a known op type decides, then keywords in the name."""
    low = (name or "").lower()
    if any(w in low for w in _KEYWORDS[0][1]) and (op_type is None or op_type.lower() in ("gather", "matmul", "gemm")):
        return "embedding"
    if op_type:
        cat = _BY_OP_TYPE.get(op_type.lower())
        if cat is not None:
            return cat
    if low.startswith(("reformatting", "copynode")):  # layout conversions TensorRT inserts
        return "memory"
    # a TensorRT path ".../q_proj/MatMul" is decided by its op (the last component), then by its scopes
    parts = (low,) if low.startswith("{foreignnode") else tuple(dict.fromkeys((low.rsplit("/", 1)[-1], low)))
    for part in parts:
        for cat, words in _KEYWORDS[1:]:
            if any(w in part for w in words):
                return cat
    return "other"


# Keywords of the innermost model source line an op was traced from (graph exporters keep it per node:
# torch.onnx's pkg.torch.onnx.stack_trace), first match wins.
_SOURCE_HINTS = (
    ("conv", ("causal_conv1d", "run_conv", "conv1d(")),
    ("ssm_scan", ("kernels.", "selective_ssm", "ssd_chunk_scan", "selective_scan", "selective_state_update")),
    ("attention", ("attention(", "scaled_dot_product")),
    ("norm", ("_rms(", "norm(")),
)


def source_category(stack_trace: str | None) -> str | None:
    """The category implied by where a graph node was traced from, or None.

    With the standard-op lowering an SSM op becomes Exp/Mul/CumSum/... nodes: their op types say
    "elementwise", their source line says "ssm_scan". Callers keep GEMMs as gemm (a projection traced
    inside an SSM helper is still a GEMM)."""
    lines = [ln.strip() for ln in (stack_trace or "").strip().splitlines() if ln.strip()]
    if not lines:
        return None
    last = lines[-1]
    for cat, words in _SOURCE_HINTS:
        if any(w in last for w in words):
            return cat
    return None


def breakdown(items, key=categorize) -> dict[str, float]:
    """Sum (name, op_type, value) rows per category; every category present (0.0 when unseen)."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for name, op_type, value in items:
        out[key(name, op_type)] += float(value)
    return out
