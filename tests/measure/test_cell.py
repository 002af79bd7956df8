import json

import pytest
import torch

from edgeports.measure.cell import Plan, measure, prompt_ids
from edgeports.runners.base import StepRunner


class CountingRunner(StepRunner):
    """A fake model: logits depend on the last token; the state is a growing list of tensors."""

    backend = "fake"

    def __init__(self):
        super().__init__("cpu", torch.float32)
        self.weight_bytes = 1000
        self.calls = {"prefill": 0, "decode": 0}

    def new_state(self, batch, max_len):
        return [torch.zeros(batch, max_len)]

    def prefill_step(self, ids, state, first):
        self.calls["prefill"] += 1
        return torch.nn.functional.one_hot(ids[:, -1] % 7, 7).float(), state

    def decode_step(self, ids, state):
        self.calls["decode"] += 1
        return torch.nn.functional.one_hot((ids[:, -1] + 1) % 7, 7).float(), state


def test_prompt_ids_reproducible():
    a, b = prompt_ids(100, 2, 50, "cpu", seed=3), prompt_ids(100, 2, 50, "cpu", seed=3)
    assert torch.equal(a, b) and a.shape == (2, 50) and a.dtype == torch.int64 and int(a.max()) < 100


def test_measure_counts_and_fields():
    r = CountingRunner()
    out = measure(r, Plan(prompt_len=64, decode_len=5, repeats=3, warmup=2, chunk=16), vocab_size=7)
    # 2 warm-up runs (4 chunks, 2 decode steps) + 3 timed runs (4 chunks, 5 decode steps)
    assert r.calls == {"prefill": 5 * 4, "decode": 2 * 2 + 3 * 5}
    assert len(json.loads(out["ttft_samples_ms"])) == 3 and len(json.loads(out["tpot_samples_ms"])) == 3
    assert out["ttft_p10_ms"] <= out["ttft_p50_ms"] <= out["ttft_p90_ms"]
    assert out["prefill_tok_s"] == pytest.approx(64 / (out["ttft_p50_ms"] / 1e3))
    assert out["decode_tok_s"] == pytest.approx(1 / (out["tpot_p50_ms"] / 1e3))
    assert out["state_bytes"] == 1 * (64 + 5) * 4  # the state of the last repeat, before reset
    assert out["weight_bytes"] == 1000
    assert out["peak_allocated_bytes"] is None and "cpu" in out["memory_reason"]
    assert out["rss_peak_bytes"] > 0
    assert out.get("energy_prefill_j") is None
    assert r.state_bytes == 0  # reset afterwards


def test_measure_without_decode_and_with_energy():
    joules = iter(float(i) for i in range(1000))
    out = measure(CountingRunner(), Plan(prompt_len=8, decode_len=0, repeats=2, warmup=0), vocab_size=7,
                  energy=lambda: next(joules), energy_method="fake-counter")
    assert out.get("tpot_p50_ms") is None and out.get("decode_tok_s") is None
    # a counter that moves on every read: read directly or in a window (tests/measure/test_energy.py)
    assert out["energy_prefill_j"] > 0 and out["energy_method"].startswith("fake-counter")
    assert out.get("energy_per_token_j") is None
