"""Streaming pool ingest (tasks.pool.items.ingest_pool_files): the same rows, ids, quarantine and
duplicate handling as reading the whole pool at once, whatever the batch size or the spill
budget of outputs found on later duplicates; atomic files; DuckDB loads from Parquet and a
rerun replaces rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.pool.items import (
    BadRow,
    _iter_jsonl,
    content_id,
    ingest_pool_files,
    read_item_columns,
    read_pool,
    store_pool,
    validate_row,
)
from tasks.storage import db


def _mixed_rows(n: int, seed: int) -> list[bytes]:
    """JSONL lines with few distinct texts (many exact duplicates), ids given or not and
    reused, outputs on some copies, bad types, malformed lines."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        r: dict = {"instruction": f"Do task {rng.randrange(40)}", "input": rng.choice("ab")}
        if rng.random() < 0.3:
            # plain ids, and ids spelling some content's hash id (exactly, or almost)
            other = content_id(f"Do task {rng.randrange(40)}", rng.choice("ab"))
            r["item_id"] = rng.choice([f"id{rng.randrange(30)}", rng.randrange(30), other,
                                       other, "h" + other[1:].upper(), "h0x" + other[3:]])
        if rng.random() < 0.15:
            r["output"] = rng.choice(["answer", "", f"label {rng.randrange(9)}"])
        if rng.random() < 0.05:
            r["cost"] = rng.choice([2, -1, "x"])
        if rng.random() < 0.05:
            r["instruction"] = rng.choice(["", 7, None])
        lines.append(b'{"instruction": "cut' if rng.random() < 0.03 else json.dumps(r).encode())
    return lines


def _reference(path: Path) -> tuple[list[dict], list[tuple[int, str]], int]:
    """The documented rules, stated plainly and all in memory: (items, quarantined (line,
    reason), duplicates)."""
    items: list[dict] = []
    by_content: dict[str, int] = {}
    by_id: dict[str, str] = {}
    bad, dupes = [], 0
    for line, _, obj in _iter_jsonl(path):
        try:
            if isinstance(obj, BadRow):
                raise obj
            rec = validate_row(obj)
            key = content_id(rec["instruction"], rec["input"])
            item_id = rec["item_id"] or key
            if item_id in by_id and by_id[item_id] != key:
                raise BadRow(f"item_id {item_id!r} already used for different content")
        except BadRow as err:
            bad.append((line, str(err)))
            continue
        if key in by_content:
            dupes += 1
            first = items[by_content[key]]
            if first["output"] is None:
                first["output"] = rec["output"]
            continue
        by_content[key], by_id[item_id] = len(items), key
        items.append({**rec, "item_id": item_id, "file": str(path.resolve()), "line": line})
    return items, bad, dupes


@pytest.mark.parametrize(("batch_rows", "fix_budget_chars"),
                         [(8192, 1 << 20), (7, 1 << 20), (2, 0), (1, 10)])
def test_streaming_matches_the_in_memory_rules(tmp_path, batch_rows, fix_budget_chars):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"\n".join(_mixed_rows(600, seed=3)) + b"\n")
    items, bad, dupes = _reference(path)
    # a real mix: duplicates, bad rows, labels, ids taken by another content's hash id
    assert dupes > 100 and len(bad) > 20 and any(r["output"] for r in items)
    assert any("already used" in reason and "'h" in reason for _, reason in bad)
    pool = read_pool(path, batch_rows=batch_rows, fix_budget_chars=fix_budget_chars)
    assert pool.items.to_pylist() == items
    assert [(q["line"], q["reason"]) for q in pool.quarantined] == bad
    assert pool.n_duplicates == dupes and pool.n_rows == 600
    assert sum(pool.labeled) == sum(r["output"] is not None for r in items)


