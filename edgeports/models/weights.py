"""Loading local HF checkpoints (config.json + safetensors, single file or sharded) into our modules.

Each arch module provides `hf_name_map(spec) -> {our_name: hf_name}` over our model's weights (tied
tensors listed once, under their first name), optionally `hf_convert(spec, our_name, tensor) -> tensor`
for reshapes/splits, and optionally `HF_IGNORE` (regexes of checkpoint tensors that may stay unused).
Loading is strict: a missing tensor, a shape mismatch or an unused checkpoint tensor is an
EdgeportsError naming it. The model is built on the meta device and the loaded tensors are assigned, so
nothing is randomly initialised or held twice (buffers computed at construction, like rope tables, must
be created with an explicit `device="cpu"` to stay real there; otherwise a normal, slower build is used).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from edgeports.errors import EdgeportsError
from edgeports.models.lm import LM
from edgeports.models.spec import DTYPES, ModelSpec

# checkpoint tensors that never carry weights (old checkpoints saved the rotary tables)
ALWAYS_IGNORED = (r"\.rotary_emb\.inv_freq$",)
_DTYPE_NAMES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "fp32": "float32",
                "fp16": "float16", "bf16": "bfloat16"}


def _hf_json_floats(obj: dict):
    # transformers writes non-finite floats as {"__float__": "Infinity"} (e.g. Mamba2's time_step_limit)
    return float(obj["__float__"]) if obj.keys() == {"__float__"} else obj


def _read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise EdgeportsError(f"{path} has no config.json (expected a local Hugging Face checkpoint directory)")
    try:
        return json.loads(cfg_file.read_text(), object_hook=_hf_json_floats)
    except json.JSONDecodeError as e:
        raise EdgeportsError(f"{cfg_file} is not valid JSON: {e}") from None


def arch_for_model_type(model_type: str):
    """The arch module whose HF_MODEL_TYPE is `model_type` (archs are discovered, never listed)."""
    import importlib
    import pkgutil

    import edgeports.models.archs as archs
    from edgeports.models import arch_module

    try:  # archs are usually named after their model_type
        mod = arch_module(model_type)
        if getattr(mod, "HF_MODEL_TYPE", None) == model_type:
            return mod
    except EdgeportsError:
        pass
    for info in pkgutil.iter_modules(archs.__path__):
        mod = importlib.import_module(f"{archs.__name__}.{info.name}")
        if getattr(mod, "HF_MODEL_TYPE", None) == model_type:
            return mod
    raise EdgeportsError(f"model_type {model_type!r} has no edgeports implementation")


def spec_from_hf_dir(path) -> ModelSpec:
    """config.json of a local HF checkpoint -> ModelSpec (arch from model_type, family from the arch module)."""
    path = Path(path)
    config = _read_config(path)
    model_type = config.get("model_type")
    if not model_type:
        raise EdgeportsError(f"{path / 'config.json'} has no model_type")
    mod = arch_for_model_type(model_type)
    dtype = _DTYPE_NAMES.get(str(config.get("dtype") or config.get("torch_dtype") or "bfloat16"), "bfloat16")
    assert dtype in DTYPES
    return ModelSpec(name=path.resolve().name, family=mod.FAMILY, arch=mod.__name__.rsplit(".", 1)[1],
                     config=config, dtype=dtype, source=f"local checkpoint {path}")


def _meta_model(spec: ModelSpec) -> LM:
    from edgeports.models import arch_module

    with torch.device("meta"):
        return arch_module(spec.arch).build(spec)


def weight_names(lm: LM) -> list[str]:
    """Names of the model's weights (parameters and persistent buffers), each shared tensor once."""
    seen, names = set(), []
    for name, t in lm.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            names.append(name)
    return names


def rename_map(spec: ModelSpec, rules) -> dict[str, str]:
    """{our_name: hf_name} for every weight of `spec`'s model, renamed by regex `rules` [(pattern, repl)].

    The first matching rule applies; a weight no rule matches is a bug in the arch module.
    """
    out = {}
    for name in weight_names(_meta_model(spec)):
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, name)
            if n:
                out[name] = new
                break
        else:
            raise RuntimeError(f"{spec.arch}: no HF name rule for weight {name!r}")
    return out


def checkpoint_files(path: Path) -> dict[str, Path]:
    """hf_name -> the safetensors file holding it (model.safetensors, or the sharded index)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing:
            raise EdgeportsError(f"{index} lists shard {missing[0]}, which is not in {path}")
        return {name: path / f for name, f in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise EdgeportsError(f"{path} has no *.safetensors weights (only safetensors checkpoints are supported)")
    from safetensors import safe_open

    out = {}
    for f in files:
        with safe_open(f, framework="pt") as fh:
            out.update({k: f for k in fh.keys()})
    return out


def _retie(lm: LM, groups: list[list[str]]) -> None:
    # load_state_dict(assign=True) replaces the first parameter of a tied group only: point the others at it
    for names in groups:
        src = lm.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            setattr(lm.get_submodule(owner), attr, src)


def load_pretrained(path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu") -> LM:
    """Build the model of a local HF checkpoint directory with its weights (strict name and shape checks)."""
    from safetensors import safe_open

    from edgeports.models import arch_module, torch_dtype

    path = Path(path)
    spec = spec_from_hf_dir(path)
    mod = arch_module(spec.arch)
    dtype = torch_dtype(dtype or spec.dtype)
    lm = _meta_model(spec)
    expected = lm.state_dict(keep_vars=True)
    tied: dict[int, list[str]] = {}
    for name, p in lm.named_parameters(remove_duplicate=False):
        tied.setdefault(id(p), []).append(name)
    name_map = mod.hf_name_map(spec)
    unmapped = [n for n in weight_names(lm) if n not in name_map]
    if unmapped:  # a bug in the arch module, not in the checkpoint
        raise RuntimeError(f"{spec.arch}: weight {unmapped[0]} is not in hf_name_map")
    convert = getattr(mod, "hf_convert", None)
    files = checkpoint_files(path)

    state, handles = {}, {}
    try:
        for ours, hf in name_map.items():
            if hf not in files:
                raise EdgeportsError(f"checkpoint {path} is missing tensor {hf!r} (for {spec.arch} weight {ours})")
            f = files[hf]
            if f not in handles:
                handles[f] = safe_open(f, framework="pt", device="cpu")
            t = handles[f].get_tensor(hf)
            if convert is not None:
                t = convert(spec, ours, t)
            want = tuple(expected[ours].shape)
            if tuple(t.shape) != want:
                raise EdgeportsError(f"checkpoint tensor {hf!r} has shape {tuple(t.shape)}, but {spec.arch} weight "
                                     f"{ours} needs {want} (config.json does not match the weights?)")
            state[ours] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    finally:
        handles.clear()

    ignore = [re.compile(p) for p in (*ALWAYS_IGNORED, *getattr(mod, "HF_IGNORE", ()))]
    used = set(name_map.values())
    unused = sorted(n for n in files if n not in used and not any(p.search(n) for p in ignore))
    if unused:
        raise EdgeportsError(f"checkpoint tensor {unused[0]!r} is not used by arch {spec.arch}"
                             + (f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""))

    if any(b.is_meta for b in lm.buffers()):
        # a buffer computed at construction without an explicit device: take the slow path, a real build
        with torch.device("cpu"):
            lm = mod.build(spec)
        lm.load_state_dict(state, strict=False)
    else:
        lm.load_state_dict(state, strict=False, assign=True)
        _retie(lm, [g for g in tied.values() if len(g) > 1])
    return lm.to(device=device, dtype=dtype).eval()
