"""Eager export: the model as PyTorch runs it, no compilation.

Random weights are not written out: the manifest records the seed and the runner rebuilds the
identical model (`build(spec, seed=...)` is deterministic). With `options.weights` (a local HF
checkpoint) or an LM handed in, the weights go into `model.safetensors`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from edgeports.exporters.base import (
    Artifact,
    ExportOptions,
    build_lm,
    layout_json,
    library_versions,
    lm_options,
    resolve_spec,
    stage,
    write_manifest,
)
from edgeports.models import LM, ModelSpec, arch_module, torch_dtype

NAME = "eager"
WEIGHTS_FILE = "model.safetensors"


def available() -> tuple[bool, str]:
    """Eager needs nothing beyond torch."""
    return True, ""


def export(source: ModelSpec | LM, out_dir: str | Path, options: ExportOptions, *, backend: str = NAME) -> Artifact:
    """Write the eager artifact: manifest (+ model.safetensors unless the weights are seeded random).
    `backend` names another backend that runs the same artifact (torch.compile's JIT mode)."""
    t0 = time.perf_counter()
    spec = resolve_spec(source)
    with stage(out_dir) as tmp:
        if isinstance(source, LM):
            lm = source
            options = lm_options(lm, options)
            _save(lm, tmp)
        elif options.weights:
            lm = build_lm(spec, options, device="cpu")
            _save(lm, tmp)
        else:
            # only the layout is needed; building on the meta device costs no memory or time
            lm = _meta_lm(spec, options.dtype)
        art = write_manifest(tmp, Path(out_dir), backend=backend, spec=spec, options=options,
                             state_layout=layout_json(lm.state_layout(options.batch, options.max_len)),
                             shape_ranges={"batch": [1, options.batch], "max_len": None},
                             versions=library_versions("safetensors"), export_s=time.perf_counter() - t0)
    return art


def _save(lm: LM, directory: Path) -> None:
    from safetensors.torch import save_model

    # save_model drops tied duplicates (e.g. lm_head tied to the embedding); load_model restores them
    save_model(lm, str(directory / WEIGHTS_FILE))


def _meta_lm(spec: ModelSpec, dtype: str) -> LM:
    with torch.device("meta"):
        return arch_module(spec.arch).build(spec).to(dtype=torch_dtype(dtype))
