"""curation.duckdb: schema and the single writer.

DuckDB allows one read-write process per file, so only the flow's driver process opens the
database, briefly, inside one transaction per write; Ray workers never touch it. Every
write of a run's rows first deletes that run's rows, so a rerun replaces and never doubles.
Concurrent runs on one workspace queue on an flock beside the file (writers exclusive,
readers shared), so their writes are serialised instead of failing on DuckDB's lock.
Every start of a run is an *attempt* in ``run_attempts``; an attempt still marked
'running' whose process is gone is recorded as 'crashed' when the run starts again.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tasks.runtime.locks import WorkspaceBusy, hold

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, flow VARCHAR NOT NULL, status VARCHAR NOT NULL,
    params JSON, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, summary JSON
);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS attempts INTEGER;
CREATE TABLE IF NOT EXISTS run_attempts (
    run_id VARCHAR NOT NULL, attempt INTEGER NOT NULL, status VARCHAR NOT NULL,
    pid INTEGER, host VARCHAR, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
    error VARCHAR
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
-- instruction-pool curation (rank / handoff): labelled items, costs, groups, bad rows
ALTER TABLE pool_items ADD COLUMN IF NOT EXISTS output VARCHAR;
ALTER TABLE pool_items ADD COLUMN IF NOT EXISTS cost DOUBLE;
ALTER TABLE pool_items ADD COLUMN IF NOT EXISTS file VARCHAR;
ALTER TABLE pool_items ADD COLUMN IF NOT EXISTS line BIGINT;
ALTER TABLE budgets ADD COLUMN IF NOT EXISTS strategy VARCHAR;
ALTER TABLE budgets ADD COLUMN IF NOT EXISTS n_items BIGINT;
ALTER TABLE budgets ADD COLUMN IF NOT EXISTS n_selected BIGINT;
ALTER TABLE selections ADD COLUMN IF NOT EXISTS grp VARCHAR;
ALTER TABLE selections ADD COLUMN IF NOT EXISTS cost DOUBLE;
CREATE TABLE IF NOT EXISTS quarantine (
    run_id VARCHAR NOT NULL, pool_name VARCHAR NOT NULL, file VARCHAR, line BIGINT,
    reason VARCHAR, raw VARCHAR
);
-- the annotation loop: tasks pushed to Label Studio, annotations collected back
CREATE TABLE IF NOT EXISTS labelstudio_tasks (
    run_id VARCHAR NOT NULL, pool_name VARCHAR NOT NULL, strategy VARCHAR NOT NULL,
    item_id VARCHAR NOT NULL, batch INTEGER, url VARCHAR NOT NULL, project VARCHAR,
    project_id BIGINT NOT NULL, task_id BIGINT NOT NULL, status VARCHAR NOT NULL,
    imported_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS annotations (
    run_id VARCHAR NOT NULL, item_id VARCHAR NOT NULL, project VARCHAR, task_id BIGINT,
    annotator VARCHAR, response VARCHAR, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ,
    pool_name VARCHAR, strategy VARCHAR, url VARCHAR, project_id BIGINT,
    annotation_id BIGINT, status VARCHAR NOT NULL, collected_at TIMESTAMPTZ,
    deleted_at TIMESTAMPTZ
);
-- the latest completed run of each (pool, strategy), with the item text
CREATE OR REPLACE VIEW selected_for_annotation AS
WITH latest AS (
    SELECT k.pool_name, k.strategy, k.run_id,
           row_number() OVER (PARTITION BY k.pool_name, k.strategy
                              ORDER BY r.finished_at DESC, k.run_id) AS rn
    FROM (SELECT DISTINCT run_id, pool_name, strategy FROM selections) k
    JOIN runs r ON r.run_id = k.run_id
    WHERE r.status = 'completed')
SELECT s.pool_name, s.strategy, s.run_id, s.rank, s.batch, s.score, s.grp, s.cost,
       s.item_id, p.source, p.instruction, p.input
FROM latest l
JOIN selections s ON s.run_id = l.run_id AND s.pool_name = l.pool_name
                 AND s.strategy = l.strategy
JOIN pool_items p ON p.pool_name = s.pool_name AND p.item_id = s.item_id
WHERE l.rn = 1;
-- per run, strategy and group: budget, allocation, spend (what the selection costs),
-- items, and what annotators have done so far (items with a submitted, non-empty
-- response in `annotations`, and their cost in the budget's unit)
CREATE OR REPLACE VIEW budget_summary AS
WITH done AS (
    SELECT DISTINCT run_id, strategy, item_id FROM annotations WHERE status = 'submitted'),
annotated AS (
    SELECT s.run_id, s.pool_name, s.strategy, s.grp, count(*) AS n_annotated,
           sum(s.cost) AS annotated_spent
    FROM selections s
    JOIN done d ON d.run_id = s.run_id AND d.strategy = s.strategy AND d.item_id = s.item_id
    GROUP BY ALL)
SELECT b.run_id, b.pool_name, b.strategy, b.grp, b.unit, b.total, b.allocated, b.spent,
       b.n_items, b.n_selected,
       b.spent / NULLIF(b.allocated, 0) AS spent_fraction,
       coalesce(a.n_annotated, 0) AS n_annotated,
       coalesce(a.annotated_spent, 0) AS annotated_spent,
       coalesce(a.annotated_spent, 0) / NULLIF(b.allocated, 0) AS annotated_fraction,
       r.finished_at
FROM budgets b LEFT JOIN runs r ON r.run_id = b.run_id
LEFT JOIN annotated a ON a.run_id = b.run_id AND a.pool_name = b.pool_name
                     AND a.strategy IS NOT DISTINCT FROM b.strategy
                     AND a.grp IS NOT DISTINCT FROM b.grp;
"""

