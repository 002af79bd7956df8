"""Measure one cell: warm-up, timed repeats of prefill + decode, memory and energy around them.

For each repeat: TTFT = prefill of the whole prompt to its logits; TPOT = the time of `decode_len`
greedy steps after it, divided by decode_len. Warm-up calls (lazy compilation, autotuning, cache
allocation) run first and are timed separately (`warmup_s`), never mixed into the samples.
Memory is sampled over the timed repeats; energy is read from the platform's counter at the same
synchronized marks as the latency.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from edgeports.measure.memory import PeakSampler, allocator_peaks, release_cached, reset_allocator_peaks
from edgeports.measure.row import samples_json
from edgeports.measure.timing import Clock, summarize


@dataclass(frozen=True)
class Plan:
    """How one cell is measured."""

    prompt_len: int
    decode_len: int
    batch: int = 1
    chunk: int | None = None  # prefill chunk length; None = full prefill
    repeats: int = 3
    warmup: int = 1  # untimed runs before the samples: the full prefill + WARMUP_DECODE decode steps
    seed: int = 0  # of the random prompt
    profile: str | None = None  # "ops": one profiled prefill + decode after the timed ones (measure.profile)


def prompt_ids(vocab_size: int, batch: int, length: int, device: torch.device | str, seed: int = 0) -> torch.Tensor:
    """A reproducible random prompt: int64 ids[B,L] on device."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=g).to(device)


WARMUP_DECODE = 2  # decode steps all have the same shapes: two warm them up as well as N


def _warm_up(runner, ids: torch.Tensor, plan: Plan) -> None:
    runner.prefill(ids, plan.chunk, max_len=plan.prompt_len + plan.decode_len)
    if plan.decode_len:
        runner.decode(min(plan.decode_len, WARMUP_DECODE))


def measure(runner, plan: Plan, vocab_size: int, device_reader: Callable[[], int] | None = None,
            device_reason: str | None = None, energy: Callable[[], float] | None = None,
            energy_method: str | None = None, energy_reason: str | None = None) -> dict[str, Any]:
    """Measure a loaded runner; returns the metric fields of a Row (see edgeports.measure.row)."""
    device = runner.device
    ids = prompt_ids(vocab_size, plan.batch, plan.prompt_len, device, plan.seed)
    clock = Clock(device, runner.sync)

    release_cached(device)  # the previous cell's cached blocks must not count in this one's reserved peak
    t0 = time.perf_counter()
    for _ in range(plan.warmup):
        _warm_up(runner, ids, plan)
    runner.sync()
    warmup_s = time.perf_counter() - t0
    runner.reset()

    ttft, tpot, e_prefill, e_token = [], [], [], []
    reset_allocator_peaks(device)
    with PeakSampler(device_reader) as mem:
        for _ in range(plan.repeats):
            runner.reset()
            m0 = clock.mark()
            j0 = energy() if energy else None
            runner.prefill(ids, plan.chunk, max_len=plan.prompt_len + plan.decode_len)
            m1 = clock.mark()
            j1 = energy() if energy else None
            if plan.decode_len:
                runner.decode(plan.decode_len)
            m2 = clock.mark()
            j2 = energy() if energy else None
            ttft.append(clock.elapsed_ms(m0, m1))
            if plan.decode_len:
                tpot.append(clock.elapsed_ms(m1, m2) / plan.decode_len)
            if energy:
                e_prefill.append(j1 - j0)
                if plan.decode_len:
                    e_token.append((j2 - j1) / plan.decode_len)
    peak_alloc, peak_reserved = allocator_peaks(device)
    state_bytes = runner.state_bytes
    runner.reset()

    out: dict[str, Any] = {"repeats": plan.repeats, "warmup_s": warmup_s}
    t = summarize(ttft)
    out.update(ttft_p10_ms=t.p10, ttft_p50_ms=t.p50, ttft_p90_ms=t.p90, ttft_samples_ms=samples_json(t.samples),
               prefill_tok_s=plan.batch * plan.prompt_len / (t.p50 / 1e3) if t.p50 > 0 else None)
    if tpot:
        d = summarize(tpot)
        out.update(tpot_p10_ms=d.p10, tpot_p50_ms=d.p50, tpot_p90_ms=d.p90, tpot_samples_ms=samples_json(d.samples),
                   decode_tok_s=plan.batch / (d.p50 / 1e3) if d.p50 > 0 else None)
    weight_bytes = runner.weight_bytes
    out.update(peak_allocated_bytes=peak_alloc, peak_reserved_bytes=peak_reserved, rss_peak_bytes=mem.rss_peak,
               device_used_peak_bytes=mem.device_peak, device_used_reason=None if device_reader else device_reason,
               weight_bytes=weight_bytes, state_bytes=state_bytes)
    if peak_alloc is not None:
        out["activation_bytes"] = peak_alloc - weight_bytes - state_bytes
    else:
        out["memory_reason"] = f"no allocator statistics on {device.type} (rss_peak_bytes is the process peak)"
    if energy:
        from edgeports.measure.energy import EnergyMeter, energy_fields

        n = plan.decode_len

        def fresh_prefill():
            runner.reset()
            runner.prefill(ids, plan.chunk, max_len=plan.prompt_len + n)

        # (joules, seconds) of each timed region: the energy reads sit at the same marks as the latency
        prefill_regions = [(j, t / 1e3) for j, t in zip(e_prefill, ttft, strict=True)]
        decode_regions = [(j * n, t * n / 1e3) for j, t in zip(e_token, tpot, strict=True)]
        out.update(energy_fields(EnergyMeter(energy, energy_method), fresh_prefill,
                                 (lambda: runner.decode(n)) if n else None, runner.sync, n, prefill_regions,
                                 decode_regions))
        runner.reset()
    else:
        out["energy_reason"] = energy_reason
    if plan.profile == "ops":
        from edgeports.measure.profile import profile_or_error

        out["ops"] = profile_or_error(runner, ids, plan.chunk, plan.prompt_len + plan.decode_len, plan.decode_len)
    out["runner_info"] = json.dumps(runner.info, sort_keys=True, default=str)
    return out
