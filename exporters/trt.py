"""TensorRT export: the ONNX exporter's graphs -> serialized TensorRT 10 engines.

    options.extra: trt_ssm = "plugin" (default) | "onnx-ops"   SSM ops as our IPluginV3 plugins (the ONNX
                                                               exporter's `custom` lowering, ai.edgeports nodes)
                                                               or as the standard-op decomposition, for comparison
                   trt_typing = "strong" (default) | "weak"     strongly typed network (the graph's dtypes, SSM
                                                               states stay float32) or weakly typed with the
                                                               FP16/BF16 builder flag of options.dtype
                   trt_opt_lens = "256,4096"                    upper ends of the prefill profiles' length buckets
                   trt_workspace_gib = 4                        builder workspace limit

One engine per ONNX graph: prefill.engine (first chunk from a fresh state), prefill_next.engine (later
chunks; only when the ONNX export wrote prefill_next.onnx, i.e. not with onnx_chunked=false) and
decode.engine. Each prefill engine gets one optimisation profile per length bucket ([1, 256], [257, 4096],
[4097, max_len] by default, each tuned at its upper end); decode gets one static profile (batch, 1 token,
states of (batch, max_len)). The manifest's `graphs` lists the engines built; the artifact also holds,
with plugins, the plugin library they were built against; the manifest records the TensorRT version, GPU
and compute capability, since an engine is only valid there. The builder's timing cache is kept per
GPU + TensorRT version under the edgeports cache.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeports.errors import EdgeportsError
from edgeports.exporters import plugin_build
from edgeports.exporters.base import (
    Artifact,
    ExportOptions,
    library_versions,
    resolve_spec,
    stage,
    write_manifest,
)
from edgeports.models import LM, ModelSpec

NAME = "trt"
HOW = "use the x86-rtx or jetson-l4t container (make image-x86 / make image-jetson), which ship TensorRT 10"
SSM_MODES = ("plugin", "onnx-ops")
TYPINGS = ("strong", "weak")
DOMAIN = "ai.edgeports"
PLUGIN_NAMESPACE = "edgeports"
PLUGIN_VERSION = "1"
# The contract's optional inputs of each ai.edgeports node, after its required ones (notes: KERNELS.md).
REQUIRED_INPUTS = {"SelectiveScan": 5, "SsdChunkScan": 5, "SelectiveStateUpdate": 6, "CausalConv1d": 2,
                   "CausalConv1dUpdate": 3}
GRAPHS = ("prefill", "prefill_next", "decode")  # the ONNX exporter's; prefill_next is optional
PREFILL_GRAPHS = ("prefill", "prefill_next")  # L dynamic: one profile per length bucket
DEFAULT_OPT_LENS = (256, 4096)


def import_tensorrt():
    """tensorrt (>= 10), or EdgeportsError saying how to get it."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a broken install failing to load its libraries
        raise EdgeportsError(f"tensorrt is not importable ({type(e).__name__}: {e}); {HOW}") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise EdgeportsError(f"TensorRT {trt.__version__} is too old (the IPluginV3 plugins need >= 10); {HOW}")
    return trt


def available() -> tuple[bool, str]:
    """TensorRT >= 10 importable and a CUDA GPU present (engines are built on the GPU they run on)."""
    try:
        import_tensorrt()
    except EdgeportsError as e:
        return False, str(e)
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU (TensorRT engines are built and run on the GPU they target)"
    return True, ""


def device_facts() -> dict[str, Any]:
    """What an engine is tied to: TensorRT version, GPU name and compute capability."""
    import torch

    trt = import_tensorrt()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"tensorrt": trt.__version__, "gpu": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda}


# ---- plugin library -------------------------------------------------------------------------------
def plugin_library() -> Path:
    """The plugin library to build with: prebuilt ($EDGEPORTS_TRT_PLUGIN_LIB, exporters/plugins/build) or built
    now with CMake against the TensorRT headers here."""
    return plugin_build.find_plugins() or plugin_build.build_plugins()


