import csv
import json
import sqlite3

import pytest

from edgeports.errors import EdgeportsError
from edgeports.measure.row import Row
from edgeports.results import ResultStore, export_rows, is_final


def row(prompt_len=256, status="ok", backend="eager", key=None, **kw):
    return Row(model="tiny-llama", arch="llama", family="transformer", backend=backend, device="cpu",
               dtype="float32", batch=1, prompt_len=prompt_len, decode_len=4, prefill_mode="full", status=status,
               cell_key=key or f"{backend}-{prompt_len}", ttft_p50_ms=1.5, **kw)


def test_round_trip_and_wal(tmp_path):
    db = tmp_path / "r" / "e.db"
    with ResultStore(db) as s:
        s.add(row(256))
        s.add(row(512, status="oom", reason="out of memory"))
        assert s.count() == 2
        assert s.rows() == [row(256), row(512, status="oom", reason="out of memory")]
        assert s.rows("status = ?", ("oom",))[0].prompt_len == 512
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_same_cell_replaces_never_duplicates(tmp_path):
    with ResultStore(tmp_path / "e.db") as s:
        s.add(row(256, status="error", reason="boom"))
        s.add(row(256, status="ok"))
        assert [(r.status, r.reason) for r in s.rows()] == [("ok", None)]


def test_done_keys_follow_resume_rules(tmp_path):
    with ResultStore(tmp_path / "e.db") as s:
        for i, (status, reason) in enumerate([("ok", None), ("oom", "x"), ("skipped", "out of memory at 1k"),
                                              ("error", "x"), ("timeout", "x"),
                                              ("skipped", "after timeout at 1k")]):
            s.add(row(256 + i, status=status, reason=reason, key=f"k{i}"))
        assert s.done_keys() == {"k0", "k1", "k2"}
    assert is_final("ok", None) and not is_final("error", "x")


def test_older_and_newer_schemas_are_tolerated(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    # an older database: fewer columns, plus one this version does not know
    con.execute("CREATE TABLE rows (model TEXT, arch TEXT, family TEXT, backend TEXT, device TEXT, dtype TEXT, "
                "batch INTEGER, prompt_len INTEGER, decode_len INTEGER, prefill_mode TEXT, status TEXT, "
                "cell_key TEXT, gone_field TEXT)")
    con.execute("INSERT INTO rows VALUES ('m', 'llama', 'transformer', 'eager', 'cpu', 'float32', 1, 64, 4, "
                "'full', 'ok', 'old', 'x')")
    con.commit()
    con.close()
    with ResultStore(db) as s:
        s.add(row(256))
        rows = s.rows()
    assert [r.cell_key for r in rows] == ["old", "eager-256"]
    assert rows[0].ttft_p50_ms is None and rows[1].ttft_p50_ms == 1.5
    cols = [r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(rows)")]
    assert "gone_field" in cols and "ttft_p50_ms" in cols


def test_unusable_db_paths(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EdgeportsError, match="cannot use results database"):
        ResultStore(blocker / "e.db")
    with pytest.raises(EdgeportsError, match="cannot use results database"):
        ResultStore(tmp_path)  # a directory
    with pytest.raises(EdgeportsError, match="no results database"):
        ResultStore(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export(tmp_path, fmt):
    rows = [row(256), row(512, status="oom", reason="out of memory, at 512")]
    out = export_rows(rows, tmp_path / f"r.{fmt}", fmt)
    if fmt == "csv":
        back = list(csv.DictReader(out.open()))
        assert [b["prompt_len"] for b in back] == ["256", "512"] and back[1]["reason"] == "out of memory, at 512"
    elif fmt == "json":
        back = json.loads(out.read_text())
        assert back[0] == rows[0].to_dict()
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        table = pq.read_table(out)
        assert table.column("prompt_len").to_pylist() == [256, 512]
        assert table.column("ttft_p50_ms").to_pylist() == [1.5, 1.5]
    assert [p.name for p in tmp_path.iterdir()] == [f"r.{fmt}"]


def test_export_errors(tmp_path):
    with pytest.raises(EdgeportsError, match="unknown format"):
        export_rows([row()], tmp_path / "x", "xlsx")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EdgeportsError, match="cannot write"):
        export_rows([row()], blocker / "r.csv", "csv")
