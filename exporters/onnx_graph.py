"""Post-processing of the exported ONNX graphs (onnx_ir models): shared external weights, readable
dynamic-dimension names, the I/O signature, and which state slots may be updated in place.

Shared weights: the three graphs of an artifact hold the same weights, often under different
initializer names (the exporter names folded tensors val_<n>). `WeightStore` writes every distinct
tensor of at least INLINE_MAX bytes (bool masks excepted) once into `weights.bin` (identical bytes, dtype and shape = the
same tensor), gives it one name in every graph ("weights/<first name seen>"), and points the graphs' initializers at it as ONNX
external data. `weights.json` indexes the file ({name: offset, length, dtype, shape}) so a runner can
load each tensor once and hand it to every session (ONNX Runtime's shared initializers).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "weights.bin"
WEIGHTS_INDEX = "weights.json"
PREFIX = "weights/"
INLINE_MAX = 1024  # smaller tensors (shape constants, scalars) stay inside the graph
ALIGN = 64  # bytes; tensors of ALIGN_BIG or more start on a 64 KiB boundary (mmap-friendly)
ALIGN_BIG, ALIGN_BIG_TO = 1 << 20, 1 << 16
# Ops that may write their output into their own input's buffer: element i is read before element i is
# written and nothing else is read (ScatterND/ScatterElements skip their input copy when the buffers are one).
INPLACE_SAFE = {"Add", "Sub", "Mul", "Div", "Where", "Identity", "ScatterND", "ScatterElements", "Neg", "Relu"}
# Contrib ops whose contract lets an output share an input's buffer: {(domain, op_type): {input index: output
# index}} (GroupQueryAttention: present_key/present_value in past_key/past_value's buffer, onnx_custom.py).
SHARED_BUFFER = {("com.microsoft", "GroupQueryAttention"): {3: 1, 4: 2}}


def stays_inline(tensor) -> bool:
    """Whether an initializer stays inside its graph instead of going to weights.bin: small ones (under
    INLINE_MAX bytes), and bool ones (masks, e.g. Mamba2's [chunk_size, chunk_size] SSD masks), which a runner
    could only hand to onnxruntime 1.31 by copying: it takes no bool through DLPack ("Unsupported code 6"),
    and on the H100 its CUDA EP refused a bool weight added as a shared initializer (INVALID_ARGUMENT)."""
    import onnx_ir as ir

    return tensor.nbytes < INLINE_MAX or tensor.dtype == ir.DataType.BOOL


class WeightStore:
    """One weights.bin shared by several graphs; tensors deduplicated by content."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / WEIGHTS_FILE
        self.index: dict[str, dict[str, Any]] = {}
        self._by_digest: dict[str, str] = {}
        self._size = 0
        self.path.write_bytes(b"")

    def externalize(self, model) -> None:
        """Move every initializer that does not stay inline (`stays_inline`), of the main graph and its
        subgraphs, into the store."""
        import onnx_ir as ir
        from onnx_ir import convenience

        for graph in (model.graph, *model.graph.subgraphs()):
            for value in list(graph.initializers.values()):
                tensor = value.const_value
                if tensor is None or stays_inline(tensor) or isinstance(tensor, ir.ExternalTensor):
                    continue
                name, entry = self._add(value.name, tensor)
                twin = graph.initializers.get(name)
                if twin is not None and twin is not value:  # the same bytes twice in this graph: keep one
                    convenience.replace_all_uses_with(value, twin)
                    graph.initializers.pop(value.name)
                    continue
                value.name = name  # the graph's initializer table follows the rename
                value.const_value = ir.ExternalTensor(WEIGHTS_FILE, entry["offset"], entry["length"], tensor.dtype,
                                                      shape=tensor.shape, name=name, base_dir=self.directory)

    def _add(self, name: str, tensor) -> tuple[str, dict[str, Any]]:
        data = tensor.tobytes()
        digest = hashlib.sha1(data + f"{tensor.dtype}{tuple(tensor.shape)}".encode()).hexdigest()
        if digest in self._by_digest:
            known = self._by_digest[digest]
            return known, self.index[known]
        # a prefix no exporter-made name has, so renaming cannot collide inside a graph
        name = f"{PREFIX}{name}"
        if name in self.index:  # the same name holding other bytes in another graph
            name = f"{name}.{digest[:8]}"
        align = ALIGN_BIG_TO if len(data) >= ALIGN_BIG else ALIGN
        offset = -(-self._size // align) * align
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)
        self._size = offset + len(data)
        entry = {"offset": offset, "length": len(data), "dtype": tensor.dtype.name.lower(),
                 "shape": [int(d) for d in tensor.shape]}
        self.index[name] = entry
        self._by_digest[digest] = name
        return name, entry

    def write_index(self) -> None:
        """weights.json beside weights.bin."""
        (self.directory / WEIGHTS_INDEX).write_text(json.dumps(self.index, indent=0, sort_keys=True))

    @property
    def nbytes(self) -> int:
        """Bytes of distinct tensors stored."""
        return sum(e["length"] for e in self.index.values())


def rename_dims(model, names: dict[str, str]) -> None:
    """Rename symbolic dimensions (e.g. {"s27": "L"}) in every value of the model, inside expressions
    such as "s27 + 6" too."""
    import onnx_ir as ir

    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in _values(model):
        if value.shape is None:
            continue
        dims = [ir.SymbolicDim(pattern.sub(lambda m: names[m.group(1)], d.value))
                if isinstance(d, ir.SymbolicDim) and d.value else d for d in value.shape]
        value.shape = ir.Shape(dims)


def _values(model):
    for graph in (model.graph, *model.graph.subgraphs()):
        yield from graph.inputs
        for node in graph:
            yield from node.outputs


def signature(model) -> dict[str, list[dict[str, Any]]]:
    """Graph inputs and outputs in order: name, dtype, dims (int, or the symbol's name)."""
    def rows(values):
        return [{"name": v.name, "dtype": v.dtype.name.lower() if v.dtype is not None else None,
                 "dims": [d if isinstance(d, int) else str(d.value) for d in v.shape]} for v in values]

    return {"inputs": rows(model.graph.inputs), "outputs": rows(model.graph.outputs)}


def dynamic_axes(sig: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, str]]:
    """{io name: {axis: symbol}} for every symbolic dimension of the graph's inputs and outputs."""
    out: dict[str, dict[str, str]] = {}
    for row in sig["inputs"] + sig["outputs"]:
        axes = {str(i): d for i, d in enumerate(row["dims"]) if isinstance(d, str)}
        if axes:
            out[row["name"]] = axes
    return out


