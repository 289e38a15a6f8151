"""Bad input as a hostile user would send it (see docs/operations.md, "Bad input"): each
case ends in a clear message naming the file/line/field, or in a counted quarantine."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tasks.corpus.pile_reader import BadLine, PileDoc, iter_pile_file
from tasks.runtime.workspace import CorpusPaths, check_name, lock_path
from tasks.selection.select import load_queries


def test_a_binary_file_is_quarantined_line_by_line_not_a_crash(tmp_path):
    path = tmp_path / "blob.jsonl"
    rng = np.random.default_rng(0)
    path.write_bytes(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    recs = list(iter_pile_file(path))
    assert recs and all(isinstance(r, BadLine) for r in recs)
    assert [r.line for r in recs] == sorted({r.line for r in recs})  # each line named once
    assert all(r.reason for r in recs)


def test_a_10_mb_single_document_is_read_whole(tmp_path):
    text = "x" * (10 * 1024 * 1024)
    path = tmp_path / "huge.jsonl"
    good = {"text": "small", "meta": {"pile_set_name": "S"}}
    path.write_text(json.dumps({"text": text, "meta": {"pile_set_name": "Big"}}) + "\n"
                    + json.dumps(good) + "\n")
    recs = list(iter_pile_file(path))
    assert [type(r) for r in recs] == [PileDoc, PileDoc]
    assert len(recs[0].text) == len(text) and recs[1].line == 2


@pytest.mark.parametrize("content", [b"", b"\n\n   \n"])
def test_an_empty_queries_file_is_refused_by_name(tmp_path, content):
    path = tmp_path / "queries.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"queries file {path} holds no prompts"):
        load_queries(path)


def test_queries_with_a_bad_line_name_file_and_line(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: missing or empty field 'text'"):
        load_queries(path)
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xff"}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: not valid UTF-8"):
        load_queries(path)


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", "x'; DROP TABLE runs; --", "",
                                  "a\nb", "名" * 200, "-rf"])
def test_names_that_could_traverse_paths_or_inject_sql_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="invalid corpus name"):
        CorpusPaths(tmp_path, name)
    with pytest.raises(ValueError, match="invalid pool name"):
        check_name(name, "pool name")
    with pytest.raises(ValueError, match="invalid corpus name"):
        lock_path(tmp_path, "corpus", name)
    assert not any(p for p in tmp_path.rglob("*") if p.name not in (".locks",))


def test_run_tables_are_a_whitelist_and_values_are_bound(tmp_path):
    import pyarrow as pa

    from tasks.storage import db

    path = tmp_path / "curation.duckdb"
    with pytest.raises(ValueError, match="unknown run table"):
        db.replace_run_rows(path, "runs; DROP TABLE runs", "r", pa.table({"x": [1]}))
    evil = "r'); DROP TABLE runs; --"
    db.start_run(path, evil, "select", {"name": evil})
    db.finish_run(path, evil, "completed", {})
    assert db.query(path, "SELECT run_id FROM runs") == [(evil,)]
    assert os.path.isfile(path)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"budget": 0}, "--budget must be > 0, got 0"),
    ({"budget": -5}, "--budget must be > 0, got -5"),
    ({"budget": float("nan")}, "--budget must be > 0, got nan"),
    ({"budget": 5, "strategies": ["random", "bogus"]}, "unknown strategy 'bogus'"),
    ({"budget": 5, "pool_name": "../../etc"}, "invalid pool name"),
])
def test_rank_refuses_a_budget_that_selects_nothing(tmp_path, prefect_harness, kwargs, message):
    from flows.rank import rank_flow

    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"instruction": "Summarise this."}\n')
    args = {"pool": str(pool), "pool_name": "p", "workspace": str(tmp_path / "ws"), **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        rank_flow(**args)
    assert not (tmp_path / "ws" / "curation.duckdb").exists()  # refused before any write
