"""The sweep engine: planning, fault isolation (OOM, crash, kill, timeout) and resume."""

import dataclasses
import sqlite3

import pytest

from edgeports import sweep
from edgeports.errors import EdgeportsError
from edgeports.lens import parse_lens
from edgeports.results import ResultStore
from edgeports.sweep import SweepConfig

FAST = dict(device="cpu", decode_len=2, repeats=1, warmup=0, progress=False)


def config(tmp_path, **kw):
    return SweepConfig(**{**FAST, "db": str(tmp_path / "e.db"), **kw})


def rows(tmp_path):
    with ResultStore(tmp_path / "e.db", create=False) as s:
        return {(r.model, r.backend, r.prompt_len): r for r in s.rows()}


def test_plan_expands_the_grid(tmp_path):
    p = sweep.plan(config(tmp_path, models=("tiny-llama", "tiny-qwen2"), backends="eager,hf", lens="256-1k",
                          prefill_modes=("full", "chunk:128")))
    assert len(p.cells) == 2 * 2 * 2 * 3 and not p.unsupported
    c = p.cells[0]
    assert (c.model, c.backend, c.prefill_mode, c.prompt_len, c.dtype) == ("tiny-llama", "eager", "full", 256, "float32")
    assert {x.group for x in p.cells} == {(m, b) for m in ("tiny-llama", "tiny-qwen2") for b in ("eager", "hf")}


def test_plan_defaults_come_from_one_place(tmp_path):
    p = sweep.plan(SweepConfig(device="cpu", db=str(tmp_path / "e.db"), models=("tiny-llama",)))
    lens, decode, repeats, warmup = sweep.DEVICE_DEFAULTS["cpu"]
    assert sorted({c.prompt_len for c in p.cells}) == list(parse_lens(lens)) == [256, 512, 1024]
    assert {(c.decode_len, c.repeats, c.warmup) for c in p.cells} == {(decode, repeats, warmup)}
    assert set(sweep.default_models()) <= set(sweep.DEFAULT_MODELS)


def test_unsupported_cells_are_planned_as_skipped(tmp_path, monkeypatch):
    from edgeports.backends import get_backend
    from edgeports.runners.base import Capabilities

    hf = get_backend("hf")
    monkeypatch.setattr(hf.runner, "CAPS", Capabilities(prefill_modes=("full",)))
    p = sweep.plan(config(tmp_path, models=("tiny-llama",), backends="hf", lens="256",
                          prefill_modes=("full", "chunk:64")))
    assert [c.prefill_mode for c in p.cells] == ["full"]
    assert [(c.prefill_mode, why) for c, why in p.unsupported] == [("chunk:64", "backend 'hf' has no chunk prefill")]


@pytest.mark.parametrize("kw, words", [
    (dict(models=("no-such-model",)), "unknown model"),
    (dict(backends="eager,nope"), "unknown backend 'nope'"),
    (dict(backends=""), "empty --backend"),
    (dict(lens="64k-1k"), "smaller than the start"),
    (dict(lens="abc"), "bad length"),
    (dict(lens="0"), "positive"),
    (dict(lens=""), "empty --lens"),
    (dict(device="tpu"), "unknown device"),
    (dict(mem_budget="lots"), "bad memory size"),
    (dict(prefill_modes=("chunk:0",)), "bad prefill mode"),
    (dict(dtype="int8"), "unknown dtype"),
    (dict(repeats=0), "repeats"),
    (dict(timeout_s=0), "timeouts must be positive"),
])
def test_bad_input_fails_before_anything_is_written(tmp_path, kw, words):
    cfg = config(tmp_path, **{"models": ("tiny-llama",), "lens": "256", **kw})
    with pytest.raises(EdgeportsError, match=words):
        sweep.run(cfg)
    assert not (tmp_path / "e.db").exists()


def test_unavailable_named_backend_is_an_error_but_all_skips_it(tmp_path, monkeypatch):
    from edgeports.backends import get_backend

    monkeypatch.setattr(get_backend("hf").runner, "available", lambda: (False, "transformers missing"))
    with pytest.raises(EdgeportsError, match="'hf' is not available here: transformers missing"):
        sweep.plan(config(tmp_path, models=("tiny-llama",), backends="eager,hf", lens="256"))
    p = sweep.plan(config(tmp_path, models=("tiny-llama",), backends="all", lens="256"))
    assert ("hf", "transformers missing") in p.skipped_backends
    backends = {c.backend for c in p.cells}
    assert "eager" in backends and "hf" not in backends


