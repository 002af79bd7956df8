"""Latency: synchronized marks around runner calls, and percentile summaries of samples.

On CUDA a mark records a device event after `runner.sync()`, so the elapsed time is the device's
time between two marks; elsewhere it is `time.perf_counter()` after the sync. Either way the
region between two marks contains exactly the runner calls made between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Summary:
    """p10 / p50 / p90 of raw samples (milliseconds), and the samples themselves."""

    p10: float
    p50: float
    p90: float
    samples: tuple[float, ...]


def summarize(samples: Sequence[float]) -> Summary:
    """Percentiles (linear interpolation) of at least one sample."""
    if not samples:
        raise ValueError("no samples to summarize")
    p10, p50, p90 = np.percentile(np.asarray(samples, dtype=np.float64), [10, 50, 90])
    return Summary(float(p10), float(p50), float(p90), tuple(float(s) for s in samples))


class Clock:
    """Marks points in time on `device` after calling `sync` (the runner's synchronize)."""

    def __init__(self, device: torch.device | str, sync: Callable[[], None]):
        self.device = torch.device(device)
        self.sync = sync
        self.events = self.device.type == "cuda"

    def mark(self):
        """A point in time: sync, then an event (CUDA) or perf_counter (elsewhere)."""
        self.sync()
        if self.events:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def elapsed_ms(self, start, end) -> float:
        """Milliseconds between two marks (waits for the end event on CUDA)."""
        if self.events:
            end.synchronize()
            return float(start.elapsed_time(end))
        return (end - start) * 1e3
