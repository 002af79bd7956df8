"""The ONNX custom domain `ai.edgeports` (version 1): one node per SSM op (`--onnx-ssm custom`).

Used by the ONNX exporter when options.extra["onnx_ssm"] == "custom", so that the TensorRT plugins
(exporters/plugins) can implement each op as one layer. The nodes follow the kernel op contract
(notes/KERNELS.md) exactly; tensor inputs are the contract's, in its order:

    SelectiveScan(u, delta, A, B, C, D?, z?, delta_bias?, initial_state?) -> (y, final_state)
        attr delta_softplus: int
    SelectiveStateUpdate(state, x, dt, A, B, C, D?, z?, dt_bias?) -> (y, new_state)
        attr dt_softplus: int
    SsdChunkScan(x, dt, A, B, C, D?, z?, dt_bias?, initial_state?) -> (y, final_state)
        attrs chunk_size: int, dt_softplus: int, dt_min: float, dt_max: float (inf allowed)
    CausalConv1d(x, weight, bias?, initial_state?) -> (y, final_state)
        attr activation: string ("" or "silu")
    CausalConv1dUpdate(x, conv_state, weight, bias?) -> (y, new_conv_state)
        attr activation: string ("" or "silu")

`?` marks optional inputs: an absent one is an empty input name, and every node lists all of its
inputs (trailing absent ones too), so a consumer can rely on the positions. y has the dtype of the
first activation input (u / x); SSM states are float32. Expanded views that the model passes (A, D,
dt_bias of SelectiveStateUpdate in Mamba2) arrive materialised through an Expand node.

The schemas are registered with onnx (`register_schemas()`), so onnx.checker validates every node's
inputs, types and attributes. ONNX Runtime runs this domain with edgeports' custom-op library
(exporters/plugins/ort, built and loaded by runners/ort.py), TensorRT with the plugins.

The attention lowering `onnx_attention=gqa` (exporters/onnx.py) goes through the same mechanism (a
torch custom op kept opaque by torch.export, turned into one node by the translation table): each
`Attention.attend` becomes one ONNX Runtime contrib node `com.microsoft.GroupQueryAttention` (version 1),
with the inputs and attributes of ORT's ContribOperators contract that we use:

    GroupQueryAttention(query [B,S,N*hd], key [B,S,Nkv*hd], value [B,S,Nkv*hd],
                        past_key [B,Nkv,T,hd], past_value [B,Nkv,T,hd],
                        seqlens_k int32 [B] (= tokens after this call - 1),
                        total_sequence_length int32 [] (= S for a fresh prompt, else T; from shapes only))
        -> (output [B,S,N*hd], present_key [B,Nkv,T,hd], present_value [B,Nkv,T,hd])
        attrs num_heads, kv_num_heads, scale, local_window_size (-1: none), do_rotary 0

T is the KV cache length (max_len, or the per-prompt "max_len" of onnx_cache=dynamic), always >= the
tokens after the call, so present has past's shape and may be past's buffer (ORT's shared-buffer mode:
the new keys are written at positions seqlens_k - S + 1 ...). RoPE stays outside the node. ORT
continues a prompt (S > 1 with past tokens) only at batch 1. Its CPU EP's local_window_size counts the
keys a query sees, itself included (checked against `attention_mask`), as our sliding_window does.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

DOMAIN = "ai.edgeports"
VERSION = 1
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]


@dataclass(frozen=True)
class NodeSpec:
    """One ai.edgeports op: its ONNX inputs (the first `required` mandatory), outputs and attributes."""

    op_type: str
    torch_op: str  # name in the edgeports:: torch.library namespace
    inputs: tuple[str, ...]
    required: int
    outputs: tuple[str, str]
    attrs: tuple[tuple[str, str], ...]  # (name, "int" | "float" | "string")


NODES = (
    NodeSpec("SelectiveScan", "selective_scan", ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"),
             5, ("y", "final_state"), (("delta_softplus", "int"),)),
    NodeSpec("SelectiveStateUpdate", "selective_state_update",
             ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias"), 6, ("y", "new_state"), (("dt_softplus", "int"),)),
    NodeSpec("SsdChunkScan", "ssd_chunk_scan", ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state"), 5,
             ("y", "final_state"),
             (("chunk_size", "int"), ("dt_softplus", "int"), ("dt_min", "float"), ("dt_max", "float"))),
    NodeSpec("CausalConv1d", "causal_conv1d", ("x", "weight", "bias", "initial_state"), 2, ("y", "final_state"),
             (("activation", "string"),)),
    NodeSpec("CausalConv1dUpdate", "causal_conv1d_update", ("x", "conv_state", "weight", "bias"), 3,
             ("y", "new_conv_state"), (("activation", "string"),)),
)
BY_OP_TYPE = {n.op_type: n for n in NODES}
# the tensor that fixes y's dtype, and the float32 SSM state tensors (inputs and outputs); the conv ops'
# states (initial_state / final_state of CausalConv1d too) keep the activation's dtype
_ACTIVATION = {"SelectiveScan": "u", "SelectiveStateUpdate": "x", "SsdChunkScan": "x", "CausalConv1d": "x",
               "CausalConv1dUpdate": "x"}
_F32 = {"state", "initial_state", "final_state", "new_state"}
_CONV = ("CausalConv1d", "CausalConv1dUpdate")


def register_schemas() -> None:
    """Register the five op schemas with onnx (once per process), for onnx.checker and onnxscript."""
    from onnx import defs

    S = defs.OpSchema
    for spec in NODES:
        if defs.has(spec.op_type, VERSION, DOMAIN):
            continue
        act = _ACTIVATION[spec.op_type]
        f32 = set() if spec.op_type in _CONV else _F32
        inputs = [_param(n, act, i >= spec.required, f32) for i, n in enumerate(spec.inputs)]
        outputs = [_param(n, act, False, f32) for n in spec.outputs]
        tvars = sorted({p.type_str for p in inputs + outputs if not p.type_str.startswith("tensor(")})
        kinds = {"int": S.AttrType.INT, "float": S.AttrType.FLOAT, "string": S.AttrType.STRING}
        defs.register_schema(S(spec.op_type, DOMAIN, VERSION, f"edgeports::{spec.torch_op} (notes/KERNELS.md)",
                               inputs=inputs, outputs=outputs,
                               type_constraints=[(t, _FLOATS, "") for t in tvars],
                               attributes=[S.Attribute(name, kinds[kind], "") for name, kind in spec.attrs]
                               + _PARSER_ATTRIBUTES(S)))


def _PARSER_ATTRIBUTES(S) -> list:
    # exporters/trt.py's prepare_for_parser adds these for TensorRT's ONNX parser (which plugin creator,
    # which optional inputs are present); optional, so the same schemas also check parser-ready graphs
    return [S.Attribute("present", S.AttrType.INT, "bit i set: optional input i is given", required=False),
            S.Attribute("plugin_namespace", S.AttrType.STRING, "TensorRT plugin namespace", required=False),
            S.Attribute("plugin_version", S.AttrType.STRING, "TensorRT plugin version", required=False)]


def _param(name: str, activation: str, optional: bool, f32: set[str]):
    """A schema input/output: y shares the activation's type var T, the names in f32 (SSM states) are float32, every other
    tensor gets its own type var (the contract allows e.g. float32 A with bfloat16 u)."""
    from onnx.defs import OpSchema as S

    type_str = "tensor(float)" if name in f32 else "T" if name in (activation, "y") else f"T_{name}"
    opt = S.FormalParameterOption.Optional if optional else S.FormalParameterOption.Single
    return S.FormalParameter(name, type_str, "", param_option=opt)


def _node(op_type: str, inputs: list, **attrs):
    """Emit one ai.edgeports node under torch.onnx's tracer; returns its two outputs."""
    from onnxscript import values

    op = getattr(values.Opset(DOMAIN, VERSION), op_type)
    return op(*inputs, **attrs, _outputs=2)


