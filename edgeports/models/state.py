"""The explicit model state: a flat, ordered tuple of named tensors and its layout description.

A State is a plain `tuple[Tensor, ...]` so that every exporter can pass it through a graph as
ordinary inputs and outputs. Its meaning lives in the layout: one `StateSlot` per tensor, in the
same order. The last slot is always `pos` (int64 [1]: tokens already consumed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STATE_KINDS = ("k", "v", "conv", "ssm", "pos")

State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class StateSlot:
    """One tensor of the State: `name` like "layers.3.k", its kind, shape and dtype."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    def __post_init__(self):
        if self.kind not in STATE_KINDS:
            raise ValueError(f"state slot {self.name}: kind {self.kind!r} not in {STATE_KINDS}")

    @property
    def nbytes(self) -> int:
        """Bytes this tensor occupies."""
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()

    def to_json(self) -> dict:
        """Manifest form."""
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}


def layout_bytes(layout: tuple[StateSlot, ...], kinds: tuple[str, ...] = STATE_KINDS) -> int:
    """Total bytes of the slots of the given kinds."""
    return sum(s.nbytes for s in layout if s.kind in kinds)


def new_state(layout: tuple[StateSlot, ...], device: torch.device | str = "cpu") -> State:
    """Zero tensors for every slot (pos = 0)."""
    return tuple(torch.zeros(s.shape, dtype=s.dtype, device=device) for s in layout)
