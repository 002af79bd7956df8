"""benchmarks/backends.py plumbing, without compiling anything: the child processes it starts get this run's
settings, worker records are keyed by max_len, and no worker outlives an interrupted run."""

import importlib.util
import json
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "backends.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_backends_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod.signal, "signal", lambda *a: None)  # main() must not leave pytest a SIGTERM handler
    return mod


def _args_of(bench, monkeypatch, argv):
    """The args namespace main() hands to run() for `argv`."""
    seen = {}

    def fake_run(args, results):
        seen["args"] = args
        return {**results, "wall_s": 0.0}

    monkeypatch.setattr(bench, "run", fake_run)
    assert bench.main(argv) == 0
    return seen["args"]


class FakeProc:
    """A worker that never ends by itself."""

    def __init__(self, argv, **kwargs):
        self.argv, self.returncode, self.killed = argv, None, False

    def poll(self):
        return self.returncode

    def kill(self):
        self.killed, self.returncode = True, -9

    def wait(self):
        return self.returncode


def test_isolated_child_measures_with_the_parents_settings(bench, monkeypatch, tmp_path):
    parent = _args_of(bench, monkeypatch, ["--device", "cpu", "--models", "tiny-llama", "--lens", "64,96",
                                           "--decode-lens", "64", "--steps", "5", "--repeats", "7",
                                           "--dtype", "float32", "--workdir", str(tmp_path)])
    started = []

    def popen(argv, **kw):  # a child that exits at once without a record
        started.append(argv)
        proc = FakeProc(argv)
        proc.returncode = 3
        return proc

    monkeypatch.setattr(bench.subprocess, "Popen", popen)
    (tmp_path / "measure-tiny-llama-float32-compile-jit.log").write_text("")
    rec = bench.measure_in_child(parent, "tiny-llama", "compile-jit", 1.0)
    assert "died (exit 3)" in rec["error"]
    child_argv = started[0][2:]  # after python and the script
    seen = {}
    monkeypatch.setattr(bench, "measure_one", lambda args, name, backend: seen.update(args=args) or 0)
    assert bench.main(child_argv) == 0
    child = seen["args"]
    for key in ("repeats", "steps", "lens", "decode_lens", "dtype", "max_len", "workdir", "device"):
        assert getattr(child, key) == getattr(parent, key), key
    assert child.measure_one == ["tiny-llama", "compile-jit"] and child.copy_gbs == 1.0


def test_worker_records_are_keyed_by_max_len(bench, monkeypatch, tmp_path):
    args = _args_of(bench, monkeypatch, ["--device", "cpu", "--models", "tiny-llama", "--lens", "64",
                                         "--decode-lens", "64", "--steps", "4", "--workdir", str(tmp_path)])
    monkeypatch.setattr(bench, "build_on_gpu", lambda name, dtype: object())
    monkeypatch.setitem(bench.PREPARE, "compile-aot", lambda lm, a: tmp_path / "artifact")
    assert bench.prepare_one(args, "tiny-llama", "compile-aot") == 0
    rec = bench._prepared(args, "tiny-llama", "compile-aot")
    assert rec["artifact"] == str(tmp_path / "artifact") and rec["max_len"] == args.max_len == 68
    longer = _args_of(bench, monkeypatch, ["--device", "cpu", "--models", "tiny-llama", "--lens", "512",
                                           "--decode-lens", "64", "--steps", "4", "--workdir", str(tmp_path)])
    assert bench._prepared(longer, "tiny-llama", "compile-aot") is None  # an artifact for 68 tokens: not reused
    # prepare_all starts workers for that record and for an earlier run's error, none for a valid record
    bench._prep_file(args, "tiny-llama", "ort-cuda").write_text(json.dumps({"error": "boom", "max_len": 68}))
    started = []

    def popen(argv, **kw):
        started.append(tuple(argv[-2:]))
        bench._prep_file(args, *argv[-2:]).write_text(json.dumps({"setup_s": 1.0, "max_len": 68}))
        proc = FakeProc(argv)
        proc.returncode = 0
        return proc

    monkeypatch.setattr(bench.subprocess, "Popen", popen)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    args.backends = longer.backends = ["eager", "compile-aot", "ort-cuda"]
    longer.jobs = args.jobs = 2
    bench.prepare_all(args, [])
    assert started == [("tiny-llama", "ort-cuda")]
    started.clear()
    bench.prepare_all(longer, [])
    assert started == [("tiny-llama", "compile-aot"), ("tiny-llama", "ort-cuda")]


