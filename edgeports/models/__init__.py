"""Models: specs (the zoo), our compact export-friendly implementations, and weight loading.

Each arch lives in `edgeports/models/archs/<arch>.py` (the file name is ModelSpec.arch) and declares
itself there; nothing else keeps a list of archs. The module-level names:

    FAMILY            "transformer" | "ssm" | "hybrid"
    HF_MODEL_TYPE     the transformers `model_type` it implements (config.json -> arch)
    build(spec) -> LM                 random weights; called under a torch.device context
    hf_name_map(spec) -> {our_name: hf_tensor_name}   every weight of our model (parameters and persistent
                                      buffers; tied tensors once, under their first name)
    hf_convert(spec, our_name, tensor) -> tensor      optional: reshape / split a checkpoint tensor
    HF_IGNORE         optional tuple of regexes: checkpoint tensors that may stay unused

`edgeports.models.weights.rename_map(spec, rules)` builds hf_name_map from (regex, replacement) rules.
Buffers computed at construction (e.g. rope frequencies) should be created with an explicit
`device="cpu"`, so that loading can build the model on the meta device without a random init.
"""

from __future__ import annotations

import importlib

import torch

from edgeports.errors import EdgeportsError
from edgeports.models.lm import LM, Block, Ctx
from edgeports.models.spec import ModelSpec, all_specs, get_spec, zoo_names
from edgeports.models.state import State, StateSlot

__all__ = ["LM", "Block", "Ctx", "ModelSpec", "State", "StateSlot", "all_specs", "arch_module", "build",
           "from_pretrained", "get_spec", "zoo_names"]

DTYPE = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
         "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16; a clear error for anything else."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPE[name]
    except KeyError:
        raise EdgeportsError(f"unknown dtype {name!r} (use one of fp32, fp16, bf16)") from None


def arch_module(arch: str):
    """The module implementing `arch` (edgeports.models.archs.<arch>)."""
    try:
        return importlib.import_module(f"edgeports.models.archs.{arch}")
    except ModuleNotFoundError as e:
        if e.name == f"edgeports.models.archs.{arch}":
            raise EdgeportsError(f"no implementation for arch {arch!r}") from None
        raise


def build(spec: ModelSpec | str, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
          seed: int = 0) -> LM:
    """Build the model with seeded random weights (latency and memory do not depend on their values)."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    torch.manual_seed(seed)
    with torch.device("cpu"):
        lm = arch_module(spec.arch).build(spec)
    return lm.to(device=device, dtype=torch_dtype(dtype or spec.dtype)).eval()


def from_pretrained(path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu") -> LM:
    """Load a local HF checkpoint directory (config.json + safetensors, sharded or not)."""
    from edgeports.models.weights import load_pretrained

    return load_pretrained(path, dtype=dtype, device=device)
