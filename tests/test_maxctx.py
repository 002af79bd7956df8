"""Max context: the bisection (pure), the projection, and a real search under RLIMIT_AS on the CPU."""

import json

import pytest

from edgeports import maxctx as mc
from edgeports.errors import EdgeportsError
from edgeports.results import ResultStore


class FakeProbes:
    """Fits up to `limit` tokens in a fresh worker; a used worker has `leftover` tokens' worth less room."""

    def __init__(self, limit, leftover=0, error_at=None):
        self.limit, self.leftover, self.error_at = limit, leftover, error_at
        self.calls, self.used = [], False

    def __call__(self, n, fresh):
        self.calls.append((n, fresh))
        if n == self.error_at:
            return mc.Probe(n, "error", reason="boom")
        room = self.limit - (self.leftover if self.used and not fresh else 0)
        self.used = True
        return mc.Probe(n, "ok" if n <= room else "oom", fresh=fresh or len(self.calls) == 1)


@pytest.mark.parametrize("limit", [256, 3000, 5000, 12345, 40000, 65536])
def test_bisection_finds_the_limit_within_the_resolution(limit):
    probe = FakeProbes(limit)
    s = mc.bisect(probe, start=4096, cap=1 << 20, granule=256, resolution=1 / 16)
    assert s.fit <= limit < s.fail and s.fail - s.fit <= max(256, s.fit / 16)
    assert len(probe.calls) <= 16


def test_bisection_stops_at_the_cap_and_below_the_granule():
    s = mc.bisect(FakeProbes(10**9), start=4096, cap=65536, granule=256, resolution=1 / 16)
    assert (s.fit, s.fail) == (65536, None)
    assert [p.length for p in s.probes] == [4096, 8192, 16384, 32768, 65536]
    s = mc.bisect(FakeProbes(100), start=4096, cap=65536, granule=256, resolution=1 / 16)
    assert (s.fit, s.fail) == (None, 256)  # not even one granule fits


def test_confirm_rules_out_memory_left_by_earlier_probes():
    """A used worker has less room: without confirm the answer is low; with it, the bounding failure is
    measured again fresh, turns out to fit, and the search continues above it."""
    plain = mc.bisect(FakeProbes(12000, leftover=3000), 4096, 1 << 20, 256, 1 / 16)
    assert plain.fit < 12000 - 2000
    probe = FakeProbes(12000, leftover=3000)
    s = mc.bisect(probe, 4096, 1 << 20, 256, 1 / 16, confirm=True)
    assert s.fit <= 12000 < s.fail and any(fresh and n == s.fail for n, fresh in probe.calls)
    assert s.fit > plain.fit


def test_confirm_recovers_when_a_used_worker_fits_nothing():
    probe = FakeProbes(3000, leftover=5000)  # a used worker fits nothing at all
    s = mc.bisect(probe, 4096, 1 << 20, 256, 1 / 16, confirm=True)
    assert s.fit <= 3000 < s.fail and s.fail - s.fit <= max(256, s.fit / 16)
    assert mc.bisect(FakeProbes(3000, leftover=5000), 4096, 1 << 20, 256, 1 / 16).fit is None  # unconfirmed


def test_an_error_ends_the_search():
    s = mc.bisect(FakeProbes(50000, error_at=16384), 4096, 1 << 20, 256, 1 / 16)
    assert s.stopped.status == "error" and s.fit == 8192 and s.fail is None


def test_projection():
    probes = [mc.Probe(n, "ok", peak=1000 + 10 * n) for n in (1024, 2048, 4096)] + [mc.Probe(8192, "oom")]
    at, how = mc.project(probes, budget=1000 + 10 * 100_000)
    assert at == 100_000 and "over 3 probes" in how
    flat = [mc.Probe(n, "ok", peak=5000) for n in (1024, 2048)]
    assert mc.project(flat, 10**6)[0] is None and "unbounded" in mc.project(flat, 10**6)[1]
    assert mc.project([mc.Probe(1024, "ok")], 10**6) == \
        (None, "0 fitting probe(s) with an allocator peak, the line needs two (the CPU records no allocator peak)")
    # one fitting probe on a GPU (the search started at its limit's half and the next probe timed out)
    assert mc.project([mc.Probe(1024, "ok", 5000), mc.Probe(2048, "timeout")], 10**6) == \
        (None, "1 fitting probe(s) with an allocator peak, the line needs two")


def test_device_budget_is_refused_on_the_cpu(tmp_path):
    with pytest.raises(EdgeportsError, match="give a size"):
        mc.run(mc.MaxCtxConfig(models=("tiny-llama",), budgets=("device",), device="cpu", db=str(tmp_path / "e.db")))


