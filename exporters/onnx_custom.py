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
inputs, types and attributes; ONNX Runtime has no kernels for this domain (its runner refuses such
an artifact unless a custom-op library is given).
"""

from __future__ import annotations

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
# the tensor that fixes y's dtype, and the float32 state tensors (inputs and outputs)
_ACTIVATION = {"SelectiveScan": "u", "SelectiveStateUpdate": "x", "SsdChunkScan": "x", "CausalConv1d": "x",
               "CausalConv1dUpdate": "x"}
_F32 = {"state", "initial_state", "final_state", "new_state"}


def register_schemas() -> None:
    """Register the five op schemas with onnx (once per process), for onnx.checker and onnxscript."""
    from onnx import defs

    S = defs.OpSchema
    for spec in NODES:
        if defs.has(spec.op_type, VERSION, DOMAIN):
            continue
        act = _ACTIVATION[spec.op_type]
        inputs = [_param(n, act, i >= spec.required) for i, n in enumerate(spec.inputs)]
        outputs = [_param(n, act, False) for n in spec.outputs]
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


def _param(name: str, activation: str, optional: bool):
    """A schema input/output: y shares the activation's type var T, states are float32, every other
    tensor gets its own type var (the contract allows e.g. float32 A with bfloat16 u)."""
    from onnx.defs import OpSchema as S

    type_str = "tensor(float)" if name in _F32 else "T" if name in (activation, "y") else f"T_{name}"
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
