"""`edgeports maxctx`: the longest context whose prefill plus N decode steps fits a memory budget.

Per (model, backend, budget, prefill mode) the search runs prefill + decode probes of growing length in a
sweep worker (edgeports.worker, the same process and protocol as `edgeports run`: the budget is applied
inside it after loading, RLIMIT_AS on the CPU and the allocator's per-process fraction on CUDA, split with
ONNX Runtime's capped arena for the onnx backend: edgeports.worker.apply_mem_budget), doubling
from --start until a probe runs out of memory or --max-len is reached, then bisecting between the longest
fit and the shortest failure until they are within the resolution. The worker is reused between probes
and between the prefill modes of one (model, backend, budget) (it releases every cached block after a
failed cell); a worker that dies or hangs is replaced. With
`confirm`, the failure that bounds the result is measured again in a fresh worker, so the answer never
rests on memory an earlier probe left behind (glibc keeps freed heap mapped, which RLIMIT_AS counts).

Besides the bisected answer each row carries a projection: a least-squares line of the allocator's reserved
peak against length over the probes that fit, solved for the budget (CUDA only: on the CPU the budget limits
address space, which no probe measures; None as well when memory does not grow with length, and when part of
the budget went to an allocator outside torch's, whose peak no probe reads: the projection text then records
the split). Rows go to the `maxctx` table of the results database.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeports.errors import EdgeportsError
from edgeports.lens import format_len
from edgeports.measure.memory import format_bytes, parse_bytes
from edgeports.measure.row import RunTarget, key_hash, now, platform_id, target_fields

MAXCTX_TABLE = "maxctx"
MAXCTX_KEY = ("key",)
GRANULE = 256  # probe lengths are multiples of this (a chunked prefill's last chunk may be partial)


@dataclass(frozen=True)
class MaxCtxConfig:
    """One `edgeports maxctx` invocation."""

    models: tuple[str, ...]
    backends: str = "eager"
    budgets: tuple[str, ...] = ("24GiB",)  # sizes or "device"
    prefill_modes: tuple[str, ...] = ("full",)
    decode_len: int = 16
    device: str = "auto"
    dtype: str | None = None
    start: int = 4096
    max_len: int = 256 * 1024
    resolution: float = 1 / 16  # stop when (fail - fit) <= resolution * fit (and one granule)
    confirm: bool = True
    timeout_s: float = 600.0  # per probe
    load_timeout_s: float = 1800.0
    seed: int = 0
    db: str = "results/edgeports.db"
    artifacts: str | None = None
    force: bool = False
    options: tuple[str, ...] = ()  # --opt texts (edgeports.options), applied as a sweep applies them


@dataclass(frozen=True)
class MaxCtxRow(RunTarget):
    """The result of one search (the `maxctx` table): RunTarget's columns, then these."""

    prefill_mode: str
    decode_len: int
    budget: str  # as given: "24GiB" or "device"
    mem_budget: int | None  # bytes; None = the whole device
    weights: str
    status: str  # ok | error | timeout
    max_ctx: int | None  # longest length that fit (0: not even the shortest probe)
    fail_ctx: int | None  # shortest length that did not fit (None: fit at the cap)
    capped: int  # 1 when max_ctx is the search limit (the true maximum may be larger)
    cap: int
    resolution: float
    projected_ctx: int | None  # from the memory-vs-length line of the fitting probes
    projection: str | None  # how the projection was made, or why there is none
    peak_bytes_at_max: int | None
    probes: str  # JSON [[length, status, peak bytes, fresh worker], ...] in order
    reason: str | None
    search_s: float
    key: str
    timestamp: str
    platform_id: str
    platform_gpu: str | None
    platform_cpu: str | None
    platform_git_commit: str | None
    platform: str  # JSON of the full fingerprint
    backend_options: str = ""  # the backend's --opt settings, "k=v,k=v" sorted ("" in tables from before it)


@dataclass
class Probe:
    """One probe's outcome: status ok | oom | error | timeout | skipped."""

    length: int
    status: str
    peak: int | None = None
    fresh: bool = False
    reason: str | None = None


@dataclass
class Search:
    """The bisection state (pure: `bisect` drives it with any probe function)."""

    probes: list[Probe] = field(default_factory=list)
    fit: int | None = None
    fail: int | None = None
    stopped: Probe | None = None  # an error/timeout that ended the search


def _round(n: float, granule: int, up: bool = False) -> int:
    return max(granule, int(math.ceil(n / granule) if up else math.floor(n / granule)) * granule)