# One translation per torch op, in the torch op's argument order (torch.onnx calls them so).
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """edgeports::selective_scan -> SelectiveScan."""
    return _node("SelectiveScan", [u, delta, A, B, C, D, z, delta_bias, initial_state],
                 delta_softplus=int(delta_softplus))


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """edgeports::selective_state_update -> SelectiveStateUpdate."""
    return _node("SelectiveStateUpdate", [state, x, dt, A, B, C, D, z, dt_bias], dt_softplus=int(dt_softplus))


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, dt_min=0.0,
                   dt_max=math.inf, initial_state=None):
    """edgeports::ssd_chunk_scan -> SsdChunkScan."""
    return _node("SsdChunkScan", [x, dt, A, B, C, D, z, dt_bias, initial_state], chunk_size=int(chunk_size),
                 dt_softplus=int(dt_softplus), dt_min=float(dt_min), dt_max=float(dt_max))


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None):
    """edgeports::causal_conv1d -> CausalConv1d."""
    return _node("CausalConv1d", [x, weight, bias, initial_state], activation=activation or "")


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """edgeports::causal_conv1d_update -> CausalConv1dUpdate."""
    return _node("CausalConv1dUpdate", [x, conv_state, weight, bias], activation=activation or "")


def translation_table() -> dict:
    """torch.onnx custom_translation_table entries: every edgeports:: custom op -> its node."""
    import torch

    import edgeports.kernels  # noqa: F401 - registers the edgeports:: custom ops

    register_schemas()
    fns = {s.torch_op: globals()[s.torch_op] for s in NODES}
    return {getattr(torch.ops.edgeports, name).default: fn for name, fn in fns.items()}


