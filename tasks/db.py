"""curation.duckdb: schema and the single writer.

DuckDB allows one read-write process per file, so only the flow's driver process opens the
database, briefly, inside one transaction per write; Ray workers never touch it. Every
write of a run's rows first deletes that run's rows, so a rerun replaces and never doubles.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, flow VARCHAR NOT NULL, status VARCHAR NOT NULL,
    params JSON, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, summary JSON
);
CREATE TABLE IF NOT EXISTS corpora (
    name VARCHAR PRIMARY KEY, path VARCHAR, model VARCHAR, dim INTEGER, n_chunks BIGINT,
    created_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS test_time_selections (
    run_id VARCHAR NOT NULL, query_id VARCHAR NOT NULL, rank INTEGER NOT NULL,
    doc_id BIGINT NOT NULL, strategy VARCHAR NOT NULL, posterior_variance DOUBLE,
    similarity DOUBLE
);
CREATE TABLE IF NOT EXISTS pool_items (
    pool_name VARCHAR NOT NULL, item_id VARCHAR NOT NULL, instruction VARCHAR,
    input VARCHAR, source VARCHAR
);
CREATE TABLE IF NOT EXISTS item_scores (
    run_id VARCHAR NOT NULL, pool_name VARCHAR NOT NULL, item_id VARCHAR NOT NULL,
    metric VARCHAR NOT NULL, value DOUBLE
);
CREATE TABLE IF NOT EXISTS budgets (
    run_id VARCHAR NOT NULL, pool_name VARCHAR NOT NULL, grp VARCHAR, unit VARCHAR,
    total DOUBLE, allocated DOUBLE, spent DOUBLE
);
CREATE TABLE IF NOT EXISTS selections (
    run_id VARCHAR NOT NULL, pool_name VARCHAR NOT NULL, item_id VARCHAR NOT NULL,
    rank INTEGER NOT NULL, strategy VARCHAR, score DOUBLE, batch INTEGER
);
CREATE TABLE IF NOT EXISTS handoffs (
    run_id VARCHAR NOT NULL, path VARCHAR NOT NULL, format VARCHAR, n_items BIGINT,
    sha256 VARCHAR, created_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, strategy VARCHAR NOT NULL,
    budget DOUBLE, seed INTEGER, metric VARCHAR NOT NULL, value DOUBLE
);
"""

RUN_TABLES = ("test_time_selections", "item_scores", "budgets", "selections", "handoffs",
              "evaluations")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def connect(path: str | Path, *, read_only: bool = False, retries: int = 20) -> Iterator:
    """Open the database (creating schema on write); retry briefly while another process
    holds the file, then fail with a message that says so."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(retries):
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as err:  # lock held by another process
            last = err
            time.sleep(min(0.1 * 2**attempt, 2.0))
    else:
        raise RuntimeError(
            f"{path}: could not open DuckDB ({last}). Another process holds it read-write; "
            "DuckDB allows one writer per file"
        ) from last
    try:
        if not read_only:
            con.execute(SCHEMA)
        yield con
    finally:
        con.close()


def start_run(path: str | Path, run_id: str, flow: str, params: dict[str, Any]) -> None:
    """Insert or reset the ``runs`` row of ``run_id`` (status 'running')."""
    with connect(path) as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
        con.execute(
            "INSERT INTO runs VALUES (?, ?, 'running', ?, ?, NULL, NULL)",
            [run_id, flow, json.dumps(params, default=str, sort_keys=True), _now()],
        )
        con.execute("COMMIT")


def finish_run(path: str | Path, run_id: str, status: str, summary: dict | None = None) -> None:
    with connect(path) as con:
        con.execute(
            "UPDATE runs SET status = ?, finished_at = ?, summary = ? WHERE run_id = ?",
            [status, _now(), json.dumps(summary or {}, default=str), run_id],
        )


def replace_run_rows(path: str | Path, table: str, run_id: str, rows: pa.Table) -> int:
    """Atomically replace ``run_id``'s rows in ``table`` with ``rows``; returns row count."""
    if table not in RUN_TABLES:
        raise ValueError(f"unknown run table {table!r}")
    with connect(path) as con:
        cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
        missing = [c for c in cols if c not in rows.column_names]
        if missing:
            raise ValueError(f"rows for {table} lack columns {missing}")
        con.register("new_rows", rows.select(cols))
        con.execute("BEGIN")
        try:
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            con.execute(f"INSERT INTO {table} SELECT * FROM new_rows")
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("new_rows")
    return rows.num_rows


def upsert_corpus(path: str | Path, name: str, corpus_path: str, model: str, dim: int,
                  n_chunks: int, created_at: str | None = None) -> None:
    with connect(path) as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM corpora WHERE name = ?", [name])
        con.execute(
            "INSERT INTO corpora VALUES (?, ?, ?, ?, ?, ?)",
            [name, corpus_path, model, dim, n_chunks, created_at or _now()],
        )
        con.execute("COMMIT")


def query(path: str | Path, sql: str, params: list | None = None) -> list[tuple]:
    """Run a read-only query and return all rows (for tests, the CLI and reports)."""
    with connect(path, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()