def bisect(probe: Callable[[int, bool], Probe], start: int, cap: int, granule: int, resolution: float,
           confirm: bool = False) -> Search:
    """Find the longest length that fits: double from `start` (halve when it fails) up to `cap`, then
    bisect until fail - fit <= max(granule, resolution * fit). probe(length, fresh) runs one probe
    (fresh: in a new worker). With confirm, a failure that bounds the result and was seen in a used
    worker is probed again fresh; if it fits then, the search goes on above it."""
    s = Search()
    start = min(_round(start, granule), _round(cap, granule))
    cap = _round(cap, granule)

    def run(n: int, fresh: bool = False) -> bool | None:
        p = probe(n, fresh)
        s.probes.append(p)
        if p.status == "ok":
            s.fit = n if s.fit is None else max(s.fit, n)
            return True
        if p.status == "oom":
            s.fail = n if s.fail is None else min(s.fail, n)
            return False
        s.stopped = p
        return None

    n = start
    ok = run(n)
    while ok is False and n > granule:  # even the start failed: look below it
        n = _round(n / 2, granule)
        ok = run(n)
    while ok and n < cap and s.fail is None:
        n = min(cap, _round(n * 2, granule))
        ok = run(n)
    while s.stopped is None and s.fail is not None:
        # (no fit at all: the halving reached one granule, so the bound is that granule)
        if s.fit is None or s.fail - s.fit <= max(granule, resolution * s.fit):
            if not confirm or _fresh(s, s.fail):
                break
            ok = run(s.fail, fresh=True)
            if ok:
                s.fail = _next_fail(s)
                if s.fail is None:  # every failure was an artifact of a used worker: grow again
                    n = s.fit
                    while ok and n < cap:
                        n = min(cap, _round(n * 2, granule))
                        ok = run(n)
            continue
        mid = _round((s.fit + s.fail) / 2, granule)
        if mid in (s.fit, s.fail):
            mid = s.fit + granule
            if mid >= s.fail:
                break
        run(mid)
    return s


def _fresh(s: Search, n: int) -> bool:
    return any(p.length == n and p.fresh and p.status == "oom" for p in s.probes)


def _next_fail(s: Search) -> int | None:
    """The shortest failure above the current fit, after a fresh probe turned one into a fit."""
    fails = [p.length for p in s.probes if p.status == "oom" and p.length > (s.fit or 0)]
    return min(fails) if fails else None


def project(probes: list[Probe], budget: int | None) -> tuple[int | None, str]:
    """Length where the least-squares line of peak memory vs length over the fitting probes reaches the
    budget; (None, why) when it cannot be said."""
    pts = sorted({(p.length, p.peak) for p in probes if p.status == "ok" and p.peak})
    if budget is None:
        return None, "no budget in bytes"
    if len({x for x, _ in pts}) < 2:
        return None, (f"{len(pts)} fitting probe(s) with an allocator peak, the line needs two"
                      + (" (the CPU records no allocator peak)" if not any(p.peak for p in probes) else ""))
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    base = my - slope * mx
    if slope <= 1.0:  # under a byte per token: memory does not grow with length
        return None, f"memory does not grow with length ({slope:.2f} B/token over {n} probes): unbounded"
    at = round((budget - base) / slope)
    return at, f"{format_bytes(base)} + {format_bytes(slope)}/token over {n} probes"


# ---------------------------------------------------------------------------------------------- workers