def pad_inputs(model) -> int:
    """Give every ai.edgeports node of an onnx_ir model all its inputs (absent trailing ones empty);
    returns how many such nodes the model holds (subgraphs included)."""
    from onnx_ir import traversal

    count = 0
    for node in traversal.RecursiveGraphIterator(model.graph):
        if node.domain == DOMAIN:
            count += 1
            n = len(BY_OP_TYPE[node.op_type].inputs)
            if len(node.inputs) < n:
                node.resize_inputs(n)
    return count


# ---- com.microsoft.GroupQueryAttention (onnx_attention=gqa) ---------------------------------------------
MS_DOMAIN, MS_VERSION = "com.microsoft", 1
GQA = "GroupQueryAttention"
GQA_INPUTS = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length")
GQA_OUTPUTS = ("output", "present_key", "present_value")
GQA_ATTRS = (("num_heads", "int"), ("kv_num_heads", "int"), ("scale", "float"), ("local_window_size", "int"),
             ("do_rotary", "int"))
_GQA_SCHEMA = ("(Tensor query, Tensor key, Tensor value, Tensor past_key, Tensor past_value, Tensor seqlens_k, "
               "Tensor total_sequence_length, int num_heads, int kv_num_heads, float scale, int local_window_size)"
               " -> (Tensor, Tensor, Tensor)")


def register_gqa_schema() -> None:
    """Register the subset of ORT's GroupQueryAttention schema we emit with onnx, so that onnx.checker
    validates the nodes (onnx itself knows no com.microsoft ops)."""
    from onnx import defs

    if defs.has(GQA, MS_VERSION, MS_DOMAIN):
        return
    S = defs.OpSchema
    single, optional = S.FormalParameterOption.Single, S.FormalParameterOption.Optional
    types = {"seqlens_k": "M", "total_sequence_length": "M"}
    inputs = [S.FormalParameter(n, types.get(n, "T"), "", param_option=optional if n in ("key", "value", "past_key",
              "past_value") else single) for n in GQA_INPUTS]
    outputs = [S.FormalParameter(n, "T", "", param_option=single if n == "output" else optional) for n in GQA_OUTPUTS]
    kinds = {"int": S.AttrType.INT, "float": S.AttrType.FLOAT}
    defs.register_schema(S(GQA, MS_DOMAIN, MS_VERSION, "ONNX Runtime contrib op (docs/ContribOperators.md)",
                           inputs=inputs, outputs=outputs,
                           type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                                             ("M", ["tensor(int32)"], "")],
                           attributes=[S.Attribute(n, kinds[k], "", required=n in ("num_heads", "kv_num_heads"))
                                       for n, k in GQA_ATTRS]))


@functools.cache
def gqa_op():
    """torch op edgeports_onnx::group_query_attention: GroupQueryAttention's contract (above), eager
    implementation `gqa_reference`; registered on first use."""
    import torch

    op = torch.library.custom_op("edgeports_onnx::group_query_attention", gqa_reference, mutates_args=(),
                                 schema=_GQA_SCHEMA)

    @op.register_fake
    def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, *attrs):
        return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)

    return op