RUN_TABLES = ("test_time_selections", "item_scores", "budgets", "selections", "handoffs",
              "evaluations", "quarantine")


def _now() -> datetime:
    return datetime.now(timezone.utc)


#: Seconds a process waits for another one's DuckDB transaction before giving up.
LOCK_WAIT_S = float(os.environ.get("SIFT_DB_LOCK_WAIT_S", "300"))


@contextmanager
def connect(path: str | Path, *, read_only: bool = False, retries: int = 20) -> Iterator:
    """Open the database (creating the schema on write) while holding its flock.

    Writers wait for each other (and readers for writers) up to :data:`LOCK_WAIT_S`. A
    process outside this tool holding the file (e.g. a ``duckdb`` shell) is retried
    briefly, then reported by name.
    """
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no curation database yet (run a flow first)")
    with hold(path.with_name(path.name + ".lock"), f"DuckDB file {path.name}",
              shared=read_only, wait_s=LOCK_WAIT_S):
        last: Exception | None = None
        for attempt in range(retries):
            try:
                con = duckdb.connect(str(path), read_only=read_only)
                break
            except duckdb.IOException as err:  # lock held by a process outside this tool
                last = err
                time.sleep(min(0.1 * 2**attempt, 2.0))
        else:
            raise WorkspaceBusy(
                f"workspace busy: {path} is held by another process ({last}); DuckDB allows "
                "one writer per file, close other sessions on it"
            ) from last
        try:
            if not read_only:
                con.execute(SCHEMA)
            yield con
        finally:
            con.close()