class _Prober:
    """Probes the searches of one (model, backend, budget) -- one per prefill mode -- in a sweep worker they
    share, replacing it when a probe asks for a fresh one or when it is lost."""

    def __init__(self, cells: list, config: MaxCtxConfig, sweep_config, artifacts: Path, logs: Path):
        self.cells, self.config, self.sweep_config = cells, config, sweep_config
        self.artifacts, self.logs = artifacts, logs
        self.worker = None
        self.sent = 0
        self.dirty = False  # the worker has run out of memory before
        self.split: dict[str, int] | None = None  # how the worker divided the budget (CUDA), from its ready message
        self.fresh_next = False

    def start_search(self) -> None:
        """A new search starts in a fresh worker if this one has run out of memory before."""
        self.fresh_next = self.dirty

    def _start(self) -> tuple[str, str] | None:
        from edgeports.sweep import WorkerProcess, _job

        self.close()
        c = self.cells[0]
        self.worker = WorkerProcess(_job(self.cells, self.sweep_config, self.artifacts),
                                    self.logs / f"maxctx__{c.model}__{c.backend}.log")
        msg = self.worker.receive(self.config.load_timeout_s)
        if isinstance(msg, dict) and msg.get("type") == "ready":
            self.split = msg.get("mem_split") or self.split
            return None
        if msg == "timeout":
            self.worker.kill()
            return "timeout", f"export + load took longer than {self.config.load_timeout_s:g} s"
        if msg is None:
            return "error", self.worker.death()
        return msg["status"], f"load: {msg['reason']}"

    def probe(self, cell, length: int, fresh: bool) -> Probe:
        """Prefill `length` tokens in `cell`'s prefill mode, then decode; one timed run, no warm-up."""
        if fresh or self.worker is None or self.fresh_next:
            self.fresh_next, self.dirty = False, False
            failed = self._start()
            if failed:  # the model does not load (weights over the budget, ...): nothing to bisect
                self.worker = None
                status, reason = failed
                return Probe(length, "timeout" if status == "timeout" else "error", reason=reason, fresh=True)
            fresh = True
        self.sent += 1
        self.worker.send({"id": self.sent, "prompt_len": length, "decode_len": cell.decode_len,
                          "prefill_mode": cell.prefill_mode, "repeats": 1, "warmup": 0})
        msg = self.worker.receive(self.config.timeout_s)
        if isinstance(msg, dict):
            # the allocator's reserved peak is what the per-process fraction limits (None on the CPU, whose
            # RSS holds the interpreter and libraries, while RLIMIT_AS limits address space)
            peak = msg.get("peak_reserved_bytes")
            self.dirty |= msg["status"] == "oom"
            return Probe(length, msg["status"], peak=peak, fresh=fresh, reason=msg.get("reason"))
        if msg == "timeout":
            self.worker.kill()
            self.worker = None
            return Probe(length, "timeout", fresh=fresh, reason=f"no result within {self.config.timeout_s:g} s")
        death = self.worker.death()
        self.worker = None
        # the kernel's OOM killer (e.g. unified memory on Jetson without a budget) shows up as SIGKILL
        return Probe(length, "oom" if "SIGKILL" in death else "error", fresh=fresh, reason=death)

    def close(self, kill: bool = False) -> None:
        """Let the worker finish (or kill it at once)."""
        if self.worker is not None:
            self.worker.kill() if kill else self.worker.close()
            self.worker = None


# ---------------------------------------------------------------------------------------------- driver

def _searches(config: MaxCtxConfig):
    """(sweep Cell, budget label, budget bytes, its SweepConfig, why unsupported or None) per search,
    validated like a sweep."""
    from edgeports.sweep import SweepConfig, plan

    if not config.models:
        raise EdgeportsError("maxctx needs --models")
    if config.decode_len < 0 or config.start < 1 or config.max_len < config.start:
        raise EdgeportsError("maxctx wants --decode >= 0 and 1 <= --start <= --max-len")
    if not 0 < config.resolution < 1:
        raise EdgeportsError("--resolution must be between 0 and 1 (a fraction of the length found)")
    out = []
    for label in dict.fromkeys(config.budgets):
        budget = None if label == "device" else parse_bytes(label)
        sweep = SweepConfig(models=config.models, backends=config.backends, lens=str(config.max_len),
                            device=config.device, dtype=config.dtype, decode_len=config.decode_len,
                            prefill_modes=config.prefill_modes, repeats=1, warmup=0,
                            mem_budget=None if budget is None else str(budget), timeout_s=config.timeout_s,
                            load_timeout_s=config.load_timeout_s, seed=config.seed, db=config.db,
                            artifacts=config.artifacts, progress=False, options=config.options)
        p = plan(sweep)
        if budget is None and p.device == "cpu":
            raise EdgeportsError("--mem-budget device on the CPU would leave the kernel's OOM killer to end the "
                                 "search: give a size (e.g. 8GiB)")
        for cell, reason in p.unsupported:
            out.append((cell, label, budget, sweep, reason))
        for cell in p.cells:
            out.append((cell, label, budget, sweep, None))
    return out


def _key(cell, label: str, config: MaxCtxConfig, fp: dict[str, Any]) -> str:
    ident = [cell.model, cell.backend, cell.device, cell.dtype, cell.batch, cell.prefill_mode, cell.decode_len,
             label, cell.weights, config.max_len, config.resolution, platform_id(fp)]
    return key_hash(ident, cell)  # backend options join the key only when set: older keys still match


