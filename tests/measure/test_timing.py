import numpy as np
import pytest
import torch

from edgeports.measure.timing import Clock, summarize


def test_summarize_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    samples = rng.uniform(1, 100, size=17).tolist()
    s = summarize(samples)
    assert (s.p10, s.p50, s.p90) == pytest.approx(tuple(np.percentile(samples, [10, 50, 90])))
    assert s.samples == tuple(samples)
    assert s.p10 <= s.p50 <= s.p90


def test_summarize_one_sample_and_none():
    s = summarize([3.5])
    assert s.p10 == s.p50 == s.p90 == 3.5
    with pytest.raises(ValueError):
        summarize([])


def test_cpu_clock_syncs_before_each_mark():
    calls = []
    clock = Clock("cpu", lambda: calls.append(1))
    a = clock.mark()
    b = clock.mark()
    assert len(calls) == 2
    assert clock.elapsed_ms(a, b) >= 0
    assert not clock.events


@pytest.mark.gpu
def test_cuda_clock_uses_events():
    clock = Clock("cuda", torch.cuda.synchronize)
    a = clock.mark()
    x = torch.randn(2048, 2048, device="cuda")
    for _ in range(10):
        x = x @ x
    b = clock.mark()
    assert clock.events and clock.elapsed_ms(a, b) > 0