def test_oom_then_longer_lengths_skipped(tmp_path):
    """RLIMIT_AS from --mem-budget: 1k fits, 256k does not, 512k is not attempted."""
    counts = sweep.run(config(tmp_path, models=("tiny-llama",), backends="eager", lens="1k,256k,512k",
                              mem_budget="64MiB"))
    r = rows(tmp_path)
    assert counts == {"ok": 1, "oom": 1, "skipped": 1}
    assert r[("tiny-llama", "eager", 1024)].status == "ok"
    assert r[("tiny-llama", "eager", 262144)].reason.startswith("out of memory: ")
    assert r[("tiny-llama", "eager", 524288)].reason == "out of memory at 256k"
    # extending the sweep later does not retry past the recorded OOM
    sweep.run(config(tmp_path, models=("tiny-llama",), backends="eager", lens="1k,256k,512k,1m",
                     mem_budget="64MiB"))
    assert rows(tmp_path)[("tiny-llama", "eager", 1 << 20)].reason == "out of memory at 256k"


def test_exception_and_killed_worker_stay_in_their_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORTS_FAULT", "raise:256,kill:512")
    counts = sweep.run(config(tmp_path, models=("tiny-llama",), backends="eager", lens="256-2k"))
    r = rows(tmp_path)
    assert counts == {"ok": 2, "error": 2}
    assert r[("tiny-llama", "eager", 256)].reason == "RuntimeError: injected fault at 256"
    assert "worker died (killed by SIGKILL)" in r[("tiny-llama", "eager", 512)].reason
    # the cells after the kill ran in a fresh worker
    assert r[("tiny-llama", "eager", 1024)].status == r[("tiny-llama", "eager", 2048)].status == "ok"


def test_timeout_kills_the_worker_and_resume_retries(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORTS_FAULT", "hang:512")
    cfg = config(tmp_path, models=("tiny-llama",), backends="eager", lens="256-1k", timeout_s=3)
    assert sweep.run(cfg) == {"ok": 1, "timeout": 1, "skipped": 1}
    r = rows(tmp_path)
    assert r[("tiny-llama", "eager", 512)].reason == "no result within 3 s (worker killed)"
    assert r[("tiny-llama", "eager", 1024)].reason == "after timeout at 512"
    first_ok = r[("tiny-llama", "eager", 256)]
    monkeypatch.delenv("EDGEPORTS_FAULT")
    assert sweep.run(cfg) == {"ok": 2}  # the timed-out cell and the one skipped after it
    r = rows(tmp_path)
    assert {x.status for x in r.values()} == {"ok"} and r[("tiny-llama", "eager", 256)] == first_ok
    assert sweep.run(cfg) == {}  # nothing left
    assert sweep.run(dataclasses.replace(cfg, force=True)) == {"ok": 3}
    assert sqlite3.connect(tmp_path / "e.db").execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 3


def test_load_timeout_and_load_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORTS_FAULT", "hang:load")
    cfg = config(tmp_path, models=("tiny-llama",), backends="eager", lens="256,512", load_timeout_s=2)
    assert sweep.run(cfg) == {"timeout": 2}
    assert {r.reason for r in rows(tmp_path).values()} == {"export + load took longer than 2 s"}
    monkeypatch.setenv("EDGEPORTS_FAULT", "raise:load")
    assert sweep.run(dataclasses.replace(cfg, load_timeout_s=60)) == {"error": 2}  # timeouts are retried
    assert {r.reason for r in rows(tmp_path).values()} == {"load: RuntimeError: injected fault at load"}


def test_a_model_the_backend_cannot_load_is_skipped_with_the_reason(tmp_path):
    """transformers has no Hymba: every cell of that hf group is skipped, saying so."""
    assert sweep.run(config(tmp_path, models=("tiny-hymba",), backends="hf", lens="256,512")) == {"skipped": 2}
    r = rows(tmp_path)
    assert r[("tiny-hymba", "hf", 256)].reason == r[("tiny-hymba", "hf", 512)].reason
    assert "has no model type 'hymba'" in r[("tiny-hymba", "hf", 256)].reason


def test_a_local_hf_directory_is_a_model(tmp_path):
    import json

    from edgeports.models import get_spec

    local = tmp_path / "my-llama"
    local.mkdir()
    (local / "config.json").write_text(json.dumps(get_spec("tiny-llama").config))
    assert sweep.run(config(tmp_path, models=(str(local),), backends="eager", lens="256")) == {"ok": 1}
    assert rows(tmp_path)[("my-llama", "eager", 256)].arch == "llama"
