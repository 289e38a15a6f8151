"""The per-pool cache of per-item values: a rerun computes only new or changed items, and
the cache holds exactly the current pool."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.pool.cache import cache_path, cached_compute, model_fingerprint
from tasks.pool.items import ingest_pool_files


def _pool(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _compute(calls):
    def compute(todo: str, n: int) -> pa.Table:
        t = pq.read_table(todo)
        assert t.num_rows == n
        calls.append(sorted(t.column("item_id").to_pylist()))
        # a value derived from the text, so a stale cache entry would show
        return pa.table({"item_id": t.column("item_id"),
                         "length": pa.array([len(x) for x in
                                             t.column("instruction").to_pylist()],
                                            pa.float64())})
    return compute


def test_only_new_or_changed_items_are_computed(tmp_path):
    rows = [{"item_id": f"i{k}", "instruction": "x" * (k + 1)} for k in range(5)]
    rows.append({"item_id": "done", "instruction": "labelled", "output": "y"})
    folder = tmp_path / "pool"
    res = ingest_pool_files(_pool(tmp_path / "a.jsonl", rows), folder)
    cache = cache_path(folder, "lm", {"model": "m", "max_new_tokens": 4})
    calls: list[list[str]] = []
    table, n = cached_compute(res.items_path, cache, _compute(calls), unlabeled_only=True)
    assert n == 5 and calls == [[f"i{k}" for k in range(5)]]  # the labelled one is skipped
    assert dict(zip(*table.to_pydict().values(), strict=True)) == {
        f"i{k}": k + 1 for k in range(5)}

    table, n = cached_compute(res.items_path, cache, _compute(calls), unlabeled_only=True)
    assert n == 0 and len(calls) == 1 and table.num_rows == 5  # all from the cache

    rows2 = [r for r in rows if r["item_id"] != "i0"]  # i0 left the pool
    rows2[0] = {"item_id": "i1", "instruction": "changed text"}  # same id, new content
    rows2.append({"item_id": "i9", "instruction": "new"})
    res = ingest_pool_files(_pool(tmp_path / "a.jsonl", rows2), folder)
    table, n = cached_compute(res.items_path, cache, _compute(calls), unlabeled_only=True)
    assert n == 2 and calls[-1] == ["i1", "i9"]
    got = dict(zip(*table.to_pydict().values(), strict=True))
    assert got == {"i1": 12, "i2": 3, "i3": 4, "i4": 5, "i9": 3}
    # the cache file holds the current pool only (i0 pruned), never a duplicate row
    ids = pq.read_table(cache).column("item_id").to_pylist()
    assert sorted(ids) == sorted(got)


def test_the_key_changes_with_the_model_weights(tmp_path):
    folder = tmp_path / "lm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"a")
    k1 = cache_path(tmp_path, "lm", model_fingerprint(folder))
    (folder / "model.safetensors").write_bytes(b"ab")
    assert cache_path(tmp_path, "lm", model_fingerprint(folder)) != k1
    assert cache_path(tmp_path, "lm", model_fingerprint(None)) == cache_path(
        tmp_path, "lm", {"model": None})