def load_plugins(path: Path) -> None:
    """Register the edgeports plugin creators with TensorRT's global registry (idempotent)."""
    trt = import_tensorrt()
    registry = trt.get_plugin_registry()

    def registered() -> bool:
        try:
            return registry.get_creator("SelectiveScan", PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None
        except Exception:  # older bindings raise instead of returning None
            return False

    if registered():
        return
    registry.load_library(str(path))  # calls the library's getCreators() / setLoggerFinder()
    if not registered():
        import ctypes

        # a host whose loadLibrary did not take the V3 creators: register them through the library itself
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        if lib.edgeports_trt_register_plugins() < 0 or not registered():
            raise EdgeportsError(f"{path}: the edgeports plugins did not register with TensorRT {trt.__version__}")


# ---- ONNX preparation -----------------------------------------------------------------------------
def prepare_for_parser(model) -> int:
    """Rewrite the ai.edgeports nodes of an onnx.ModelProto in place for TensorRT's ONNX parser; returns
    how many. Absent optional inputs (empty names) are dropped and the kept ones recorded in the int
    attribute `present` (bit i = optional input i), and plugin_namespace/plugin_version name our creators."""
    from onnx import helper

    count = 0
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain != DOMAIN:
                continue
            if node.op_type not in REQUIRED_INPUTS:
                raise EdgeportsError(f"ONNX node {node.name!r}: unknown {DOMAIN} op {node.op_type!r}")
            count += 1
            if any(a.name == "present" for a in node.attribute):
                continue  # already prepared: its inputs are compacted, recomputing would lose the mask
            req = REQUIRED_INPUTS[node.op_type]
            names = list(node.input)
            if any(not n for n in names[:req]):
                raise EdgeportsError(f"ONNX node {node.name!r} ({node.op_type}) lacks a required input")
            present = sum(1 << i for i, n in enumerate(names[req:]) if n)
            del node.input[:]
            node.input.extend(n for n in names if n)
            keep = [a for a in node.attribute if a.name not in ("plugin_namespace", "plugin_version")]
            del node.attribute[:]
            node.attribute.extend(keep + [helper.make_attribute("present", present),
                                          helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE),
                                          helper.make_attribute("plugin_version", PLUGIN_VERSION)])
    return count