def run(config: MaxCtxConfig, on_row: Callable[[MaxCtxRow], None] | None = None) -> list[MaxCtxRow]:
    """Run every search not stored yet (or all with force); returns the rows written."""
    from edgeports.platform import fingerprint
    from edgeports.results import ResultStore

    searches = _searches(config)
    fp = fingerprint()
    db_dir = Path(config.db).parent
    artifacts = Path(config.artifacts) if config.artifacts else db_dir / "artifacts"
    written = []
    with ResultStore(config.db) as store:
        done = set() if config.force else {r.key for r in store.records(MAXCTX_TABLE, MaxCtxRow)}
        groups: dict[tuple, list] = {}
        for search in searches:
            cell, label = search[0], search[1]
            if _key(cell, label, config, fp) not in done:
                groups.setdefault((cell.model, cell.backend, label), []).append(search)
        for group in groups.values():
            runnable = [cell for cell, _, _, _, unsupported in group if not unsupported]
            prober = _Prober(runnable, config, group[0][3], artifacts, db_dir / "logs") if runnable else None
            try:
                for cell, label, budget, _, unsupported in group:
                    t0 = time.perf_counter()
                    if unsupported:
                        s, status, reason = Search(), "error", unsupported
                    else:
                        prober.start_search()
                        s = bisect(functools.partial(prober.probe, cell), config.start,
                                   config.max_len, GRANULE, config.resolution, config.confirm)
                        status = "ok" if s.stopped is None else ("timeout" if s.stopped.status == "timeout" else "error")
                        reason = None if s.stopped is None else \
                            f"{s.stopped.status} at {format_len(s.stopped.length)}: {s.stopped.reason}"
                    row = _row(cell, label, budget, config, s, status, reason, time.perf_counter() - t0,
                               _key(cell, label, config, fp), fp, prober.split if prober else None)
                    store.add_records(MAXCTX_TABLE, [row], MAXCTX_KEY)
                    written.append(row)
                    if on_row:
                        on_row(row)
            except BaseException:  # Ctrl-C or a bug: stop the worker now, not after its probe
                if prober:
                    prober.close(kill=True)
                raise
            if prober:
                prober.close()
    return written


def _row(cell, label, budget, config, s: Search, status, reason, seconds, key, fp, split=None) -> MaxCtxRow:
    gpu_total = fp.get("platform_gpu_memory_bytes")
    effective = budget if budget is not None else (int(gpu_total) if gpu_total else None)
    projected, how = project(s.probes, effective)
    if split and split.get("outside_torch_bytes"):
        projected, how = None, (f"none: the budget was split, {format_bytes(split['torch_bytes'])} for torch's allocator "
                                f"+ {format_bytes(split['outside_torch_bytes'])} outside it (the backend's own arena), "
                                "whose peak the probes do not read")
    at_max = next((p.peak for p in s.probes if p.length == s.fit and p.status == "ok"), None)
    cap = _round(config.max_len, GRANULE)
    return MaxCtxRow(
        **target_fields(cell), prefill_mode=cell.prefill_mode, decode_len=cell.decode_len,
        budget=label, mem_budget=budget, weights=cell.weights, status=status,
        max_ctx=s.fit if s.fit is not None else (0 if s.fail is not None else None), fail_ctx=s.fail,
        capped=int(s.fit is not None and s.fail is None and s.fit >= cap), cap=cap, resolution=config.resolution,
        projected_ctx=projected, projection=how, peak_bytes_at_max=at_max,
        probes=json.dumps([[p.length, p.status, p.peak, int(p.fresh)] for p in s.probes]), reason=reason,
        search_s=seconds, key=key, timestamp=now(), platform_id=platform_id(fp), platform_gpu=fp.get("platform_gpu"),
        platform_cpu=fp.get("platform_cpu"), platform_git_commit=fp.get("platform_git_commit"),
        platform=json.dumps(fp, sort_keys=True), backend_options=cell.backend_options)


def approx_len(n: float | None) -> str:
    """A length for tables: '57k' when exact, '57.3k' otherwise, '300' below 1k; '-' for None."""
    if n is None:
        return "-"
    if n == int(n) and int(n) % 1024 == 0:
        return format_len(int(n))
    return f"{n / 1024:.1f}k" if n >= 1024 else f"{n:.0f}"


def describe(row: MaxCtxRow) -> str:
    """'57k' / '>= 256k (limit)' / '0 (even 256 tokens do not fit)' for tables."""
    if row.max_ctx is None:
        return "-"
    if row.capped:
        return f">= {format_len(row.max_ctx)} (limit)"
    if row.max_ctx == 0:
        return f"< {format_len(row.fail_ctx)}" if row.fail_ctx else "0"
    return format_len(row.max_ctx)


def rows(db: str) -> list[MaxCtxRow]:
    """Every stored maxctx row of a results database."""
    from edgeports.results import ResultStore

    with ResultStore(db, create=False) as store:
        return store.records(MAXCTX_TABLE, MaxCtxRow)
