"""Parity: a backend's logits against the eager fp32 reference with identical weights.

Checked once per worker group and prefill mode on a short prompt (checking at every measured
length would double the cost of a sweep): the prefill logits, then one greedy decode step when
both sides chose the same token. The error is max|x - ref| / max|ref| (scale-free across models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOLERANCE = {"float32": 1e-3, "float16": 3e-2, "bfloat16": 8e-2}
PARITY_LEN = 48  # prompt tokens of the check (chunked prompts use 3+ chunks)


@dataclass(frozen=True)
class Parity:
    """The outcome of one check."""

    ok: bool
    max_err: float | None
    text: str


def prompt_len(max_len: int | None) -> int:
    """The check's prompt length for a runner whose state holds `max_len` tokens: PARITY_LEN, or less where
    the state is shorter (a static-shape artifact exported for a short sweep), leaving room for the decode step."""
    if not max_len:
        return PARITY_LEN
    return max(2, min(PARITY_LEN, max_len - 1))


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref|, in float64."""
    x, ref = x.double().cpu(), ref.double().cpu()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def check(runner, reference, ids: torch.Tensor, chunk: int | None, dtype: str) -> Parity:
    """Compare `runner` with `reference` (both Runners) on prompt ids[B,l], prefilled in `chunk`s."""
    tol = TOLERANCE[dtype]
    got, want = runner.prefill(ids, chunk), reference.prefill(ids, chunk)
    errs = [rel_err(got, want)]
    what = "prefill"
    if torch.equal(got.argmax(-1), want.argmax(-1)):
        errs.append(rel_err(runner.decode(1), reference.decode(1)))
        what = "prefill+decode"
    runner.reset()
    reference.reset()
    err = max(errs)
    if err <= tol:
        return Parity(True, err, f"ok ({what} max rel err {err:.1e} <= {tol:g} vs eager fp32)")
    return Parity(False, err, f"parity: {what} logits differ from eager fp32 by {err:.1e} (tolerance {tol:g} for {dtype})")
