"""DuckDB writes replace a run's rows; doc_id packing is reversible and ordered."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tasks.corpus.lookup import pack_doc_ids, unpack_doc_id
from tasks.storage import db
from tasks.storage.runs import make_run_id, tracked_run


def _rows(run_id, n):
    return pa.table({
        "run_id": [run_id] * n, "query_id": [f"q{i}" for i in range(n)],
        "rank": pa.array(range(1, n + 1), pa.int32()), "doc_id": pa.array(range(n), pa.int64()),
        "strategy": ["sift"] * n, "posterior_variance": [1.0 / (i + 1) for i in range(n)],
        "similarity": [0.5] * n,
    })


def test_replace_run_rows_is_idempotent(tmp_path):
    path = tmp_path / "c.duckdb"
    db.replace_run_rows(path, "test_time_selections", "r1", _rows("r1", 5))
    db.replace_run_rows(path, "test_time_selections", "r2", _rows("r2", 3))
    db.replace_run_rows(path, "test_time_selections", "r1", _rows("r1", 4))
    counts = db.query(path, "SELECT run_id, count(*) FROM test_time_selections "
                            "GROUP BY run_id ORDER BY run_id")
    assert counts == [("r1", 4), ("r2", 3)]


def test_replace_refuses_missing_columns_and_unknown_tables(tmp_path):
    path = tmp_path / "c.duckdb"
    with pytest.raises(ValueError, match="lack columns"):
        db.replace_run_rows(path, "test_time_selections", "r", _rows("r", 2).drop(["rank"]))
    with pytest.raises(ValueError, match="unknown run table"):
        db.replace_run_rows(path, "runs; DROP TABLE runs", "r", _rows("r", 1))


def test_tracked_run_records_failure_then_success(tmp_path):
    path = tmp_path / "c.duckdb"
    with pytest.raises(RuntimeError), tracked_run(path, "x", "select", {"a": 1}):
        raise RuntimeError("boom")
    assert db.query(path, "SELECT status, summary->>'error' FROM runs") == [
        ("failed", "RuntimeError('boom')")]
    with tracked_run(path, "x", "select", {"a": 1}) as rec:
        rec.summary = {"ok": True}
    assert db.query(path, "SELECT count(*), any_value(status) FROM runs") == [(1, "completed")]


def test_run_ids_are_stable_per_parameters():
    assert make_run_id("select", {"a": 1, "b": 2}) == make_run_id("select", {"b": 2, "a": 1})
    assert make_run_id("select", {"a": 1}) != make_run_id("select", {"a": 2})
    assert make_run_id("select", {"a": 1}, "mine") == "mine"


def test_doc_ids_roundtrip_and_sort_by_file_line_chunk():
    lines = np.array([1, 1, 2, 2**28 - 1])
    chunks = np.array([0, 1, 0, 4095])
    ids = pack_doc_ids(7, lines, chunks)
    assert [unpack_doc_id(i) for i in ids] == [(7, 1, 0), (7, 1, 1), (7, 2, 0),
                                               (7, 2**28 - 1, 4095)]
    assert np.all(np.diff(ids) > 0) and ids.dtype == np.int64 and (ids > 0).all()
    with pytest.raises(ValueError, match="overflow"):
        pack_doc_ids(0, np.array([2**28]), np.array([0]))