def inplace_slots(model, pairs: list[tuple[str, str]]) -> dict[str, bool]:
    """For each (input, output) pair of a state slot: may the output be written into the input's buffer?

    True when every node that reads the input runs before the output's producer writes it (it is an
    ancestor of the producer through data edges, so any topological order runs it first) and the producer,
    if it reads the input itself, is element-wise in place (INPLACE_SAFE) or a contrib op whose contract lets
    that output share that input's buffer (SHARED_BUFFER). Readers inside subgraphs, an
    output with no producer, or one produced by a subgraph node are refused (conservatively)."""
    graph = model.graph
    by_name = {v.name: v for v in graph.inputs}
    outs = {v.name: v for v in graph.outputs}
    top = set(graph)
    result = {}
    for src, dst in pairs:
        value, out = by_name[src], outs[dst]
        producer = out.producer()
        readers = [node for node, _ in value.uses()]
        ok = producer is not None and producer in top and all(r in top for r in readers)
        if ok:
            before = _ancestors(producer)
            ok = all(r in before or (r is producer and _may_share(r, value, out)) for r in readers)
        result[dst] = ok
    return result


def _may_share(node, value, out) -> bool:
    """May `node` write `out` into the buffer of its input `value`?"""
    if node.domain == "" and node.op_type in INPLACE_SAFE:
        return True
    pairs = SHARED_BUFFER.get((node.domain, node.op_type), {})
    uses = [i for i, v in enumerate(node.inputs) if v is value]
    return len(uses) == 1 and pairs.get(uses[0]) is not None and node.outputs[pairs[uses[0]]] is out


def _ancestors(node) -> set:
    """Nodes whose outputs `node` depends on through explicit inputs (same graph)."""
    seen, stack = set(), [node]
    while stack:
        for inp in stack.pop().inputs:
            p = inp.producer() if inp is not None else None
            if p is not None and p not in seen:
                seen.add(p)
                stack.append(p)
    return seen
