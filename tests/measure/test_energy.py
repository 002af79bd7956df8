"""Energy per prefill and per token from a cumulative counter that updates in steps."""

import time

import pytest
import torch

from edgeports.measure import Plan, measure
from edgeports.measure import energy as en

WATTS = 100.0


class SteppedCounter:
    """A joule counter like NVML's: constant power, but the value only moves every `step_s` seconds."""

    def __init__(self, step_s: float):
        self.step_s, self.t0 = step_s, time.perf_counter()

    def __call__(self) -> float:
        steps = int((time.perf_counter() - self.t0) / self.step_s)
        return WATTS * steps * self.step_s


class SleepyRunner:
    """Prefill sleeps prefill_s, each decode step step_s (real wall time, as a GPU would spend it)."""

    device = torch.device("cpu")
    weight_bytes = 0
    info = {}

    def __init__(self, prefill_s: float, step_s: float):
        self.prefill_s, self.step_s, self.state_bytes = prefill_s, step_s, 0

    def prefill(self, ids, chunk=None, max_len=None):
        time.sleep(self.prefill_s)
        return torch.zeros(ids.shape[0], 4)

    def decode(self, n):
        time.sleep(self.step_s * n)
        return torch.zeros(1, 4)

    def reset(self):
        pass

    def sync(self):
        pass


def test_update_interval_of_a_stepped_counter():
    interval = en.update_interval(SteppedCounter(0.03))
    assert interval == pytest.approx(0.03, abs=0.01)
    assert en.update_interval(lambda: 1.0, timeout_s=0.05) is None  # a counter that never moves


@pytest.fixture(autouse=True)
def fresh_intervals(monkeypatch):
    monkeypatch.setattr(en, "_intervals", {})
    monkeypatch.setenv(en.UPDATES_ENV, "5")


def test_short_regions_are_measured_in_windows(monkeypatch):
    """5 ms prefills and 1 ms decode steps against a counter updating every 10 ms: every timed region is
    shorter than an update, so both phases are read from windows; the result still matches power x time."""
    monkeypatch.setenv(en.UPDATES_ENV, "10")
    runner = SleepyRunner(0.005, 0.001)
    out = measure(runner, Plan(prompt_len=8, decode_len=8, repeats=2, warmup=0), vocab_size=4,
                  energy=SteppedCounter(0.01), energy_method="stepped")
    assert "prefill: window of" in out["energy_method"] and "decode: window of" in out["energy_method"]
    assert out["energy_method"].startswith("stepped, updates every")
    # the window holds sleeps plus loop overhead: compare with power x the measured p50 times
    assert out["energy_prefill_j"] == pytest.approx(WATTS * out["ttft_p50_ms"] / 1e3, rel=0.35)
    assert out["energy_per_token_j"] == pytest.approx(WATTS * out["tpot_p50_ms"] / 1e3, rel=0.35)


def test_long_regions_are_read_directly():
    runner = SleepyRunner(0.1, 0.0125)  # prefill 100 ms, decode 8 x 12.5 ms; updates every 5 ms (>= 5 per region)
    out = measure(runner, Plan(prompt_len=8, decode_len=8, repeats=2, warmup=0), vocab_size=4,
                  energy=SteppedCounter(0.005), energy_method="stepped")
    assert "prefill: 2 timed regions" in out["energy_method"] and "decode: 2 timed regions" in out["energy_method"]
    assert out["energy_prefill_j"] == pytest.approx(WATTS * out["ttft_p50_ms"] / 1e3, rel=0.3)
    assert out["energy_per_token_j"] == pytest.approx(WATTS * out["tpot_p50_ms"] / 1e3, rel=0.3)


def test_declared_interval_is_used_as_is():
    def rails():
        return WATTS * time.perf_counter()

    rails.interval_s = 0.004  # the Jetson rail integrator samples afresh on every read
    meter = en.EnergyMeter(rails, "ina3221-rails")
    assert meter.interval_s == 0.004 and meter.min_window_s() == pytest.approx(0.02)
    assert en._intervals == {}


def test_a_counter_that_never_moves_gives_a_reason():
    meter = en.EnergyMeter(lambda: 5.0, "frozen")
    out = en.energy_fields(meter, lambda: None, None, lambda: None, 0, [(0.0, 0.01)], [])
    assert out == {"energy_reason": "frozen: the counter did not update within 1 s"}


def test_no_counter_on_the_cpu():
    from edgeports.platform import energy_reader

    reader, reason, method = energy_reader("cpu")
    assert reader is None and method is None and "no energy counter" in reason
    out = measure(SleepyRunner(0.0, 0.0), Plan(prompt_len=4, decode_len=2, repeats=1, warmup=0), vocab_size=4,
                  energy_reason=reason)
    assert out["energy_reason"] == reason and "energy_prefill_j" not in out