def test_interrupted_preparation_kills_its_workers(bench, monkeypatch, tmp_path):
    args = _args_of(bench, monkeypatch, ["--device", "cpu", "--models", "tiny-llama,tiny-mamba", "--lens", "64",
                                         "--decode-lens", "64", "--workdir", str(tmp_path), "--backends", "compile-aot"])
    args.jobs = 2
    procs = []
    monkeypatch.setattr(bench.subprocess, "Popen", lambda argv, **kw: procs.append(FakeProc(argv)) or procs[-1])

    def interrupted(s):
        raise KeyboardInterrupt  # what main's SIGTERM handler raises

    monkeypatch.setattr(time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench.prepare_all(args, [])
    assert len(procs) == 2 and all(p.killed for p in procs)


def test_a_failing_length_keeps_the_other_lengths(bench, monkeypatch):
    """Out of memory at the longest prompt (mamba2-2.7b on ORT-CUDA at 64k, H100) once cost the backend every
    number: now that length alone is an `oom` cell, and the shorter ones keep their times."""
    import types

    def fake_measure(runner, plan, vocab):
        if plan.prompt_len > 4096:
            raise MemoryError("ONNX Runtime (prefill): Failed to allocate memory for requested buffer")
        return {"ttft_p50_ms": plan.prompt_len / 1000, "tpot_p50_ms": 1.0, "state_bytes": 0, "weight_bytes": 8}

    monkeypatch.setattr(bench, "measure", fake_measure)
    lm = types.SimpleNamespace(spec=types.SimpleNamespace(config={"vocab_size": 32}), weight_bytes=lambda: 8)
    runner = types.SimpleNamespace(weight_bytes=8, info={})
    args = types.SimpleNamespace(lens=[1024, 4096, 65536], decode_lens=[1024], steps=4, repeats=1, max_len=65568,
                                 dtype="float16")
    out = bench.bench_backend(lm, runner, runner, args, copy_gbs=1.0)
    assert out["prefill_ms"] == {1024: 1.024, 4096: 4.096}
    assert list(out["errors"]) == [65536]
    results = {"args": {"backends": ["eager", "ort-cuda"]},
               "models": {"m": {"eager": {"prefill_ms": {1024: 2.0, 4096: 8.0, 65536: 90.0}}, "ort-cuda": out}}}
    rows = {line.split("|")[3].strip(): line for line in bench.table(results).splitlines() if "| prefill |" in line}
    assert "| oom |" in rows["64k"] and "4.10 (1.95x)" in rows["4k"]
    assert "64k: MemoryError" in bench.table(results)


def test_the_roofline_counts_the_weights_one_step_reads(bench, monkeypatch):
    """A backend holding two resident weight copies (compile-aot: one per package) reads one per decode step:
    its roofline is the model's, not twice it (the H100 JSON of session 7 had 3.68 ms for mamba-2.8b's AOT
    row against 1.84 ms for eager's)."""
    import types

    monkeypatch.setattr(bench, "measure", lambda runner, plan, vocab: {
        "ttft_p50_ms": 1.0, "tpot_p50_ms": 2.0, "state_bytes": 100, "weight_bytes": runner.weight_bytes})
    lm = types.SimpleNamespace(spec=types.SimpleNamespace(config={"vocab_size": 32}), weight_bytes=lambda: 900)
    args = types.SimpleNamespace(lens=[], decode_lens=[1024], steps=4, repeats=1, max_len=2048, dtype="float16")
    eager = types.SimpleNamespace(weight_bytes=900, info={})
    aot = types.SimpleNamespace(weight_bytes=1800, info={})
    monkeypatch.setattr(bench.parity, "check", lambda *a: types.SimpleNamespace(ok=True, text="ok"))
    monkeypatch.setattr(bench, "prompt_ids", lambda *a, **k: None)
    rows = [bench.bench_backend(lm, r, eager, args, copy_gbs=1e-6) for r in (eager, aot)]
    assert rows[0]["roofline_ms"] == rows[1]["roofline_ms"] == {1024: 1000.0}
    assert rows[1]["weight_bytes"] == 1800  # the resident bytes are still reported as they are


def test_a_childs_recorded_failure_is_kept_word_for_word(bench, monkeypatch, tmp_path):
    """The measuring child's error text already names its exception: the table shows it as it is (it once
    read "RuntimeError: RuntimeError: in the preparing worker: ...")."""
    import types

    run = bench.run  # _args_of stands in for it
    args = _args_of(bench, monkeypatch, ["--device", "cpu", "--models", "tiny-llama", "--backends", "compile-aot",
                                         "--workdir", str(tmp_path)])
    monkeypatch.setattr(bench, "build_on_gpu", lambda name, dtype: types.SimpleNamespace())
    monkeypatch.setattr(bench, "cpu_peaks", lambda: {"copy_gbs": 1.0, "mm_tflops": 0.0, "gpu": "cpu", "torch": "x"})
    monkeypatch.setattr(bench, "measure_in_child", lambda *a: {"error": "EdgeportsError: compile: boom"})
    monkeypatch.setattr(bench.torch.cuda, "empty_cache", lambda: None)
    results = run(args, {"models": {}})
    assert results["models"]["tiny-llama"]["compile-aot"] == {"error": "EdgeportsError: compile: boom"}


def test_table_reads_a_results_file(bench):
    import json

    run = {"args": {"backends": ["eager", "ort-cuda-custom"]},
           "models": {"m": {"eager": {"prefill_ms": {1024: 10.0}, "decode_ms": {1024: 4.0}, "roofline_ms": {1024: 1.0}},
                            "ort-cuda-custom": {"prefill_ms": {1024: 5.0}, "decode_ms": {1024: 2.0}}}}}
    printed = bench.table(run)
    assert "| m | prefill | 1k | 10.00 | 5.00 (2.00x) |" in printed and "| 25% | 50% |" in printed
    assert bench.table(json.loads(json.dumps(run))) == printed  # JSON keys the lengths by strings
