"""Eager runner: our LM as PyTorch runs it, state threaded through `lm.prefill` / `lm.decode`."""

from __future__ import annotations

import torch

from edgeports.exporters.base import Artifact, build_lm
from edgeports.exporters.eager import WEIGHTS_FILE
from edgeports.models import LM, State, build, torch_dtype
from edgeports.runners.base import Capabilities, StepRunner

NAME = "eager"
CAPS = Capabilities()


def available() -> tuple[bool, str]:
    """Eager needs nothing beyond torch."""
    return True, ""


class EagerRunner(StepRunner):
    """Runs an LM module directly."""

    backend = NAME

    def __init__(self, lm: LM, device: torch.device | str):
        super().__init__(device, next(lm.parameters()).dtype)
        self.lm = lm
        self.weight_bytes = lm.weight_bytes()
        self.info = {"params": lm.num_params()}

    def new_state(self, batch: int, max_len: int) -> State:
        return self.lm.new_state(batch, max_len, self.device)

    def prefill_step(self, ids: torch.Tensor, state: State, first: bool) -> tuple[torch.Tensor, State]:
        return self.lm.prefill(ids, state, first=first)

    def decode_step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self.lm.decode(ids, state)

    def state_nbytes(self, state: State) -> int:
        # pos (the last slot) is bookkeeping, not model state
        return sum(t.numel() * t.element_size() for t in state[:-1])


def load_lm(artifact: Artifact, device: str) -> LM:
    """The LM an eager artifact describes, on `device` in the artifact's dtype."""
    if artifact.path is not None and WEIGHTS_FILE in artifact.files:
        from safetensors.torch import load_model

        lm = build(artifact.spec, dtype=artifact.dtype, device="cpu", seed=artifact.options.seed)
        load_model(lm, str(artifact.file(WEIGHTS_FILE)), strict=True)
        return lm.to(device=device, dtype=torch_dtype(artifact.dtype)).eval()
    return build_lm(artifact.spec, artifact.options, device=device)


def load(artifact: Artifact, device: str) -> EagerRunner:
    """An EagerRunner for an eager artifact (or an in-memory one) on `device`."""
    return EagerRunner(load_lm(artifact, device), device)