def _graphs(graph):
    """A graph and every subgraph (Scan/Loop/If bodies) inside it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def io_signature(model) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX graph in order: name, elem type name, dims (int or symbol)."""
    from onnx import TensorProto

    def rows(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
            out.append({"name": v.name, "dtype": TensorProto.DataType.Name(t.elem_type).lower(), "dims": dims})
        return out

    inits = {i.name for i in model.graph.initializer}
    return {"inputs": rows(v for v in model.graph.input if v.name not in inits), "outputs": rows(model.graph.output)}


def typing_of(options: ExportOptions) -> str:
    """options.extra["trt_typing"], checked: "strong" (the ONNX graph's dtypes) or "weak" (TensorRT picks)."""
    return options.choice("trt_typing", "strong", TYPINGS)


def opt_lens(options: ExportOptions) -> tuple[int, ...]:
    """The prefill bucket bounds of options.extra["trt_opt_lens"] ("256,4096")."""
    raw = options.get("trt_opt_lens", ",".join(map(str, DEFAULT_OPT_LENS)))
    try:
        return tuple(int(x) for x in str(raw).split(","))
    except ValueError:
        raise EdgeportsError(f"trt_opt_lens must be a comma list of token counts, got {raw!r}") from None


def ssm_mode(options: ExportOptions) -> str:
    """options.extra["trt_ssm"], checked."""
    return options.choice("trt_ssm", "plugin", SSM_MODES)


def workspace_bytes(options: ExportOptions) -> int:
    """options.extra["trt_workspace_gib"] (default 4) in bytes, checked."""
    raw = options.get("trt_workspace_gib", 4)
    try:
        gib = float(raw)
    except (TypeError, ValueError):
        gib = 0.0
    if not gib > 0:
        raise EdgeportsError(f"option trt_workspace_gib must be a positive number of GiB, got {raw!r}")
    return int(gib * 2**30)


def length_buckets(max_len: int, opt_lens: tuple[int, ...] = DEFAULT_OPT_LENS) -> list[tuple[int, int, int]]:
    """Prefill profiles (min, opt, max) covering [1, max_len]: one per bucket, tuned at its upper end."""
    bounds = sorted({b for b in opt_lens if 0 < b < max_len}) + [max_len]
    out, lo = [], 1
    for hi in bounds:
        out.append((lo, hi, hi))
        lo = hi + 1
    return out


def _profile_shapes(sig: dict, graph: str, batch: int, state_shapes: list[tuple[int, ...]],
                    bucket: tuple[int, int, int]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min/opt/max shape of every input. The graphs take [ids, *state] (the LM's forward signature): the
    token ids [B, L] vary in length (prefill) and state i has the manifest layout's shape i."""
    inputs = sig["inputs"]
    if len(inputs) != len(state_shapes) + 1:
        raise EdgeportsError(f"{graph}.onnx has {len(inputs)} inputs; expected the token ids and "
                             f"{len(state_shapes)} state tensors of the manifest layout")
    lens = bucket if graph in PREFILL_GRAPHS else (1, 1, 1)
    shapes = {inputs[0]["name"]: tuple((batch, n) for n in lens)}
    for inp, s in zip(inputs[1:], state_shapes, strict=True):
        if len(inp["dims"]) != len(s) or any(isinstance(d, int) and d > 0 and d != n for d, n in zip(inp["dims"], s, strict=True)):
            raise EdgeportsError(f"{graph}.onnx input {inp['name']!r} has dims {inp['dims']}, the layout says {list(s)}")
        shapes[inp["name"]] = (s, s, s)
    return shapes


# ---- engine building ------------------------------------------------------------------------------
def build_engine(onnx_path: Path, sig: dict, graph: str, options: ExportOptions,
                 state_shapes: list[tuple[int, ...]], timing_cache: Path) -> bytes:
    """Parse one ONNX graph and build its serialized engine."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typing = typing_of(options)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typing == "strong" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeportsError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes(options))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for the per-layer profile
    if typing == "weak" and options.dtype != "float32":
        config.set_flag(trt.BuilderFlag.FP16 if options.dtype == "float16" else trt.BuilderFlag.BF16)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    buckets = length_buckets(options.max_len, opt_lens(options)) if graph in PREFILL_GRAPHS else [(1, 1, 1)]
    for bucket in buckets:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in _profile_shapes(sig, graph, options.batch, state_shapes, bucket).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgeportsError(f"TensorRT failed to build the {graph} engine (see the TensorRT log above)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _onnx_exporter():
    try:
        from edgeports.exporters import onnx as onnx_exporter
    except ImportError as e:
        raise EdgeportsError(f"the TensorRT exporter builds from the ONNX exporter's graphs, which is missing ({e})") from None
    return onnx_exporter


def _onnx_option(name: str):
    """The ONNX exporter's checker `name`, for an onnx_* key a trt export passes on to it."""
    return lambda options: getattr(_onnx_exporter(), name)(options)


# the `--opt` keys this backend reads, each with the function that checks its value (edgeports.options);
# onnx_ssm is trt_ssm's to set, and onnx_attention=gqa has no TensorRT lowering
OPTIONS = {"trt_ssm": ssm_mode, "trt_typing": typing_of, "trt_opt_lens": opt_lens, "trt_workspace_gib": workspace_bytes,
           "onnx_opset": _onnx_option("opset"), "onnx_chunked": _onnx_option("graphs"),
           "onnx_cache": _onnx_option("cache_mode")}


def export(source: ModelSpec | LM, out_dir: str | Path, options: ExportOptions) -> Artifact:
    """ONNX (via exporters/onnx.py) -> prefill.engine (+ prefill_next.engine) + decode.engine (+ the plugin
    library) + manifest."""
    import onnx

    if dict(options.extra).get("onnx_attention", "standard") != "standard":  # the ONNX exporter checks the value
        raise EdgeportsError("--opt onnx_attention=gqa emits ONNX Runtime's com.microsoft GroupQueryAttention, which "
                             "TensorRT's ONNX parser does not know: export for trt without it")
    t0 = time.perf_counter()
    import_tensorrt()
    mode = ssm_mode(options)
    spec = resolve_spec(source)
    facts = device_facts()
    plugin_path = plugin_library() if mode == "plugin" else None
    if plugin_path is not None:
        load_plugins(plugin_path)
    cache_tag = f"{facts['gpu']}-sm{facts['compute_capability']}-trt{facts['tensorrt']}".replace(" ", "_")
    timing_cache = plugin_build.cache_dir().parent / "trt-timing" / f"{cache_tag}.cache"
    with stage(out_dir) as tmp:
        # plugin mode asks for the custom-domain lowering; onnx-ops takes the exporter's default, the
        # standard-op decomposition
        extra = {k: v for k, v in options.extra if not k.startswith("trt_") and k != "onnx_ssm"}
        onnx_opts = replace(options, extra=tuple({**extra, **({"onnx_ssm": "custom"} if mode == "plugin" else {})}.items()))
        onnx_art = _onnx_exporter().export(source, tmp / "onnx", onnx_opts)
        state_shapes = [tuple(s["shape"]) for s in onnx_art.state_layout]
        signatures, nodes = {}, {}
        # prefill_next.onnx is absent with onnx_chunked=false: the runner then refuses chunked prefill
        built = [g for g in GRAPHS if g in onnx_art.shape_ranges["graphs"]]
        for graph in built:
            model = onnx.load(str(onnx_art.file(f"{graph}.onnx")))
            nodes[graph] = prepare_for_parser(model)
            if mode == "plugin" and nodes[graph] == 0 and spec.family != "transformer":
                raise EdgeportsError(f"{graph}.onnx has no {DOMAIN} nodes: the ONNX exporter did not use the custom lowering")
            if mode == "onnx-ops" and nodes[graph]:
                raise EdgeportsError(f"{graph}.onnx has {DOMAIN} nodes although trt_ssm=onnx-ops asked for standard ops")
            signatures[graph] = io_signature(model)
            prepared = tmp / "onnx" / f"{graph}.trt.onnx"
            big = model.ByteSize() > 1_900_000_000  # protobuf's 2 GiB limit: weights go beside the graph
            onnx.save_model(model, str(prepared), save_as_external_data=big, all_tensors_to_one_file=True,
                            location=f"{graph}.trt.onnx.data")
            (tmp / f"{graph}.engine").write_bytes(
                build_engine(prepared, signatures[graph], graph, options, state_shapes, timing_cache))
        shutil.rmtree(tmp / "onnx")  # the engines are self-contained; the ONNX artifact stays reproducible
        if plugin_path is not None:
            shutil.copy2(plugin_path, tmp / plugin_build.PLUGINS_LIB)
        art = write_manifest(
            tmp, Path(out_dir), backend=NAME, spec=spec, options=options, state_layout=onnx_art.state_layout,
            shape_ranges={"batch": [options.batch, options.batch], "max_len": options.max_len,
                          "prefill_profiles": length_buckets(options.max_len, opt_lens(options)),
                          "graphs": built, "io": signatures, "trt_ssm": mode, "plugin_nodes": nodes,
                          "typing": typing_of(options)},
            versions={**library_versions("tensorrt", "onnx"), **facts}, export_s=time.perf_counter() - t0)
    return art
