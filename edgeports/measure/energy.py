"""Energy: joules per prefill and per decoded token, from the platform's cumulative joule counter.

The counters come from edgeports.platform.energy_reader: NVML's total-energy counter on discrete GPUs,
the INA3221 rails integrated by a sampling thread on Jetson, none on a CPU (the row's energy_reason then
says why and the energy fields stay null).

A counter moves only when its source updates it (NVML: every few tens of ms, ~100 ms on recent GPUs), so a
region shorter than that reads 0 or one whole update. `EnergyMeter` learns the update interval once per
process (two changes of the counter), and a phase's energy is taken from

  timed regions  the counter read at the synchronized marks of the timed repeats (edgeports.measure.cell),
                 when each region spans at least MIN_UPDATES updates (error <= 1/MIN_UPDATES);
  a window       otherwise: the phase run back to back until the window spans MIN_UPDATES updates, divided
                 by the runs in it. Decode cannot run on its own past the state's capacity, so its window
                 holds prefill + decode cycles, long enough that the decode part alone spans MIN_UPDATES
                 updates; per token = (cycle energy - prefill energy) / decode steps.

The row's energy_method records the counter, its interval and which way each phase was measured.
EDGEPORTS_ENERGY_UPDATES overrides MIN_UPDATES (fewer updates: shorter windows, coarser numbers).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

MIN_UPDATES = 10
UPDATES_ENV = "EDGEPORTS_ENERGY_UPDATES"
INTERVAL_TIMEOUT_S = 1.0
_intervals: dict[str, float | None] = {}  # per counter method: measured once per process


def min_updates() -> int:
    """MIN_UPDATES, or the EDGEPORTS_ENERGY_UPDATES override (>= 1)."""
    value = os.environ.get(UPDATES_ENV)
    return max(1, int(value)) if value and value.isdigit() else MIN_UPDATES


def update_interval(read: Callable[[], float], timeout_s: float = INTERVAL_TIMEOUT_S,
                    clock: Callable[[], float] = time.perf_counter, poll_s: float = 0.0005) -> float | None:
    """Seconds between two updates of a cumulative counter (poll until it changes twice); None when it
    did not change twice within timeout_s."""
    start = clock()
    last, changes = read(), []
    while clock() - start < timeout_s and len(changes) < 2:
        time.sleep(poll_s)
        value = read()
        if value != last:
            changes.append(clock())
            last = value
    return changes[1] - changes[0] if len(changes) == 2 else None


class EnergyMeter:
    """A cumulative joule counter (a zero-arg callable) with its update interval.

    A counter that samples afresh on every read (the Jetson rail integrator) declares its sampling period as
    `interval_s`; other counters have theirs measured (cached per method for the process)."""

    def __init__(self, read: Callable[[], float], method: str):
        self.read, self.method = read, method
        declared = getattr(read, "interval_s", None)
        if declared is not None:
            self.interval_s: float | None = float(declared)
        else:
            if method not in _intervals:
                _intervals[method] = update_interval(read)
            self.interval_s = _intervals[method]

    def __call__(self) -> float:
        return float(self.read())

    def min_window_s(self) -> float:
        """How long a region must last to be read directly."""
        return min_updates() * (self.interval_s or 0.0)

    def window(self, run: Callable[[], Any], sync: Callable[[], None], min_s: float) -> tuple[float, int, float]:
        """Run `run` back to back until at least min_s have passed (at least once); (joules per run, runs,
        seconds). The device is synchronized before the first and after the last run only."""
        sync()
        j0, t0 = self(), time.perf_counter()
        runs = 0
        while True:
            run()
            runs += 1
            if time.perf_counter() - t0 >= min_s:
                sync()
                if time.perf_counter() - t0 >= min_s:
                    break
        seconds = time.perf_counter() - t0
        return (self() - j0) / runs, runs, seconds


def _direct(regions: Sequence[tuple[float, float]], need_s: float) -> float | None:
    """Mean joules per region when every (joules, seconds) region lasts at least need_s; else None."""
    if not regions or min(s for _, s in regions) < need_s:
        return None
    return sum(j for j, _ in regions) / len(regions)


def energy_fields(meter: EnergyMeter, prefill: Callable[[], Any], decode: Callable[[], Any] | None,
                  sync: Callable[[], None], decode_len: int, prefill_regions: Sequence[tuple[float, float]],
                  decode_regions: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """energy_prefill_j, energy_per_token_j and energy_method (or energy_reason) of one cell.

    prefill() runs a fresh prefill; decode() runs the cell's decode_len steps after one; the regions are
    (joules, seconds) read around the timed repeats."""
    if meter.interval_s is None:
        return {"energy_reason": f"{meter.method}: the counter did not update within {INTERVAL_TIMEOUT_S:g} s"}
    need = meter.min_window_s()
    how = [f"{meter.method}, updates every {meter.interval_s * 1e3:.1f} ms, >= {min_updates()} updates per reading"]
    out: dict[str, Any] = {}

    e_prefill = _direct(prefill_regions, need)
    if e_prefill is not None:
        how.append(f"prefill: {len(prefill_regions)} timed regions")
    else:
        e_prefill, runs, secs = meter.window(prefill, sync, need)
        how.append(f"prefill: window of {runs} back-to-back prefills ({secs:.2f} s)")
    out["energy_prefill_j"] = e_prefill

    if decode is not None and decode_len:
        e_decode = _direct(decode_regions, need)
        if e_decode is not None:
            how.append(f"decode: {len(decode_regions)} timed regions")
            out["energy_per_token_j"] = e_decode / decode_len
        else:
            t_prefill = sum(s for _, s in prefill_regions) / max(1, len(prefill_regions))
            t_decode = sum(s for _, s in decode_regions) / max(1, len(decode_regions))
            # the decode part of the window alone must span `need`
            min_s = need * (t_prefill + t_decode) / t_decode if t_decode > 0 else need
            e_cycle, runs, secs = meter.window(lambda: (prefill(), decode()), sync, min_s)
            per_token = (e_cycle - e_prefill) / decode_len
            how.append(f"decode: window of {runs} prefill+decode cycles ({secs:.2f} s) minus prefill energy")
            if per_token > 0 and math.isfinite(per_token):
                out["energy_per_token_j"] = per_token
            else:
                out["energy_reason"] = "decode energy below the counter's resolution (cycle - prefill <= 0)"
    out["energy_method"] = "; ".join(how)
    return out
