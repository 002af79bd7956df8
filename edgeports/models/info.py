"""Model facts for `edgeports models`: parameter count, layers, KV-cache bytes per token, SSM state bytes.

Every number comes from our implementation itself, never from a second formula that could drift
from it: parameters are counted on a model built on the meta device (shapes only, so a 3B model
costs nothing), and cache sizes come from `lm.state_layout`, the same layout exporters write into
artifact manifests.

KV bytes per token are the *marginal* bytes of one more token of context at long context
(`LONG_CONTEXT` tokens). An attention layer whose implementation keeps a window-sized cache
(Hymba's sliding-window layers) stops growing once its window is full, so it adds nothing per
token there; its bytes appear in `kv_bytes_fixed` instead and `kv_window_capped` says so. A layer
configured with a window but given a full-length cache (e.g. Phi-3-mini-4k's sliding_window=2047
in our phi3) grows like any other and is counted per token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from edgeports.errors import EdgeportsError
from edgeports.models import arch_module, torch_dtype
from edgeports.models.lm import LM
from edgeports.models.spec import ModelSpec, get_spec
from edgeports.models.state import layout_bytes

# Context length at which the marginal KV bytes per token are measured: past every window size of
# the zoo's models (Hymba: 1024 + 128 meta tokens), and the study's ~57K-token regime.
LONG_CONTEXT = 1 << 16

_KV = ("k", "v")
_SSM = ("conv", "ssm")


@dataclass(frozen=True)
class ModelInfo:
    """One model's size facts, for the spec's dtype and batch 1.

    kv_bytes_per_token: bytes one more token of context adds to the KV caches at LONG_CONTEXT.
    kv_bytes_fixed:     KV bytes that do not grow with context there (window-sized caches, meta tokens).
    kv_window_capped:   some caches stop growing at a window, so short contexts cost more per token.
    ssm_state_bytes:    conv + SSM states of one sequence (independent of context length).
    """

    name: str
    family: str
    arch: str
    dtype: str
    params: int
    layers: int
    kv_bytes_per_token: int
    kv_bytes_fixed: int
    kv_window_capped: bool
    ssm_state_bytes: int
    published_params: float | None

    def kv_bytes(self, context: int) -> int:
        """KV-cache bytes at `context` tokens; exact for context >= LONG_CONTEXT (and for uncapped models)."""
        return self.kv_bytes_fixed + self.kv_bytes_per_token * context


def build_meta(spec: ModelSpec) -> LM:
    """The model built on the meta device in the spec's dtype: shapes and dtypes only, no memory."""
    with torch.device("meta"):
        lm = arch_module(spec.arch).build(spec)
    return lm.to(dtype=torch_dtype(spec.dtype))


def count_params(lm: torch.nn.Module) -> int:
    """Parameters, shared ones counted once.

    `parameters()` already yields a shared Parameter once; LM.num_params dedups by data_ptr, which
    is 0 for every meta tensor, so it cannot be used on a meta-built model.
    """
    return sum(p.numel() for p in lm.parameters())


def model_info(spec: ModelSpec | str) -> ModelInfo:
    """Size facts of a zoo model (or local HF dir); EdgeportsError if its arch is not implemented."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    lm = build_meta(spec)

    def kv(context: int) -> int:
        return layout_bytes(lm.state_layout(1, context), _KV)

    per_token = kv(LONG_CONTEXT + 1) - kv(LONG_CONTEXT)
    short_per_token = kv(2) - kv(1)
    ssm = layout_bytes(lm.state_layout(1, 1), _SSM)
    return ModelInfo(
        name=spec.name, family=spec.family, arch=spec.arch, dtype=spec.dtype,
        params=count_params(lm),
        layers=int(spec.config.get("num_hidden_layers", len(lm.blocks))),
        kv_bytes_per_token=per_token,
        kv_bytes_fixed=kv(LONG_CONTEXT) - per_token * LONG_CONTEXT,
        kv_window_capped=per_token < short_per_token,
        ssm_state_bytes=ssm,
        published_params=spec.published_params,
    )


def info_table(specs: list[ModelSpec | str]) -> list[dict[str, Any]]:
    """One JSON-ready row per model for `edgeports models --json`.

    A model whose arch is not implemented gets status "not implemented" (any other user error:
    "error"), the reason, and None for the numbers, so the table still lists the whole zoo.
    """
    rows = []
    for spec in specs:
        spec = get_spec(spec) if isinstance(spec, str) else spec
        status = "not implemented"
        try:
            arch_module(spec.arch)
            status = "error"
            row = asdict(model_info(spec))
            row.update(status="ok", reason=None)
        except EdgeportsError as e:
            row = {f: None for f in ModelInfo.__dataclass_fields__}
            row.update(name=spec.name, family=spec.family, arch=spec.arch, dtype=spec.dtype,
                       published_params=spec.published_params, status=status, reason=str(e))
        rows.append(row)
    return rows