def _alive(pid: int | None, host: str | None) -> bool:
    """Whether the process that started an attempt still runs. Only checkable on this
    host; an attempt from another host is taken as ended (one driver host per workspace)."""
    if pid is None or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def start_run(path: str | Path, run_id: str, flow: str, params: dict[str, Any]) -> int:
    """Start a new attempt of ``run_id``: reset its ``runs`` row to 'running', record the
    attempt, and mark earlier attempts whose process died as 'crashed'. Returns the
    attempt number (1 for the first). Refuses when the same run is live in another process.
    """
    me, host, now = os.getpid(), socket.gethostname(), _now()
    with connect(path) as con:
        con.execute("BEGIN")
        try:
            for attempt, pid, ahost in con.execute(
                "SELECT attempt, pid, host FROM run_attempts WHERE run_id = ? AND "
                "status = 'running'", [run_id]).fetchall():
                if pid != me and _alive(pid, ahost):
                    raise WorkspaceBusy(
                        f"workspace busy: run {run_id!r} is already running (attempt "
                        f"{attempt}, pid {pid} on {ahost})"
                    )
                con.execute(
                    "UPDATE run_attempts SET status = 'crashed', finished_at = ?, error = ? "
                    "WHERE run_id = ? AND attempt = ?",
                    [now, f"process {pid} on {ahost} ended without finishing the run",
                     run_id, attempt])
            n = con.execute("SELECT coalesce(max(attempt), 0) + 1 FROM run_attempts "
                            "WHERE run_id = ?", [run_id]).fetchone()[0]
            con.execute("INSERT INTO run_attempts VALUES (?, ?, 'running', ?, ?, ?, NULL, NULL)",
                        [run_id, n, me, host, now])
            con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
            con.execute(
                "INSERT INTO runs (run_id, flow, status, params, started_at, attempts) "
                "VALUES (?, ?, 'running', ?, ?, ?)",
                [run_id, flow, json.dumps(params, default=str, sort_keys=True), now, n],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return int(n)


def finish_run(path: str | Path, run_id: str, status: str, summary: dict | None = None,
               attempt: int | None = None) -> None:
    """Close the run (and its attempt) with ``status``: 'completed' or 'failed'."""
    now = _now()
    with connect(path) as con:
        con.execute("BEGIN")
        con.execute(
            "UPDATE runs SET status = ?, finished_at = ?, summary = ? WHERE run_id = ?",
            [status, now, json.dumps(summary or {}, default=str), run_id],
        )
        if attempt is not None:
            con.execute(
                "UPDATE run_attempts SET status = ?, finished_at = ?, error = ? "
                "WHERE run_id = ? AND attempt = ?",
                [status, now, (summary or {}).get("error"), run_id, attempt])
        con.execute("COMMIT")


#: DuckDB's memory limit while it loads a Parquet file (:func:`replace_rows`). The load
#: streams, but by default DuckDB caches up to 80 % of RAM: loading a 1M-item pool
#: (200 MB of Parquet) peaked at 666 MB RSS without a limit, 356 MB with 256MB.
LOAD_MEMORY_LIMIT = os.environ.get("SIFT_DB_LOAD_MEMORY_LIMIT", "256MB")

#: Tables whose rows are replaced wholesale: the per-run tables and the pools.
REPLACEABLE_TABLES = (*RUN_TABLES, "pool_items", "labelstudio_tasks")


def replace_rows(path: str | Path, table: str, rows: pa.Table | str | Path, where: str,
                 params: list[Any], *, constants: dict[str, Any] | None = None) -> int:
    """In one transaction, delete the rows of ``table`` matching ``where`` (SQL with ``?``
    placeholders bound to ``params``; written by this package, never by users) and insert
    ``rows``. Returns the row count. A rerun therefore replaces, never doubles.

    ``rows`` is an Arrow table, or the path of a Parquet file that DuckDB streams from disk
    (a million-row pool never passes through Python) under :data:`LOAD_MEMORY_LIMIT`.
    ``constants`` gives columns the rows lack one value for every row (e.g.
    ``{"pool_name": name}``)."""
    if table not in REPLACEABLE_TABLES:
        raise ValueError(f"unknown run table {table!r}")
    constants = constants or {}
    with connect(path) as con:
        schema = con.execute(f"DESCRIBE {table}").fetchall()
        if isinstance(rows, pa.Table):
            con.register("new_rows", rows)
            source, source_params, have = "new_rows", [], rows.column_names
        else:
            # global to the DuckDB instance, which connect() opens for this call only
            con.execute("SET memory_limit = ?", [LOAD_MEMORY_LIMIT])
            source, source_params = "read_parquet(?)", [str(rows)]
            have = [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)",
                                              source_params).fetchall()]
        missing = [c for c, *_ in schema if c not in have and c not in constants]
        if missing:
            raise ValueError(f"rows for {table} lack columns {missing}")
        # column names come from DESCRIBE of our own table, never from the input
        select = ", ".join(f"CAST(? AS {typ})" if c in constants else f'"{c}"'
                           for c, typ, *_ in schema)
        const_params = [constants[c] for c, *_ in schema if c in constants]
        con.execute("BEGIN")
        try:
            con.execute(f"DELETE FROM {table} WHERE {where}", params)
            n = con.execute(f"INSERT INTO {table} SELECT {select} FROM {source}",
                            const_params + source_params).fetchone()[0]
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        finally:
            if isinstance(rows, pa.Table):
                con.unregister("new_rows")
    return int(n)


def replace_run_rows(path: str | Path, table: str, run_id: str, rows: pa.Table | str | Path,
                     *, constants: dict[str, Any] | None = None) -> int:
    """Atomically replace ``run_id``'s rows in ``table`` with ``rows`` (an Arrow table or a
    Parquet path, see :func:`replace_rows`); returns row count."""
    if table not in RUN_TABLES:
        raise ValueError(f"unknown run table {table!r}")
    return replace_rows(path, table, rows, "run_id = ?", [run_id], constants=constants)


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


def format_rows(columns: list[str], rows: list[tuple]) -> str:
    """Rows as an aligned plain-text table under a header line (CLI `sql`, the demo)."""
    cells = [[str(c) for c in columns]] + [[str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