def test_a_label_on_a_much_later_duplicate_reaches_the_written_row(tmp_path, monkeypatch):
    rows = [{"instruction": f"Item {i}"} for i in range(10)]
    rows += [{"instruction": "Item 1", "output": "first label"},
             {"instruction": "Item 1", "output": "second label"},  # the first one found wins
             {"instruction": "Item 8", "output": "late"},
             {"instruction": "Item 3", "output": "  "}]  # blank output: not a label
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    import tasks.pool.items as pool_mod

    runs = []
    apply = pool_mod._apply_fixes

    def spy(src, dst, fixes):
        runs.append(len(fixes.runs))
        return apply(src, dst, fixes)

    monkeypatch.setattr(pool_mod, "_apply_fixes", spy)
    # batches of 2: Item 1 and Item 8 are on disk when their label arrives; budget 0
    # spills every fix to its own sorted run, merged back in the second pass
    res = ingest_pool_files(path, tmp_path / "out", batch_rows=2, fix_budget_chars=0)
    assert runs == [2]
    outputs = pq.read_table(res.items_path, columns=["output"]).column(0).to_pylist()
    assert outputs == [None, "first label"] + [None] * 6 + ["late", None]
    assert (res.n_items, res.n_labeled, res.n_duplicates) == (10, 2, 4)
    assert pq.ParquetFile(res.items_path).metadata.num_row_groups == 5
    cols = read_item_columns(res.items_path)
    assert cols.column_names == ["item_id", "source", "cost", "labeled"]
    assert cols.column("labeled").to_pylist() == [False, True] + [False] * 6 + [True, False]
    # the scratch folder (first-pass file, spilled runs) is gone
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "items.parquet", "quarantine.parquet"]


def test_strict_failure_keeps_the_previous_files_and_no_scratch(tmp_path):
    out = tmp_path / "out"
    good = tmp_path / "good.jsonl"
    good.write_text('{"instruction": "Keep me"}\n')
    first = ingest_pool_files(good, out)
    before = first.items_path.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok"}\n{"instruction": ""}\n')
    with pytest.raises(ValueError, match=rf"{bad.name}:2: empty field 'instruction'"):
        ingest_pool_files(bad, out, strict=True)
    assert first.items_path.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["items.parquet", "quarantine.parquet"]


def test_quarantine_goes_to_a_file_with_a_few_examples_in_memory(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(['{"broken'] * 25 + ['{"instruction": "fine"}']) + "\n")
    res = ingest_pool_files(path, tmp_path / "out", batch_rows=4)
    assert res.n_quarantined == 25 and len(res.examples) == 10 and res.n_items == 1
    q = pq.read_table(res.quarantine_path).to_pylist()
    assert [r["line"] for r in q] == list(range(1, 26))
    assert all(r["reason"].startswith("malformed JSON") for r in q)


def test_rerun_replaces_pool_items_from_parquet(tmp_path):
    dbf = tmp_path / "c.duckdb"
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": f"Q{i}", "output": "a" if i == 0
                                          else None}) for i in range(5)) + "\n{bad\n")
    other = tmp_path / "o.jsonl"
    other.write_text('{"instruction": "other pool"}\n')
    store_pool(dbf, "run-o", "other", ingest_pool_files(other, tmp_path / "pools" / "other"))
    for run in ("run-1", "run-1", "run-2"):
        store_pool(dbf, run, "demo", ingest_pool_files(path, tmp_path / "pools" / "demo"))
    assert db.query(dbf, "SELECT count(*), count(output), min(line), max(line) "
                         "FROM pool_items WHERE pool_name = 'demo'") == [(5, 1, 1, 5)]
    assert db.query(dbf, "SELECT run_id, count(*) FROM quarantine GROUP BY ALL "
                         "ORDER BY run_id") == [("run-1", 1), ("run-2", 1)]
    # the pool shrinks on a rerun: its old rows go, the other pool's stay
    path.write_text('{"instruction": "Q0"}\n')
    store_pool(dbf, "run-3", "demo", ingest_pool_files(path, tmp_path / "pools" / "demo"))
    assert db.query(dbf, "SELECT pool_name, count(*) FROM pool_items GROUP BY ALL "
                         "ORDER BY pool_name") == [("demo", 1), ("other", 1)]
    assert db.query(dbf, "SELECT item_id FROM pool_items WHERE pool_name = 'demo'") == [
        (content_id("Q0", ""),)]


def test_replace_rows_from_parquet_checks_columns(tmp_path):
    dbf = tmp_path / "c.duckdb"
    part = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"item_id": ["a"], "instruction": ["x"]}), part)
    with pytest.raises(ValueError, match="lack columns"):
        db.replace_rows(dbf, "pool_items", part, "pool_name = ?", ["p"],
                        constants={"pool_name": "p"})
    assert db.query(dbf, "SELECT count(*) FROM pool_items") == [(0,)]
