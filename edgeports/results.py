"""The results store: SQLite in WAL mode, one table of flat Rows, default results/edgeports.db.

The `rows` table's columns come from the Row dataclass (edgeports.measure.row); opening an older
database adds the columns it lacks (ALTER TABLE ADD COLUMN), and columns the current Row does not
know are kept and ignored. One row per cell key (the cell config on one platform): measuring a
cell again replaces its row, so resuming or forcing a sweep never duplicates a cell. Each row is
committed as soon as it is added. Other flat records live in tables of their own in the same file
(`add_records` / `records`): per-operator profiles (`ops`, keyed by cell_key) and max-context
searches (`maxctx`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgeports.errors import EdgeportsError, missing_dependency
from edgeports.measure.row import Row, field_types

DEFAULT_DB = "results/edgeports.db"
TABLE = "rows"
SQL_TYPES = {int: "INTEGER", float: "REAL", str: "TEXT"}
FORMATS = ("csv", "parquet", "json")
# what a resumed sweep does not measure again: finished cells. error and timeout cells are retried,
# and so are cells skipped only because an earlier length timed out.
FINAL_STATUSES = ("ok", "oom", "skipped")
RETRY_SKIP_PREFIX = "after timeout"


def is_final(status: str, reason: str | None) -> bool:
    """Whether a row counts as measured for resume."""
    return status in FINAL_STATUSES and not (status == "skipped" and (reason or "").startswith(RETRY_SKIP_PREFIX))


class ResultStore:
    """An open results database."""

    def __init__(self, path: str | Path = DEFAULT_DB, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise EdgeportsError(f"no results database at {self.path} (run `edgeports run` first, or pass --db)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except (sqlite3.Error, OSError) as e:
            raise EdgeportsError(f"cannot use results database {self.path}: {e}") from None

    def _migrate(self) -> None:
        self._ensure_table(TABLE, field_types(), ("cell_key",), index=f"{TABLE}_cell")

    def _ensure_table(self, table: str, types: dict[str, type], key: tuple[str, ...], index: str | None = None) -> None:
        """Create `table` with these columns (or add the missing ones) and a unique index on `key`."""
        have = [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]
        if not have:
            cols = ", ".join(f'"{n}" {SQL_TYPES[t]}' for n, t in types.items())
            self.conn.execute(f"CREATE TABLE {table} ({cols})")
        for name, t in types.items():
            if have and name not in have:
                self.conn.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {SQL_TYPES[t]}')
        self.conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {index or table + '_key'} ON {table}"
                          f"({', '.join(key)})")
        self.conn.commit()

    def add(self, row: Row) -> None:
        """Insert (or replace the earlier row of the same cell) and commit."""
        data = row.to_dict()
        names = ", ".join(f'"{n}"' for n in data)
        marks = ", ".join("?" for _ in data)
        try:
            with self.conn:
                self.conn.execute(f"INSERT OR REPLACE INTO {TABLE} ({names}) VALUES ({marks})", list(data.values()))
        except sqlite3.Error as e:
            raise EdgeportsError(f"cannot write to results database {self.path}: {e}") from None

    def rows(self, where: str = "", params: Iterable[Any] = ()) -> list[Row]:
        """Rows (optionally filtered by a SQL WHERE clause), oldest first."""
        self.conn.row_factory = sqlite3.Row
        try:
            cur = self.conn.execute(f"SELECT * FROM {TABLE} {'WHERE ' + where if where else ''} ORDER BY rowid",
                                    tuple(params))
            return [Row.from_dict(dict(r)) for r in cur]
        finally:
            self.conn.row_factory = None

    def add_records(self, table: str, records: Iterable[Any], key: tuple[str, ...]) -> None:
        """Insert flat frozen dataclasses (one class per table) into `table`, created or extended from the
        class's fields; a record whose `key` columns match an earlier one replaces it. Committed at once."""
        records = list(records)
        if not records:
            return
        self._ensure_table(table, field_types(type(records[0])), key)
        names = [f.name for f in dataclasses.fields(records[0])]
        cols, marks = ", ".join(f'"{n}"' for n in names), ", ".join("?" for _ in names)
        try:
            with self.conn:
                self.conn.executemany(f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})",
                                      [[getattr(r, n) for n in names] for r in records])
        except sqlite3.Error as e:
            raise EdgeportsError(f"cannot write to results database {self.path}: {e}") from None

    def records(self, table: str, cls: type, where: str = "", params: Iterable[Any] = ()) -> list[Any]:
        """The records of `table` as `cls` instances (columns cls lacks are ignored), oldest first;
        [] when the table does not exist."""
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            return []
        names = {f.name for f in dataclasses.fields(cls)}
        self.conn.row_factory = sqlite3.Row
        try:
            cur = self.conn.execute(f"SELECT * FROM {table} {'WHERE ' + where if where else ''} ORDER BY rowid",
                                    tuple(params))
            return [cls(**{k: v for k, v in dict(r).items() if k in names}) for r in cur]
        finally:
            self.conn.row_factory = None

    def done_keys(self) -> set[str]:
        """cell_key of every finished cell (what resume skips)."""
        cur = self.conn.execute(f"SELECT cell_key, status, reason FROM {TABLE}")
        return {k for k, status, reason in cur if is_final(status, reason)}

    def count(self) -> int:
        """Number of rows."""
        return self.conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def export_rows(rows: list[Row], out: str | Path, fmt: str) -> Path:
    """Write rows as csv, parquet or json (a list of objects) to `out`; written to a temporary
    name first, so a failed export leaves no partial file."""
    if fmt not in FORMATS:
        raise EdgeportsError(f"unknown format {fmt!r} (use one of {', '.join(FORMATS)})")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    names = [f.name for f in dataclasses.fields(Row)]
    records = [r.to_dict() for r in rows]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=names)
                writer.writeheader()
                writer.writerows(records)
        elif fmt == "json":
            tmp.write_text(json.dumps(records, indent=1))
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise missing_dependency("pyarrow", "parquet export", "pip install 'edgeports[parquet]'") from None
            types = field_types()
            pa_types = {int: pa.int64(), float: pa.float64(), str: pa.string()}
            schema = pa.schema([(n, pa_types[types[n]]) for n in names])
            pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp)
        tmp.replace(out)
    except OSError as e:
        if tmp.is_file():
            tmp.unlink()
        raise EdgeportsError(f"cannot write {out}: {e.strerror or e}") from None
    return out
