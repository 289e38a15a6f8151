"""Index planning (blocks, partitions, incremental growth) and the vector store's reads."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.index.build import plan_index, store_dtype_for
from tasks.index.vector_store import VectorStore, doc_ids_file, fetch_columns, vectors_file


def _shards(sizes, first=0):
    return [{"file": f"part-00000-{i:05d}.parquet", "n_rows": n}
            for i, n in enumerate(sizes, start=first)]


def _plan(shards, previous=None, **kw):
    args = {"dim": 384, "factory": "IVF64,PQ48x8", "memory_budget": 56 * 1000,
            "store_dtype": "auto", "block_vectors": 500, **kw}
    return plan_index(shards, previous, **args)


def test_blocks_cover_every_row_once_and_partitions_fit_the_budget():
    plan = _plan(_shards([200] * 12))  # 2,400 rows, 56 B each: 134 kB of codes
    assert plan["kind"] == "ivf" and plan["store_dtype"] == "float16"
    starts = [b["start"] for b in plan["blocks"]]
    ends = [b["start"] + b["n"] for b in plan["blocks"]]
    assert starts[0] == 0 and starts[1:] == ends[:-1] and ends[-1] == 2400
    assert all(b["n"] <= 500 for b in plan["blocks"])
    files = [s["file"] for b in plan["blocks"] for s in b["shards"]]
    assert files == sorted(files) and len(set(files)) == 12
    parts = plan["partitions"]
    assert len(parts) == 3  # ceil(134,400 / 56,000)
    assert [p["row_start"] for p in parts[1:]] == [p["row_end"] for p in parts[:-1]]
    assert sorted(b for p in parts for b in p["blocks"]) == [b["block"] for b in plan["blocks"]]


def test_new_shards_become_new_blocks_and_partitions_without_touching_the_old():
    first = _plan(_shards([200] * 6))
    grown = _plan(_shards([200] * 6) + _shards([150] * 3, first=6), previous=first)
    assert grown["blocks"][: len(first["blocks"])] == first["blocks"]
    assert grown["partitions"][: len(first["partitions"])] == first["partitions"]
    new = grown["blocks"][len(first["blocks"]):]
    assert new[0]["start"] == 1200 and sum(b["n"] for b in new) == 450
    assert grown["factory"] == first["factory"]  # same trained model
    again = _plan(_shards([200] * 6) + _shards([150] * 3, first=6), previous=grown)
    assert again == grown  # nothing new: nothing planned twice


def test_a_changed_or_missing_indexed_shard_is_refused():
    first = _plan(_shards([200] * 3))
    with pytest.raises(RuntimeError, match="part-00000-00001.parquet changed since it was "
                                           "indexed .200 rows, now 199.*--rebuild"):
        _plan(_shards([200, 199, 200]), previous=first)
    with pytest.raises(RuntimeError, match="now missing"):
        _plan(_shards([200, 200]), previous=first)


def test_auto_picks_flat_and_float32_for_a_small_corpus():
    plan = _plan(_shards([100] * 3), factory="auto")
    assert (plan["factory"], plan["kind"], plan["store_dtype"]) == ("Flat", "flat", "float32")
    assert store_dtype_for("ivf", "float32") == "float32"
    with pytest.raises(ValueError, match="store dtype"):
        store_dtype_for("ivf", "bfloat8")


def test_vector_store_reads_rows_ids_and_texts(tmp_path):
    rng = np.random.default_rng(0)
    emb_dir, store_dir = tmp_path / "emb", tmp_path / "store"
    emb_dir.mkdir()
    store_dir.mkdir()
    blocks, start = [], 0
    texts = {}
    for b, sizes in enumerate(([5, 7], [4])):
        offset, shards = 0, []
        vec = []
        for j, n in enumerate(sizes):
            name = f"s{b}{j}.parquet"
            t = [f"text {b}-{j}-{i}" for i in range(n)]
            pq.write_table(pa.table({"text": t}), emb_dir / name, row_group_size=3)
            for i in range(n):
                texts[start + offset + i] = t[i]
            shards.append({"file": name, "n_rows": n, "offset": offset})
            offset += n
            vec.append(rng.standard_normal((n, 8)).astype(np.float16))
        np.save(vectors_file(store_dir, b), np.concatenate(vec))
        np.save(doc_ids_file(store_dir, b), np.arange(start, start + offset) * 10)
        blocks.append({"block": b, "start": start, "n": offset, "shards": shards})
        start += offset
    store = VectorStore(store_dir, blocks, 8)
    rows = np.array([15, 0, 12, 6, 6, 11])
    assert store.doc_ids(rows).tolist() == (rows * 10).tolist()
    full = np.concatenate([np.load(vectors_file(store_dir, b)) for b in (0, 1)])
    np.testing.assert_array_equal(store.vectors(rows), full[rows].astype(np.float32))
    got = fetch_columns(store, emb_dir, np.array([15, -1, 0, 12, 6, 11]))["text"]
    assert got.tolist() == [texts[15], None, texts[0], texts[12], texts[6], texts[11]]
    chunks = list(store.iter_chunks(chunk_rows=5))
    assert [c[1] for c in chunks] == [0, 5, 10, 12] and sum(len(c[0]) for c in chunks) == 16
    with pytest.raises(KeyError, match="rows not in this vector store"):
        store.vectors(np.array([16]))