def gqa_reference(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, num_heads: int,
                  kv_num_heads: int, scale: float, local_window_size: int):
    """GroupQueryAttention in torch (eager: reads seqlens_k on the host), per batch row b: the S new keys and
    values go to positions seqlens_k[b] - S + 1 ... of copies of the caches, then the queries at those
    positions attend causally (and within local_window_size keys, if > 0) over the cache."""
    import torch
    import torch.nn.functional as F

    from edgeports.models.layers.attention import attention_mask

    B, S, _ = query.shape
    hd = past_key.shape[3]
    present_key, present_value = past_key.clone(), past_value.clone()
    keys = torch.arange(past_key.shape[2], device=query.device)
    out = torch.empty_like(query)
    for b in range(B):
        positions = int(seqlens_k[b]) + 1 - S + torch.arange(S, device=query.device)
        present_key[b].index_copy_(1, positions, key[b].view(S, kv_num_heads, hd).transpose(0, 1))
        present_value[b].index_copy_(1, positions, value[b].view(S, kv_num_heads, hd).transpose(0, 1))
        mask = attention_mask(positions, keys, local_window_size if local_window_size > 0 else None)
        q = query[b].view(S, num_heads, hd).transpose(0, 1)
        y = F.scaled_dot_product_attention(q, present_key[b], present_value[b], attn_mask=mask, scale=scale,
                                           enable_gqa=num_heads != kv_num_heads)
        out[b] = y.transpose(0, 1).reshape(S, num_heads * hd)
    return out, present_key, present_value


def group_query_attention(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, num_heads,
                          kv_num_heads, scale, local_window_size):
    """edgeports_onnx::group_query_attention -> com.microsoft GroupQueryAttention."""
    from onnxscript import values

    op = getattr(values.Opset(MS_DOMAIN, MS_VERSION), GQA)
    return op(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, num_heads=int(num_heads),
              kv_num_heads=int(kv_num_heads), scale=float(scale), local_window_size=int(local_window_size),
              do_rotary=0, _outputs=3)


def gqa_attend(attn, q, k, v, states, ctx):
    """`Attention.attend` through one GroupQueryAttention: q[B,H,L,hd], new k/v[B,Hkv,L,hd] (rotated), caches
    [B,Hkv,T,hd] -> (y[B,L,H*hd], [present k, present v]). seqlens_k (per row: tokens in the cache after
    this call, minus one) comes from ctx.pos and L inside the graph; total_sequence_length from shapes only:
    L for a fresh prompt (the op's "first prompt"), else the cache's capacity T (a continued prompt or a
    decode step; the positions come from seqlens_k). The CUDA EP reads total_sequence_length on the host, and
    a value computed from the device-resident pos reached it stale (decode errors of 3e-2 on tiny-llama, "total
    sequence length must be positive" on a dynamic cache; H100, onnxruntime-gpu 1.31.1): shapes are host-side."""
    import torch

    B, H, L, hd = q.shape
    capacity = states[0].shape[2]
    total = torch.full((), L if ctx.first else capacity, dtype=torch.int32, device=q.device)
    seqlens = (ctx.pos + L - 1).to(torch.int32).reshape(1).expand(B).contiguous()
    y, k_cache, v_cache = gqa_op()(q.transpose(1, 2).reshape(B, L, H * hd), k.transpose(1, 2).reshape(B, L, -1),
                                   v.transpose(1, 2).reshape(B, L, -1), states[0], states[1], seqlens, total,
                                   H, attn.n_kv_heads, float(attn.scaling), attn.sliding_window or -1)
    return y, [k_cache, v_cache]


@contextlib.contextmanager
def gqa_attention(module):
    """Within: every `Attention` under `module` attends through `gqa_attend` (instance attribute over the
    class method, removed on exit). Yields how many Attention modules were patched."""
    from edgeports.models.layers.attention import Attention

    layers = [m for m in module.modules() if isinstance(m, Attention)]
    for m in layers:
        m.attend = functools.partial(gqa_attend, m)
    try:
        yield len(layers)
    finally:
        for m in layers:
            del m.attend


def gqa_translation_table() -> dict:
    """torch.onnx custom_translation_table entry for the GroupQueryAttention lowering."""
    import torch

    register_gqa_schema()
    gqa_op()
    return {torch.ops.edgeports_onnx.group_query_attention.default: group_query_attention}
