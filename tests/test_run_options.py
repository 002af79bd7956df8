"""`--opt` on run and maxctx: parsing and refusals, options per backend, self-describing rows, keys of rows
without options unchanged, separate artifacts per options, report labels."""

import dataclasses
import hashlib
import json
import sqlite3

import pytest

from edgeports import maxctx as mc
from edgeports import sweep
from edgeports.backends import get_backend
from edgeports.cli import main
from edgeports.errors import EdgeportsError
from edgeports.exporters.base import ExportOptions
from edgeports.measure.row import Row, backend_label, cell_key, platform_id
from edgeports.models import get_spec
from edgeports.options import canonical, options_for, parse_opts
from edgeports.results import ResultStore
from edgeports.sweep import SweepConfig

FAST = ["--device", "cpu", "--decode-len", "2", "--repeats", "1", "--warmup", "0", "--no-progress"]
# the key fields as they were before backend_options existed (what stored databases were keyed by)
OLD_CONFIG_FIELDS = ("model", "arch", "family", "backend", "device", "dtype", "batch", "prompt_len", "decode_len",
                     "prefill_mode", "mem_budget", "weights")
FP = {"platform_machine": "x86_64", "platform_cpu": "cpu", "platform_gpu": None}


def plan(tmp_path, **kw):
    return sweep.plan(SweepConfig(**{"device": "cpu", "lens": "16", "models": ("tiny-llama",),
                                     "db": str(tmp_path / "e.db"), "progress": False, **kw}))