def test_real_search_under_rlimit_as(tmp_path):
    """tiny-mamba2 (eager, fp32) in sweep workers with --mem-budget 32MiB, i.e. RLIMIT_AS = the loaded
    worker's address space + 32 MiB - weights (edgeports.worker.apply_mem_budget), decode 4 steps.

    Full prefill materialises activations proportional to L (in_proj output, conv and SSD intermediates,
    ~6-7 KB per token here), so the 32 MiB of address space run out after a few thousand tokens: a finite
    maximum, bisected to within a quarter. Chunked prefill (1024-token chunks) keeps one chunk's activations
    and a fixed-size SSM state, so its memory does not depend on L and it reaches the 8k search limit."""
    db = str(tmp_path / "e.db")
    config = mc.MaxCtxConfig(models=("tiny-mamba2",), budgets=("32MiB",), prefill_modes=("full", "chunk:1024"),
                             decode_len=4, device="cpu", start=2048, max_len=8192, resolution=0.25, db=db)
    rows = {r.prefill_mode: r for r in mc.run(config)}
    full, chunked = rows["full"], rows["chunk:1024"]
    assert full.status == "ok" and 0 < full.max_ctx < 8192 and not full.capped
    assert full.fail_ctx - full.max_ctx <= max(256, full.max_ctx / 4)
    probes = json.loads(full.probes)
    fresh_ok = [n for n, status, _, fresh in probes if fresh and status == "ok"]
    fresh_oom = [n for n, status, _, fresh in probes if fresh and status == "oom"]
    assert full.fail_ctx in fresh_oom and max(fresh_ok) < min(fresh_oom)  # the bound was confirmed fresh
    assert full.mem_budget == 32 << 20 and "allocator peak" in full.projection
    assert chunked.status == "ok" and chunked.capped and chunked.max_ctx == 8192 and chunked.fail_ctx is None
    with ResultStore(db, create=False) as store:
        assert len(store.records(mc.MAXCTX_TABLE, mc.MaxCtxRow)) == 2
    assert mc.run(config) == []  # stored: nothing to search again
    assert mc.describe(chunked) == ">= 8k (limit)"


def test_cuda_budget_is_set_on_a_device_index(monkeypatch):
    """`--device cuda` (no index) reaches torch's per-process fraction as the current device's index: torch
    rejects a bare torch.device("cuda") there (seen on an H100: every maxctx probe failed at load)."""
    import torch

    from edgeports import worker

    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: calls.append(("info", index)) or (0, 80 << 30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, index: calls.append(("fraction", round(fraction, 3), index)))
    worker.apply_mem_budget(24 << 30, "cuda", 1 << 30)
    worker.apply_mem_budget(40 << 30, "cuda:1", 1 << 30)
    assert calls == [("info", 3), ("fraction", 0.3, 3), ("info", 1), ("fraction", 0.5, 1)]


class _OwnMemory:
    """A runner stand-in with memory outside torch's allocator; `grants` None: cannot bound it (TensorRT)."""

    allocates_with_torch = False
    backend = "stand-in"

    def __init__(self, grants=None):
        self.grants, self.asked = grants, []

    def limit_memory(self, budget):
        from edgeports.runners.base import Runner

        self.asked.append(budget)
        return self.grants if self.grants is not None else Runner.limit_memory(self, budget)


def test_cuda_budget_refused_for_runners_outside_the_torch_allocator(monkeypatch):
    """TensorRT's device memory is its own and has no limit here: a CUDA budget set on torch's allocator would
    not bind it, so the worker refuses (a skipped row) instead of reporting a max context the budget never
    limited. Runner.limit_memory's default is that refusal; torch-only runners get 0 and the whole budget."""
    import torch

    from edgeports import worker
    from edgeports.runners.base import Unsupported

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda *a: pytest.fail("budget applied"))
    with pytest.raises(Unsupported, match="outside it without a limit"):
        worker.apply_mem_budget(24 << 30, "cuda", 1 << 30, _OwnMemory())
    assert worker.apply_mem_budget(None, "cuda", 1 << 30, _OwnMemory()) is None  # no budget: nothing to refuse


def test_cuda_budget_split_with_a_runner_that_limits_its_own_memory(monkeypatch):
    """A runner that bounds its own allocator (ONNX Runtime's arena) takes its share first; torch's fraction
    caps the allocator at the rest, and the split is returned for the rows."""
    import torch

    from edgeports import worker

    fractions = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (0, 80 << 30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, index: fractions.append(f))
    runner = _OwnMemory(grants=6 << 30)
    split = worker.apply_mem_budget(24 << 30, "cuda", 1 << 30, runner)
    assert runner.asked == [24 << 30]
    assert split == {"budget": 24 << 30, "torch_bytes": 18 << 30, "outside_torch_bytes": 6 << 30}
    assert fractions == [pytest.approx(18 / 80)]

def test_a_split_budget_has_no_projection_and_records_the_split():
    """With part of the budget in ONNX Runtime's arena, the allocator peaks the probes report cover torch's part
    only: a line through them solved for the whole budget would overstate the context, so the row gives none
    and says how the budget was divided."""
    from edgeports.sweep import Cell

    cell = Cell(model="tiny-mamba2", arch="mamba2", family="ssm", backend="onnx", device="cuda", dtype="float16",
                batch=1, prompt_len=8192, decode_len=4, prefill_mode="full", mem_budget=8 << 30)
    s = mc.Search(probes=[mc.Probe(1024, "ok", 3 << 30), mc.Probe(2048, "ok", 4 << 30), mc.Probe(4096, "oom")],
                  fit=2048, fail=4096)
    config = mc.MaxCtxConfig(models=("tiny-mamba2",), max_len=8192)
    plain = mc._row(cell, "8GiB", 8 << 30, config, s, "ok", None, 1.0, "k", {})
    assert plain.projected_ctx is not None  # torch-only: the line is solved for the budget
    split = {"budget": 8 << 30, "torch_bytes": 5 << 30, "outside_torch_bytes": 3 << 30}
    row = mc._row(cell, "8GiB", 8 << 30, config, s, "ok", None, 1.0, "k", {}, split)
    assert row.projected_ctx is None and "5.0 GiB for torch" in row.projection and "3.0 GiB outside" in row.projection
    assert row.max_ctx == 2048 and row.fail_ctx == 4096
