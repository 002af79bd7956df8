"""The `edgeports` command end to end: the CI sweep, interrupt + resume, report, export, bad input."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from edgeports.cli import main
from edgeports.models import zoo_names

CI_MODELS = ("tiny-llama", "tiny-mamba", "tiny-mamba2")
FAST = ["--device", "cpu", "--decode-len", "2", "--repeats", "1", "--warmup", "0", "--no-progress"]


def edgeports(*args, env=None, **kw):
    """Run the console script as a user would."""
    return subprocess.run([sys.executable, "-m", "edgeports.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


def db_rows(db):
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return [dict(r) for r in con.execute("SELECT * FROM rows ORDER BY rowid")]


@pytest.fixture(scope="module")
def ci_db(tmp_path_factory):
    missing = [m for m in CI_MODELS if m not in zoo_names()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not in the zoo yet")
    db = tmp_path_factory.mktemp("ci") / "edgeports.db"
    out = edgeports("run", "--backend", "eager,hf", "--models", ",".join(CI_MODELS), "--lens", "256-1k",
                    "--db", str(db), *FAST)
    assert out.returncode == 0, out.stderr
    return db


def test_ci_sweep_has_a_row_for_every_cell(ci_db):
    rows = db_rows(ci_db)
    cells = {(r["model"], r["backend"], r["prompt_len"]) for r in rows}
    assert cells == {(m, b, n) for m in CI_MODELS for b in ("eager", "hf") for n in (256, 512, 1024)}
    assert len(rows) == 18
    bad = [(r["model"], r["backend"], r["prompt_len"], r["reason"]) for r in rows if r["status"] != "ok"]
    assert not bad
    for r in rows:
        assert r["ttft_p50_ms"] > 0 and r["tpot_p50_ms"] > 0 and r["prefill_tok_s"] > 0
        assert len(json.loads(r["ttft_samples_ms"])) == 1
        assert r["weight_bytes"] > 0 and r["state_bytes"] > 0 and r["rss_peak_bytes"] > 0
        assert r["device_used_reason"] and r["energy_reason"] and r["memory_reason"]  # nulls say why
        assert r["platform_torch"] and r["platform_edgeports"] and r["timestamp"] and r["cell_key"]
        if r["backend"] == "eager":
            assert r["parity"] == "skipped: eager is the reference" and r["export_s"] is not None
        else:  # hf with our LM holding the transformers weights: a real check
            assert r["parity"].startswith("ok (prefill+decode"), r["parity"]
            assert r["export_s"] is None and r["load_s"] > 0
    assert len({r["sweep_id"] for r in rows}) == 1


def test_rerun_measures_nothing(ci_db):
    out = edgeports("run", "--backend", "eager,hf", "--models", ",".join(CI_MODELS), "--lens", "256-1k",
                    "--db", str(ci_db), *FAST)
    assert out.returncode == 0 and "nothing new to measure" in out.stdout
    assert len(db_rows(ci_db)) == 18


def test_report_and_export(ci_db, tmp_path):
    pytest.importorskip("matplotlib")
    assert main_ok("report", "--db", str(ci_db), "--out", str(tmp_path / "rep"), "--baseline", "eager")
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "TTFT vs eager" in text and "| tiny-mamba2 | hf | 1k | ok |" in text
    assert {p.name for p in (tmp_path / "rep").glob("*.png")} == {"ttft.png", "tpot.png", "memory.png"}
    for fmt in ("csv", "json", "parquet"):
        if fmt == "parquet":
            pytest.importorskip("pyarrow")
        assert main_ok("results", "export", "--db", str(ci_db), "--format", fmt, "--out", str(tmp_path / f"r.{fmt}"))
    assert len(json.loads((tmp_path / "r.json").read_text())) == 18


def main_ok(*args):
    try:
        main(list(args))
    except SystemExit as e:
        return e.code in (0, None)
    return True


def _orphans(mark):
    """Worker processes started by this test that are still alive."""
    alive = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark.encode() in (proc / "environ").read_bytes():
                alive.append(int(proc.name))
        except OSError:
            continue
    return alive


def test_interrupt_then_resume_keeps_rows_without_duplicates(tmp_path):
    db = tmp_path / "e.db"
    args = ["run", "--backend", "eager", "--models", "tiny-llama", "--lens", "256-2k", "--db", str(db), *FAST]
    mark = f"edgeports-test-{uuid.uuid4().hex}"
    env = {**os.environ, "EDGEPORTS_FAULT": "hang:1024", "EDGEPORTS_TEST_MARK": mark}
    # Ctrl-C's default handling in the child even when this test runs under a shell's `cmd &`, whose
    # children inherit SIGINT ignored (the CLI would then, rightly, ignore it too)
    proc = subprocess.Popen([sys.executable, "-m", "edgeports.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # the worker hangs at 1k once 256 and 512 are stored
            try:
                if db.exists() and len(db_rows(db)) == 2:
                    break
            except sqlite3.OperationalError:
                pass  # the sweep is still creating the table
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted: 2 rows written" in err
    before = db_rows(db)
    assert [(r["prompt_len"], r["status"]) for r in before] == [(256, "ok"), (512, "ok")]
    assert _orphans(mark) == []  # the hung worker was killed, not left behind

    out = edgeports(*args)
    assert out.returncode == 0, out.stderr
    after = db_rows(db)
    assert sorted(r["prompt_len"] for r in after) == [256, 512, 1024, 2048]
    assert len({r["cell_key"] for r in after}) == 4
    assert after[:2] == before  # finished rows untouched


@pytest.mark.parametrize("args, words", [
    (["run", "--models", "no-such-model", "--lens", "256"], "unknown model 'no-such-model'"),
    (["run", "--models", "tiny-llama", "--backend", "nope", "--lens", "256"], "unknown backend 'nope'"),
    (["run", "--models", "tiny-llama", "--lens", "64k-1k"], "smaller than the start"),
    (["run", "--models", "tiny-llama", "--lens", "abc"], "bad length 'abc'"),
    (["run", "--models", "tiny-llama", "--lens", "0"], "must be positive"),
    (["run", "--models", "tiny-llama", "--lens", ""], "empty --lens"),
    (["run", "--models", "tiny-llama", "--lens", "256", "--mem-budget", "8XB"], "bad memory size"),
    (["report", "--db", "{tmp}/missing.db"], "no results database"),
    (["results", "export", "--db", "{tmp}/missing.db"], "no results database"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, words):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "run":
        args += ["--db", str(tmp_path / "e.db"), *FAST]
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("edgeports: error: ") and words in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_a_worker_dies_with_its_sweep(tmp_path):
    """A sweep killed outright (no chance to clean up) takes its hung worker with it."""
    mark = f"edgeports-test-{uuid.uuid4().hex}"
    env = {**os.environ, "EDGEPORTS_FAULT": "hang:256", "EDGEPORTS_TEST_MARK": mark}
    proc = subprocess.Popen([sys.executable, "-m", "edgeports.cli", "run", "--backend", "eager", "--models",
                             "tiny-llama", "--lens", "256", "--db", str(tmp_path / "e.db"), *FAST], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = tmp_path / "logs" / "tiny-llama__eager.log"
        deadline = time.time() + 120
        while time.time() < deadline and "hanging at 256" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.2)
        assert len(_orphans(mark)) == 2  # the sweep and its worker, stuck in the cell
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 10
    while _orphans(mark) and time.time() < deadline:
        time.sleep(0.2)
    assert _orphans(mark) == []


def test_unwritable_db_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = edgeports("run", "--models", "tiny-llama", "--lens", "256", "--db", str(blocker / "e.db"), *FAST)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("edgeports: error: cannot use results database")


def test_export_inspect_and_bad_artifacts(tmp_path, capsys):
    art = tmp_path / "art"
    assert main_ok("export", "--model", "tiny-llama", "--backend", "eager", "--out", str(art), "--dtype", "fp32")
    assert main_ok("inspect", str(art), "--backend", "eager")
    assert "eager artifact of tiny-llama" in capsys.readouterr().out
    cases = [(["inspect", str(art), "--backend", "hf"], "exported for backend 'eager', not 'hf'"),
             (["export", "--model", "tiny-llama", "--backend", "hf", "--out", str(tmp_path / "x")],
              "has no export step"),
             (["inspect", str(tmp_path)], "is not an artifact")]
    for args, words in cases:
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and words in err
    (art / "manifest.json").write_text("{")
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(art)])
    assert e.value.code == 2 and "corrupt manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_listing_commands(capsys):
    for cmd in (["backends"], ["doctor"]):
        assert main_ok(*cmd)
        out = capsys.readouterr().out
        assert "eager" in out and "hf" in out
    assert main_ok("models", "--json")
    listed = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in listed} == set(zoo_names())