@pytest.mark.parametrize("args, words", [
    (["--backend", "compile", "--opt", "mod=jit"], "backend 'compile' has no option 'mod' (its options: chunked, "
                                                   "decode_kernels, freeze, fuse, gemv, mode, weights)"),
    (["--backend", "compile", "--opt", "mode=fast"], "option mode must be one of aot, jit, got 'fast'"),
    (["--backend", "compile", "--opt", "nope.mode=jit"], "no backend 'nope'"),
    (["--backend", "compile", "--opt", "mode"], "--opt wants KEY=VALUE or BACKEND.KEY=VALUE"),
    (["--backend", "compile", "--opt", "mode=jit", "--opt", "mode=aot"], "--opt mode given twice"),
    (["--backend", "eager", "--opt", "mode=jit"], "backend 'eager' has no option 'mode' (it takes none); compile "
                                                  "takes it: --opt compile.mode=jit"),
    (["--backend", "eager,compile", "--opt", "mode=jit"], "backend 'eager' has no option 'mode'"),
    (["--backend", "onnx", "--opt", "onnx_chunked=maybe"], "option onnx_chunked must be true or false"),
    (["--backend", "eager", "--opt", "onnx.onnx_opset=x"], "option onnx_opset must be an integer"),
])
@pytest.mark.parametrize("command", ["run", "maxctx"])
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, command, args, words):
    """The same parser and checks for run and maxctx; nothing is written."""
    extra = FAST if command == "run" else ["--device", "cpu", "--mem-budget", "1GiB"]
    with pytest.raises(SystemExit) as e:
        main([command, "--models", "tiny-llama", *args, "--db", str(tmp_path / "e.db"), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("edgeports: error: ") and words in err
    assert not any(tmp_path.iterdir())


def test_export_shares_the_parser_and_refuses_unknown_keys(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--backend", "compile", "tiny-llama", "--out", str(tmp_path / "a"), "--opt", "mod=jit"])
    assert e.value.code == 2 and "backend 'compile' has no option 'mod'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_parse_opts_scopes():
    assert parse_opts(["mode=jit", "compile.fuse=false", "trt.trt_opt_lens=256,4096", "onnx_opset= 18"]) == (
        (None, "mode", "jit"), ("compile", "fuse", "false"), ("trt", "trt_opt_lens", "256,4096"),
        (None, "onnx_opset", "18"))
    for bad in ("=jit", ".mode=jit", "compile.=jit", "mode"):
        with pytest.raises(EdgeportsError, match="KEY=VALUE"):
            parse_opts([bad])


def test_scoped_options_reach_only_their_backend(tmp_path):
    p = plan(tmp_path, backends="eager,compile", options=("compile.mode=jit", "compile.fuse=false"))
    by_backend = {c.backend: c for c in p.cells}
    assert by_backend["eager"].backend_options == "" and by_backend["eager"].extra == ()
    assert by_backend["compile"].backend_options == "fuse=false,mode=jit"
    assert by_backend["compile"].extra == (("fuse", "false"), ("mode", "jit"))
    assert sweep._job([by_backend["compile"]], p.config, tmp_path)["extra"] == [["fuse", "false"], ["mode", "jit"]]
    # unscoped options go to every selected backend: trt and onnx both take onnx_opset
    onnx = get_backend("onnx")
    assert options_for(onnx, parse_opts(["onnx_opset=18", "compile.mode=jit"])) == (("onnx_opset", "18"),)
    assert canonical(options_for(get_backend("trt"), parse_opts(["onnx_opset=18", "trt_ssm=onnx-ops"]))) == \
        "onnx_opset=18,trt_ssm=onnx-ops"


def test_keys_of_rows_without_options_are_unchanged(tmp_path):
    """Stored databases were keyed without backend_options: an option-less cell (the column '' in new rows,
    NULL in rows from before it) keeps that key; a cell with options gets another."""
    cell = plan(tmp_path, backends="compile").cells[0]
    config = cell.config()
    old = hashlib.sha1(json.dumps([config[k] for k in OLD_CONFIG_FIELDS] + [platform_id(FP)]).encode()).hexdigest()[:16]
    assert config["backend_options"] == "" and cell_key(config, FP) == old
    assert cell_key({**config, "backend_options": None}, FP) == old
    assert cell_key({k: config[k] for k in OLD_CONFIG_FIELDS}, FP) == old
    jit = plan(tmp_path, backends="compile", options=("mode=jit",)).cells[0]
    assert cell_key(jit.config(), FP) != old
    # maxctx keys the same way
    cfg = mc.MaxCtxConfig(models=("tiny-llama",), backends="compile", budgets=("1GiB",), device="cpu",
                          db=str(tmp_path / "e.db"))
    (c, label, *_), = mc._searches(cfg)
    old = hashlib.sha1(json.dumps([c.model, c.backend, c.device, c.dtype, c.batch, c.prefill_mode, c.decode_len,
                                   label, c.weights, cfg.max_len, cfg.resolution, platform_id(FP)]).encode()
                       ).hexdigest()[:16]
    assert mc._key(c, label, cfg, FP) == old
    (cj, *_), = mc._searches(dataclasses.replace(cfg, options=("mode=jit",)))
    assert cj.backend_options == "mode=jit" and mc._key(cj, label, cfg, FP) != old
    row = mc._row(cj, label, 1 << 30, cfg, mc.Search(), "ok", None, 0.0, "k", FP)
    assert row.backend_options == "mode=jit" and backend_label(row) == "compile[mode=jit]"


def test_an_older_database_still_resumes(tmp_path):
    """A database written before backend_options existed (no such column) resumes: nothing is measured again,
    and the column is added."""
    db = tmp_path / "e.db"
    cfg = SweepConfig(models=("tiny-llama",), backends="eager", lens="16", device="cpu", decode_len=2, repeats=1,
                      warmup=0, progress=False, db=str(db))
    assert sweep.run(cfg) == {"ok": 1}
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE rows DROP COLUMN backend_options")
    con.commit()
    con.close()
    assert sweep.run(cfg) == {}
    with ResultStore(db, create=False) as store:
        (row,) = store.rows()
    assert row.backend_options is None and backend_label(row) == "eager"


def test_artifacts_are_kept_per_options(tmp_path):
    """The worker's artifact cache keys on the options: JIT exports (cheap: the eager artifact) with and
    without fuse=false land in different directories, and each is reused."""
    compile_ = get_backend("compile")
    spec = get_spec("tiny-llama")
    a, reused_a = compile_.prepare(spec, ExportOptions(dtype="float32", max_len=64, extra=(("mode", "jit"),)), tmp_path)
    b, reused_b = compile_.prepare(spec, ExportOptions(dtype="float32", max_len=64,
                                                       extra=(("mode", "jit"), ("fuse", "false"))), tmp_path)
    assert a.path != b.path and not reused_a and not reused_b
    assert dict(a.options.extra) == {"mode": "jit"} and dict(b.options.extra) == {"mode": "jit", "fuse": "false"}
    again, reused = compile_.prepare(spec, ExportOptions(dtype="float32", max_len=64, extra=(("mode", "jit"),)), tmp_path)
    assert reused and again.path == a.path


def test_jit_sweep_rows_then_an_option_less_sweep_measures_separately(tmp_path, capsys, monkeypatch):
    """`run --backend compile --opt mode=jit` writes self-describing rows; the same sweep without --opt is
    another cell (it does not resume from the JIT row; its load is made to fail here, so that no AOT package
    is built); the report tells the two apart."""
    from edgeports.report import write_report

    db = str(tmp_path / "e.db")
    args = ["run", "--models", "tiny-llama", "--backend", "compile", "--lens", "16", "--db", db, *FAST]
    main([*args, "--opt", "mode=jit"])
    with ResultStore(db, create=False) as store:
        (jit,) = store.rows()
    assert jit.status == "ok" and jit.backend_options == "mode=jit" and jit.ttft_p50_ms > 0
    (manifest,) = (tmp_path / "artifacts" / "compile").glob("tiny-llama-*/manifest.json")
    assert json.loads(manifest.read_text())["options"]["extra"] == {"mode": "jit"}
    main([*args, "--opt", "mode=jit"])
    assert "nothing new to measure" in capsys.readouterr().out
    monkeypatch.setenv("EDGEPORTS_FAULT", "raise:load")
    main(args)
    assert "1 error" in capsys.readouterr().out
    with ResultStore(db, create=False) as store:
        rows = {r.backend_options: r for r in store.rows()}
    assert set(rows) == {"mode=jit", ""} and rows[""].cell_key != jit.cell_key and rows["mode=jit"] == jit
    report = write_report([jit, Row.from_dict({**rows[""].to_dict(), "status": "ok", "reason": None,
                                               "ttft_p50_ms": 1.0})], tmp_path / "report", baseline="compile",
                          plots=False).read_text()
    lines = [ln for ln in report.splitlines() if ln.startswith("| tiny-llama")]
    assert [ln.split(" | ")[1] for ln in lines] == ["compile", "compile[mode=jit]"]
    assert f"{jit.ttft_p50_ms / 1.0:.2f}x" in lines[1]  # compared against the option-less baseline


@pytest.mark.parametrize("name", ["compile", "onnx", "trt"])
def test_every_key_an_exporter_reads_is_declared(name):
    """OPTIONS must list each extra key the exporter reads, or --opt would refuse a working option."""
    import inspect
    import re

    module = get_backend(name).exporter
    read = set(re.findall(r"""\.(?:choice|flag|integer|get)\(\s*["'](\w+)["']""", inspect.getsource(module)))
    refused = {"trt": {"onnx_attention"}}.get(name, set())  # trt refuses onnx_attention=gqa itself
    assert read and read - refused <= set(module.OPTIONS)
