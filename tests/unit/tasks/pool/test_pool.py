"""Pool ingest: JSONL / CSV / Parquet, quarantine with file:line:reason, --strict, exact
duplicates, labelled rows, stable content ids, idempotent storage in a real DuckDB file."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.pool.items import content_id, ingest_pool_files, read_pool, read_targets, store_pool
from tasks.storage import db


def _lines() -> list[bytes]:
    good = {"item_id": "a1", "instruction": "Summarise the article.", "input": "Text A",
            "source": "news"}
    return [
        json.dumps(good).encode(),                                          # 1 ok
        b'{"instruction": "broken',                                         # 2 malformed
        json.dumps({"instruction": "   ", "source": "news"}).encode(),     # 3 empty
        b'{"instruction": "caf\xff", "source": "news"}',                    # 4 bad UTF-8
        json.dumps({"instruction": 42}).encode(),                           # 5 wrong type
        json.dumps({"instruction": "Explain.", "input": ["x"]}).encode(),   # 6 wrong type
        json.dumps({**good, "item_id": "a2"}).encode(),                     # 7 dup content
        json.dumps({"instruction": "Write code.", "task": "code"}).encode(),  # 8 ok, task
        json.dumps({"instruction": "Done already.", "output": "yes"}).encode(),  # 9 labelled
        b"",                                                                # 10 blank
        json.dumps([1, 2]).encode(),                                        # 11 not object
        json.dumps({"item_id": "a1", "instruction": "Other text"}).encode(),  # 12 id reused
        json.dumps({"instruction": "Costly.", "cost": -3}).encode(),        # 13 bad cost
        json.dumps({"instruction": "Priced.", "cost": 7}).encode(),         # 14 ok, cost
    ]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"\n".join(_lines()) + b"\n")
    return path


def test_jsonl_quarantines_bad_rows_with_file_line_and_reason(jsonl):
    pool = read_pool(jsonl)
    bad = {q["line"]: q["reason"] for q in pool.quarantined}
    assert sorted(bad) == [2, 3, 4, 5, 6, 11, 12, 13]
    assert "malformed JSON" in bad[2]
    assert bad[3] == "empty field 'instruction'"
    assert "invalid UTF-8" in bad[4]
    assert "'instruction' must be a string" in bad[5]
    assert "'input' must be a string" in bad[6]
    assert "expected a JSON object" in bad[11]
    assert "already used for different content" in bad[12]
    assert "'cost'" in bad[13]
    assert all(q["file"] == str(jsonl.resolve()) for q in pool.quarantined)
    items = pool.items.to_pylist()
    assert [r["line"] for r in items] == [1, 8, 9, 14]
    assert pool.n_duplicates == 1 and pool.n_rows == 13  # the blank line is not a row
    assert items[1]["source"] == "code"  # 'task' is the alias of 'source'
    assert items[0]["source"] == "news" and items[2]["source"] == "unknown"
    assert pool.labeled == [False, False, True, False]
    assert items[3]["cost"] == 7.0 and items[0]["cost"] is None
    # no item_id given: a content hash, the same on every read
    assert items[1]["item_id"] == content_id("Write code.", "")


def test_strict_fails_on_the_first_bad_row_naming_file_and_line(jsonl):
    with pytest.raises(ValueError, match=rf"{jsonl.name}:2: malformed JSON"):
        read_pool(jsonl, strict=True)


def test_duplicate_keeps_the_label_of_any_copy(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"instruction": "Same", "input": "x"},
            {"instruction": "Same", "input": "x", "output": "labelled"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pool = read_pool(path)
    assert pool.items.num_rows == 1 and pool.labeled == [True] and pool.n_duplicates == 1


def test_csv_and_parquet(tmp_path):
    csv_path = tmp_path / "p.csv"
    csv_path.write_bytes(
        b"item_id,instruction,input,source,cost\n"
        b"c1,Translate this,\"multi\nline input\",docs,3\n"
        b"c2,,x,docs,\n"                        # line 4: empty instruction
        b"c3,Bad bytes \xff here,,docs,\n"      # line 5: invalid UTF-8
        b"c4,Fine,,docs,abc\n"                  # line 6: cost not a number
        b"c5,Also fine,,,\n"
    )
    pool = read_pool(csv_path)
    assert [r["item_id"] for r in pool.items.to_pylist()] == ["c1", "c5"]
    assert pool.items.column("input").to_pylist()[0] == "multi\nline input"
    assert pool.items.column("cost").to_pylist() == [3.0, None]
    assert {q["line"]: q["reason"].split(" ")[0] for q in pool.quarantined} == {
        4: "empty", 5: "invalid", 6: "field"}
    with pytest.raises(ValueError, match=r"p.csv:4: empty field 'instruction'"):
        read_pool(csv_path, strict=True)

    pq_path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"instruction": ["One", None, "Three"],
                             "input": [None, "y", "z"], "source": ["s", "s", None]}), pq_path)
    pool = read_pool(pq_path)
    assert pool.items.column("instruction").to_pylist() == ["One", "Three"]
    assert [(q["line"], q["reason"]) for q in pool.quarantined] == [
        (2, "missing field 'instruction'")]
    (tmp_path / "no_instr.parquet").write_bytes(b"")
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "no_instr.parquet")
    with pytest.raises(ValueError, match="no 'instruction' column"):
        read_pool(tmp_path / "no_instr.parquet")


def test_store_pool_replaces_rows_on_rerun(jsonl, tmp_path):
    dbf = tmp_path / "c.duckdb"
    res = ingest_pool_files(jsonl, tmp_path / "pools" / "demo")
    for _ in range(2):
        store_pool(dbf, "run-1", "demo", res)
    assert db.query(dbf, "SELECT count(*) FROM pool_items WHERE pool_name='demo'") == [(4,)]
    assert db.query(dbf, "SELECT count(*) FROM quarantine WHERE run_id='run-1'") == [(8,)]
    assert db.query(dbf, "SELECT count(*) FROM pool_items WHERE output IS NOT NULL") == [(1,)]


def test_read_targets(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"text": "hello"}\n{"instruction": "Do", "input": "this"}\n')
    assert read_targets(p) == ["hello", "Do\n\nthis"]
    p.write_text('{"text": "ok"}\n{"nope": 1}\n')
    with pytest.raises(ValueError, match="t.jsonl:2"):
        read_targets(p)
