"""Models: specs (the zoo), our compact export-friendly implementations, and weight loading.

Each arch lives in `edgeports/models/archs/<arch>.py` and declares itself there: a module-level
`build(spec) -> LM` (random weights) and `HF_MODEL_TYPE` plus `hf_name_map(spec)` for loading local
HF checkpoints. Nothing else keeps a list of archs.
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
