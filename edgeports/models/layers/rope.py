"""Rotary position embeddings: default, linear, llama3 and LongRoPE (Phi-3) scaling, partial rotary.

Frequencies are computed exactly as transformers' `modeling_rope_utils` does (float32, on the CPU, at
construction) and kept in float32 buffers that `model.to(bf16)` leaves alone: a bf16 inv_freq would shift
the phase of position 50K by whole radians. cos/sin are computed per call for the call's positions
(O(L * head_dim), no table of max_position_embeddings rows) and cast to the activations' dtype, as
transformers does.

LongRoPE mirrors transformers 5.17 exactly: a call whose last position + 1 exceeds
`original_max_position_embeddings` uses the long factors for all its tokens, otherwise the short ones;
keys already in the KV cache keep the rotation they were written with. The switch is a `torch.where` on
the position tensor (no host sync, export-friendly). The attention scaling (`attention_factor`, default
sqrt(1 + ln(factor) / ln(original_max))) applies to both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgeports.errors import EdgeportsError

ROPE_TYPES = ("default", "linear", "llama3", "longrope")


@dataclass(frozen=True)
class RopeConfig:
    """Everything that determines the rotation, parsed from an HF config dict by `rope_config`."""

    rope_type: str
    theta: float
    head_dim: int
    rotary_dim: int  # leading dims of each head that rotate (partial rotary); the rest pass through
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max: int | None = None
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    attention_factor: float = 1.0


def rope_config(config: dict[str, Any], head_dim: int | None = None, yarn_is_longrope: bool = False) -> RopeConfig:
    """Parse rope settings from an HF config dict, old (`rope_scaling` + `rope_theta`) or new
    (`rope_parameters`) form. `head_dim` overrides config's head_dim / hidden_size // num_attention_heads;
    `yarn_is_longrope` mirrors transformers' Phi3Config, which reads a legacy "yarn" type as longrope."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "su" or (rope_type == "yarn" and yarn_is_longrope):
        rope_type = "longrope"
    if rope_type not in ROPE_TYPES:
        raise EdgeportsError(f"rope_type {rope_type!r} is not implemented (supported: {', '.join(ROPE_TYPES)})")
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    if head_dim is None:
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    partial = float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0)
    rotary_dim = int(head_dim * partial)
    # transformers gives a top-level original_max_position_embeddings (Phi3's convention) priority
    original_max = config.get("original_max_position_embeddings") or params.get("original_max_position_embeddings") \
        or config.get("max_position_embeddings")
    cfg: dict[str, Any] = {"rope_type": rope_type, "theta": theta, "head_dim": head_dim, "rotary_dim": rotary_dim}
    if rope_type == "linear":
        cfg["factor"] = float(params["factor"])
    elif rope_type == "llama3":
        cfg.update(factor=float(params["factor"]), low_freq_factor=float(params["low_freq_factor"]),
                   high_freq_factor=float(params["high_freq_factor"]), original_max=int(original_max))
    elif rope_type == "longrope":
        factor = params.get("factor")
        if factor is None:  # Phi3: the ratio of the extended to the pretrained context
            factor = config["max_position_embeddings"] / original_max
        attention_factor = params.get("attention_factor")
        if attention_factor is None:
            attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original_max))
        short, long = tuple(params["short_factor"]), tuple(params["long_factor"])
        if len(short) != rotary_dim // 2 or len(long) != rotary_dim // 2:
            raise EdgeportsError(f"longrope short/long factors need {rotary_dim // 2} entries each, "
                                 f"got {len(short)} and {len(long)}")
        cfg.update(factor=float(factor), original_max=int(original_max), short_factor=short, long_factor=long,
                   attention_factor=float(attention_factor))
    return RopeConfig(**cfg)


def inv_freq(cfg: RopeConfig, ext_factors: tuple[float, ...] | None = None) -> torch.Tensor:
    """float32 [rotary_dim // 2] inverse frequencies, computed as transformers does (on the CPU)."""
    dim = cfg.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    if ext_factors is not None:  # longrope
        return 1.0 / (torch.tensor(ext_factors, dtype=torch.float32, device="cpu") * cfg.theta ** exponents)
    freq = 1.0 / (cfg.theta ** exponents)
    if cfg.rope_type == "linear":
        freq = freq / cfg.factor
    elif cfg.rope_type == "llama3":
        low_wavelen = cfg.original_max / cfg.low_freq_factor
        high_wavelen = cfg.original_max / cfg.high_freq_factor
        wavelen = 2 * math.pi / freq
        scaled = torch.where(wavelen > low_wavelen, freq / cfg.factor, freq)
        smooth = (cfg.original_max / wavelen - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor)
        smoothed = (1 - smooth) * scaled / cfg.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        freq = torch.where(medium, smoothed, scaled)
    return freq


class RotaryEmbedding(nn.Module):
    """cos/sin for a call's positions. One instance can be shared by every attention layer of a model."""

    def __init__(self, cfg: RopeConfig):
        super().__init__()
        self.cfg = cfg
        self.attention_scaling = cfg.attention_factor
        if cfg.rope_type == "longrope":
            self.register_buffer("inv_freq", inv_freq(cfg, cfg.short_factor), persistent=False)
            self.register_buffer("inv_freq_long", inv_freq(cfg, cfg.long_factor), persistent=False)
        else:
            self.register_buffer("inv_freq", inv_freq(cfg), persistent=False)

    def _apply(self, fn, recurse=True):
        # follow device moves but never dtype casts: keep the float32 frequencies exact
        keep = {n: b for n, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for n, b in keep.items():
            self._buffers[n] = b.to(device=self._buffers[n].device)
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions int64 [L] (increasing) -> cos, sin [L, rotary_dim] in `dtype`."""
        freq = self.inv_freq
        if self.cfg.rope_type == "longrope":
            # transformers: seq_len = max(position_ids) + 1 > original_max -> long factors for the whole call
            freq = torch.where(positions[-1] + 1 > self.cfg.original_max, self.inv_freq_long, self.inv_freq)
        freqs = positions.float()[:, None] * freq[None, :]  # [L, rd/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [L, rd]
        cos, sin = emb.cos(), emb.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)

    def cos_sin(self, ctx, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` for ctx.positions(), computed once per call and shared through ctx.extras."""
        key = ("rope", id(self), dtype)
        if key not in ctx.extras:
            ctx.extras[key] = self(ctx.positions(), dtype)
        return ctx.extras[key]

    def extra_repr(self) -> str:
        return f"type={self.cfg.rope_type}, theta={self.cfg.theta}, rotary_dim={self.cfg.rotary_dim}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x[B,H,L,hd], cos/sin [L,rd] -> x with its first rd dims of each head rotated."""
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot, rest = x[..., :rd], x[..., rd:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)
