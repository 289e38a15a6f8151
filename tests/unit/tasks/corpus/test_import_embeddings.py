"""Bring your own embeddings: tasks.corpus.import_embeddings and tasks.index.query_embeddings
on small Parquet / .npy files (no Prefect, no Ray)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.corpus import import_embeddings as import_mod
from tasks.corpus.embed import read_shard_stats, shard_schema
from tasks.corpus.import_embeddings import BadEmbeddingInput, import_embeddings
from tasks.corpus.lookup import embedding_matrix
from tasks.index.query_embeddings import count_query_embeddings, iter_query_embeddings
from tasks.runtime.workspace import CorpusPaths

DIM = 8
STATS_KEYS = {"shard", "file", "file_id", "n_rows", "n_chunks", "n_docs", "n_bad",
              "doc_id_min", "doc_id_max", "dim", "model", "n_lines", "line_start", "line_end"}


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def emb_array(emb, kind: str = "fixed", value_type: pa.DataType = pa.float32()) -> pa.Array:
    """``emb``: a float [n, d] array (fixed/list), or a list of rows (None: a null row)."""
    if kind == "fixed":
        emb = np.asarray(emb)
        return pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), value_type),
                                                 emb.shape[1])
    rows = [None if r is None else list(r) for r in emb]
    return pa.array(rows, pa.list_(value_type))


def write(path: Path, ids, emb, *, kind: str = "fixed", value_type=pa.float32(),
          text: bool = True, source: bool = True, id_type=pa.int64(), **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = {"doc_id": pa.array(list(ids), id_type), "embedding": emb_array(emb, kind,
                                                                            value_type)}
    if text:
        cols["text"] = pa.array([f"text {i}" for i in ids], pa.string())
    if source:
        cols["source"] = pa.array(["src"] * len(ids), pa.string())
    cols.update(extra)
    pq.write_table(pa.table(cols), path, row_group_size=7)  # small row groups: batches
    return path


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    """Read 4 rows per batch, so batches, shards and files cut each other everywhere."""
    monkeypatch.setattr(import_mod, "MIN_BATCH_ROWS", 4)
    monkeypatch.setattr(import_mod, "MAX_BATCH_ROWS", 4)


@pytest.fixture
def ws(tmp_path) -> Path:
    return tmp_path / "ws"


def corpus(ws: Path, name: str = "byo") -> CorpusPaths:
    return CorpusPaths(ws, name)


def all_rows(paths: CorpusPaths) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in paths.shard_files())


def leftovers(paths: CorpusPaths) -> list[str]:
    """What is in ``corpora/`` for this corpus: its folder, staging or set-aside folders."""
    folder = paths.root.parent
    names = sorted(os.listdir(folder)) if folder.exists() else []
    return [n for n in names if n == paths.name or n.startswith(f".{paths.name}.")]


# ---------------------------------------------------------------------------- good input


def test_fixed_size_list_import_writes_the_embed_shard_format(tmp_path, ws):
    ids = np.arange(30, dtype=np.int64) * 11 - 50  # any int64s, negative too
    emb = unit(30)
    src = write(tmp_path / "in" / "a.parquet", ids, emb)
    paths = corpus(ws)
    seen: list[int] = []
    summary = import_embeddings(paths, str(src), shard_rows=12, progress=seen.append)

    assert summary["rows_read"] == summary["rows_imported"] == 30 == sum(seen)
    assert seen == [4] * 7 + [2]  # one call per batch
    assert summary["n_quarantined"] == 0 and summary["n_normalised"] == 0
    assert summary["dim"] == DIM and summary["shards"] == 3 and summary["files"] == 1
    assert summary["corpus"] == "byo" and summary["model"] == "external"

    m = paths.load_manifest()
    assert m["status"] == "complete" and m["origin"] == "import"
    assert m["model"] == "external" and m["max_tokens"] is None and m["dim"] == DIM
    assert m["source_files"] == [str(src.resolve())]
    assert m["files"][0]["file_id"] == 0 and m["files"][0]["path"] == str(src.resolve())
    assert m["n_chunks"] == m["n_docs"] == m["rows_imported"] == 30 and m["n_bad"] == 0
    assert [s["file"] for s in m["shards"]] == [f"part-00000-0000{b}.parquet" for b in range(3)]

    files = paths.shard_files()
    assert [f.name for f in files] == [s["file"] for s in m["shards"]]
    for block, f in enumerate(files):
        assert pq.read_schema(f).remove_metadata().equals(shard_schema(DIM))
        stats = read_shard_stats(f)
        assert STATS_KEYS <= set(stats)
        assert stats["shard"] == f.stem and stats["file"] == str(src.resolve())
        assert stats["file_id"] == 0 and stats["model"] == "external" and stats["dim"] == DIM
        assert stats["line_start"] == 12 * block
        assert stats["line_end"] == min(12 * block + 11, 29)
        assert stats["n_lines"] == stats["n_rows"] == stats["n_chunks"] == stats["n_docs"]
        part = pq.read_table(f)
        assert stats["doc_id_min"] == part["doc_id"].to_numpy().min()
        assert stats["doc_id_max"] == part["doc_id"].to_numpy().max()
        md = pq.ParquetFile(f).metadata
        assert md.row_group(0).column(0).compression == "ZSTD"

    table = all_rows(paths)
    np.testing.assert_array_equal(table["doc_id"].to_numpy(), ids)
    got = embedding_matrix(table["embedding"], DIM)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, emb, atol=1e-6)
    assert table["text"].to_pylist() == [f"text {i}" for i in ids]
    assert set(table["source"].to_pylist()) == {"src"}
    assert set(table["n_tokens"].to_pylist()) == {0}
    assert not (paths.quarantine / "import.jsonl").exists()
    assert leftovers(paths) == ["byo"]  # no staging folder left


@pytest.mark.parametrize("value_type", [pa.float64(), pa.float16()])
def test_list_of_double_or_half_without_text_and_source(tmp_path, ws, value_type):
    emb = unit(10)
    src = write(tmp_path / "a.parquet", range(100, 110), emb, kind="list",
                value_type=value_type, text=False, source=False)
    paths = corpus(ws)
    summary = import_embeddings(paths, str(src))
    assert summary["rows_imported"] == 10 and summary["shards"] == 1
    table = all_rows(paths)
    assert table.schema.remove_metadata().equals(shard_schema(DIM))
    assert table["text"].null_count == 10 and table["source"].null_count == 10
    got = embedding_matrix(table["embedding"], DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, emb, atol=2e-3 if value_type == pa.float16() else 1e-6)


def test_text_column_none_gives_null_texts(tmp_path, ws):
    src = write(tmp_path / "a.parquet", range(5), unit(5))
    import_embeddings(corpus(ws), str(src), text_column=None, source_column=None)
    table = all_rows(corpus(ws))
    assert table["text"].null_count == 5 and table["source"].null_count == 5


def test_other_column_names(tmp_path, ws):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"key": pa.array([7, 8, 9], pa.int32()),
                             "vec": emb_array(unit(3)), "body": ["x", "y", "z"]}), path)
    summary = import_embeddings(corpus(ws), str(path), id_column="key",
                                embedding_column="vec", text_column="body")
    assert summary["rows_imported"] == 3
    table = all_rows(corpus(ws))
    assert table["doc_id"].to_pylist() == [7, 8, 9] and table["text"].to_pylist() == list("xyz")


def test_folder_glob_and_multiple_files(tmp_path, ws):
    root = tmp_path / "in"
    write(root / "b.parquet", range(10, 15), unit(5, seed=1))
    write(root / "sub" / "c.parquet", range(20, 23), unit(3, seed=2))
    write(root / "a.parquet", range(0, 4), unit(4, seed=3))
    write(root / ".hidden" / "x.parquet", range(0, 4), unit(4))  # skipped (and a dup)
    (root / "notes.txt").write_text("not an input")

    paths = corpus(ws, "folder")
    summary = import_embeddings(paths, str(root), shard_rows=2)
    assert summary["files"] == 3 and summary["rows_imported"] == 12
    m = paths.load_manifest()
    names = [Path(p).relative_to(root).as_posix() for p in m["source_files"]]
    assert names == ["a.parquet", "b.parquet", "sub/c.parquet"]
    assert [f["file_id"] for f in m["files"]] == [0, 1, 2]
    # shard = (file number, block of shard_rows rows within the file)
    assert [s["shard"] for s in m["shards"]] == [
        "part-00000-00000", "part-00000-00001", "part-00001-00000", "part-00001-00001",
        "part-00001-00002", "part-00002-00000", "part-00002-00001"]
    assert sorted(all_rows(paths)["doc_id"].to_pylist()) == [0, 1, 2, 3, 10, 11, 12, 13,
                                                             14, 20, 21, 22]

    globbed = corpus(ws, "globbed")
    summary = import_embeddings(globbed, str(root / "*.parquet"))
    assert summary["files"] == 2 and summary["rows_imported"] == 9
    rec = corpus(ws, "recursive")
    assert import_embeddings(rec, str(root / "**" / "*.parquet"))["files"] == 3


def test_quarantine_bad_vectors(tmp_path, ws):
    emb: list = [list(r) for r in unit(10)]
    emb[1] = [float("nan")] + emb[1][1:]
    emb[2] = [float("inf")] + emb[2][1:]
    emb[3] = [0.0] * DIM
    emb[4] = None                       # null vector
    emb[5] = [None] + emb[5][1:]        # a null value
    emb[6] = [1e39] + emb[6][1:]        # beyond float32: inf
    src = write(tmp_path / "a.parquet", range(100, 110), emb, kind="list",
                value_type=pa.float64())
    paths = corpus(ws)
    summary = import_embeddings(paths, str(src), shard_rows=4)
    assert summary["rows_read"] == 10 and summary["rows_imported"] == 4
    assert summary["n_quarantined"] == 6
    assert summary["quarantine_reasons"] == {"null": 2, "non_finite": 3, "zero_vector": 1}
    lines = [json.loads(x) for x in (paths.quarantine / "import.jsonl").read_text().splitlines()]
    assert [(q["row"], q["id"], q["reason"]) for q in lines] == [
        (1, 101, "non_finite"), (2, 102, "non_finite"), (3, 103, "zero_vector"),
        (4, 104, "null"), (5, 105, "null"), (6, 106, "non_finite")]
    assert {q["file"] for q in lines} == {str(src.resolve())}
    assert all_rows(paths)["doc_id"].to_pylist() == [100, 107, 108, 109]
    m = paths.load_manifest()
    assert m["n_bad"] == 6 and m["n_quarantined"] == 6 and m["n_chunks"] == 4
    assert [s["n_bad"] for s in m["shards"]] == [3, 3, 0]
    assert [s["n_rows"] for s in m["shards"]] == [1, 1, 2]
    assert summary["quarantine"] == str(paths.quarantine / "import.jsonl")


def test_all_null_shard_before_the_first_vector(tmp_path, ws):
    emb = [None, None, None] + [list(r) for r in unit(3)]
    src = write(tmp_path / "a.parquet", range(6), emb, kind="list")
    paths = corpus(ws)
    summary = import_embeddings(paths, str(src), shard_rows=3)
    assert summary["rows_imported"] == 3 and summary["quarantine_reasons"]["null"] == 3
    m = paths.load_manifest()
    empty, full = m["shards"]
    assert empty["n_rows"] == 0 and empty["doc_id_min"] == -1 and empty["n_bad"] == 3
    assert full["n_rows"] == 3
    for f in paths.shard_files():
        assert pq.read_schema(f).remove_metadata().equals(shard_schema(DIM))


def test_normalisation_is_counted(tmp_path, ws):
    emb = unit(6)
    emb[0] *= 3.0
    emb[1] *= 1.0005   # within the 1e-3 tolerance: not counted (still stored unit)
    emb[2] *= 0.5
    src = write(tmp_path / "a.parquet", range(6), emb, value_type=pa.float64())
    summary = import_embeddings(corpus(ws), str(src), shard_rows=4)
    assert summary["n_normalised"] == 2
    got = embedding_matrix(all_rows(corpus(ws))["embedding"], DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert corpus(ws).load_manifest()["n_normalised"] == 2
    assert sum(s["n_normalised"] for s in corpus(ws).load_manifest()["shards"]) == 2


# ---------------------------------------------------------------------------- bad input


def fails(paths: CorpusPaths, source, **kw) -> str:
    with pytest.raises(BadEmbeddingInput) as err:
        import_embeddings(paths, str(source), **kw)
    assert leftovers(paths) == []  # no corpus, no staging folder
    return str(err.value)


def test_not_parquet(tmp_path, ws):
    bad = tmp_path / "x.parquet"
    bad.write_text("doc_id,embedding\n1,2\n")
    msg = fails(corpus(ws), bad)
    assert str(bad) in msg and "not a Parquet file" in msg


def test_missing_columns(tmp_path, ws):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [1, 2], "embedding": emb_array(unit(2))}), path)
    msg = fails(corpus(ws), path)
    assert str(path) in msg and "no id column 'doc_id'" in msg and "columns: id, embedding" in msg
    msg = fails(corpus(ws), path, id_column="id", embedding_column="vec")
    assert str(path) in msg and "no embedding column 'vec'" in msg


def test_wrong_column_types(tmp_path, ws):
    path = write(tmp_path / "a.parquet", ["1", "2"], unit(2), id_type=pa.string())
    msg = fails(corpus(ws), path)
    assert str(path) in msg and "id column 'doc_id' has type string" in msg
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"doc_id": [1, 2], "embedding": pa.array([[1, 2], [3, 4]])}), path)
    msg = fails(corpus(ws), path)
    assert str(path) in msg and "embedding column 'embedding' has type list<" in msg
    assert "expected a list or fixed_size_list of float16/float32/float64" in msg
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"doc_id": [1], "embedding": ["0.1,0.2"]}), path)
    assert "has type string" in fails(corpus(ws), path)
    path = write(tmp_path / "d.parquet", [1, 2], unit(2), text=False,
                 text_col=pa.array([1, 2]))
    msg = fails(corpus(ws), path, text_column="text_col")
    assert str(path) in msg and "text column 'text_col' has type int64" in msg


def test_wrong_dimension_names_file_row_and_both_dims(tmp_path, ws):
    a = write(tmp_path / "a.parquet", range(5), unit(5))
    rows = [list(r) for r in unit(12, seed=4)]
    rows[9] = rows[9][:5]
    b = write(tmp_path / "b.parquet", range(10, 22), rows, kind="list")
    msg = fails(corpus(ws), tmp_path)
    assert msg == (f"{b}: row 9 (0-based): embedding has dimension 5, expected 8 (the "
                   f"dimension of the first vector, {a} row 0)")


def test_fixed_size_list_of_another_dimension_in_a_later_file(tmp_path, ws):
    write(tmp_path / "a.parquet", range(5), unit(5))
    b = write(tmp_path / "b.parquet", range(10, 12), unit(2, dim=4))
    msg = fails(corpus(ws), tmp_path)
    assert msg.startswith(f"{b}: row 0 (0-based): embedding has dimension 4, expected 8")


def test_duplicate_ids_within_a_file_and_across_files(tmp_path, ws):
    a = write(tmp_path / "one" / "a.parquet", [1, 2, 3, 2], unit(4))
    msg = fails(corpus(ws), a)
    assert msg == (f"duplicate id 2 in column 'doc_id': {a} row 1 and {a} row 3 (0-based "
                   "rows); ids must be unique across all input files")
    a = write(tmp_path / "two" / "a.parquet", range(20), unit(20))
    b = write(tmp_path / "two" / "b.parquet", [100, 101, 7], unit(3))
    msg = fails(corpus(ws), tmp_path / "two")
    assert msg.startswith(f"duplicate id 7 in column 'doc_id': {a} row 7 and {b} row 2")


def test_null_and_oversized_ids(tmp_path, ws):
    path = write(tmp_path / "a.parquet", [1, None, 3], unit(3))
    msg = fails(corpus(ws), path)
    assert msg == f"{path}: row 1 (0-based): id column 'doc_id' is null"
    path = write(tmp_path / "b.parquet", [1, 2**63 + 5], unit(2), id_type=pa.uint64())
    msg = fails(corpus(ws), path)
    assert str(path) in msg and "row 1" in msg and "does not fit in int64" in msg


def test_everything_quarantined_or_empty_is_an_error(tmp_path, ws):
    path = write(tmp_path / "a.parquet", range(3), np.zeros((3, DIM)))
    msg = fails(corpus(ws), path)
    assert "all 3 rows were quarantined" in msg and "zero_vector" in msg
    empty = write(tmp_path / "e" / "b.parquet", [], np.zeros((0, DIM)))
    assert "have no rows" in fails(corpus(ws), empty)
    with pytest.raises(FileNotFoundError, match="no such file, folder or glob match"):
        import_embeddings(corpus(ws), str(tmp_path / "nothing*.parquet"))


def test_error_in_second_file_leaves_nothing(tmp_path, ws):
    write(tmp_path / "a.parquet", range(50), unit(50))
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"PAR1 definitely not parquet")
    paths = corpus(ws)
    msg = fails(paths, tmp_path, shard_rows=10)
    assert str(bad) in msg
    assert not paths.root.exists() and not (paths.root.parent / ".byo.importing").exists()


# ---------------------------------------------------------------------------- replacing


def test_reimport_replaces_and_a_failed_reimport_keeps_the_old_corpus(tmp_path, ws):
    paths = corpus(ws)
    first = write(tmp_path / "v1" / "a.parquet", range(10), unit(10))
    import_embeddings(paths, str(first))
    (paths.index).mkdir()
    (paths.index / "index.json").write_text("{}")  # an index of the old vectors
    old_manifest = paths.manifest.read_text()
    old_shards = {p.name: p.read_bytes() for p in paths.shard_files()}

    bad = write(tmp_path / "v2" / "a.parquet", [1, 1], unit(2))
    with pytest.raises(BadEmbeddingInput, match="duplicate id 1"):
        import_embeddings(paths, str(bad))
    assert paths.manifest.read_text() == old_manifest
    assert {p.name: p.read_bytes() for p in paths.shard_files()} == old_shards
    assert leftovers(paths) == ["byo"]

    second = write(tmp_path / "v3" / "a.parquet", range(100, 103), unit(3, seed=9))
    summary = import_embeddings(paths, str(second))
    assert summary["rows_imported"] == 3
    assert all_rows(paths)["doc_id"].to_pylist() == [100, 101, 102]
    assert paths.load_manifest()["source_files"] == [str(second.resolve())]
    assert not paths.index.exists()  # the old index went with the old vectors
    assert leftovers(paths) == ["byo"]


def test_refuses_to_replace_an_embedded_corpus(tmp_path, ws):
    paths = corpus(ws, "embedded")
    paths.embeddings.mkdir(parents=True)
    paths.manifest.write_text(json.dumps({"name": "embedded", "status": "complete"}))
    src = write(tmp_path / "a.parquet", range(3), unit(3))
    with pytest.raises(BadEmbeddingInput, match="was made by `sift-curate embed`"):
        import_embeddings(paths, str(src))
    assert json.loads(paths.manifest.read_text()) == {"name": "embedded",
                                                      "status": "complete"}
    assert leftovers(paths) == ["embedded"]


def test_stale_staging_folder_is_replaced(tmp_path, ws):
    paths = corpus(ws)
    stale = paths.root.parent / ".byo.importing"
    (stale / "embeddings").mkdir(parents=True)
    (stale / "embeddings" / "part-00009-00000.parquet").write_text("junk")
    src = write(tmp_path / "a.parquet", range(3), unit(3))
    import_embeddings(paths, str(src))
    assert [p.name for p in paths.shard_files()] == ["part-00000-00000.parquet"]
    assert leftovers(paths) == ["byo"]


def test_model_folder_is_recorded_and_its_dim_checked(tmp_path, ws):
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"hidden_size": DIM}))
    src = write(tmp_path / "a.parquet", range(3), unit(3))
    summary = import_embeddings(corpus(ws), str(src), model=str(enc))
    assert summary["model"] == str(enc.resolve())
    assert corpus(ws).load_manifest()["model"] == str(enc.resolve())
    assert read_shard_stats(corpus(ws).shard_files()[0])["model"] == str(enc.resolve())
    (enc / "config.json").write_text(json.dumps({"hidden_size": 384}))
    msg = fails(corpus(ws, "other"), src, model=str(enc))
    assert "dimension 8" in msg and "384-d" in msg
    with pytest.raises(FileNotFoundError, match="not a local Hugging Face model folder"):
        import_embeddings(corpus(ws, "other"), str(src), model=str(tmp_path / "missing"))


# ---------------------------------------------------------------------------- queries


def test_query_embeddings_from_npy_stream_in_blocks(tmp_path):
    q = unit(10, seed=5) * 2.0
    path = tmp_path / "q.npy"
    np.save(path, q.astype(np.float32))
    assert count_query_embeddings(path) == 10
    blocks = list(iter_query_embeddings(path, DIM, block=4))
    assert [len(ids) for ids, _ in blocks] == [4, 4, 2]
    assert [i for ids, _ in blocks for i in ids] == [str(i) for i in range(10)]
    got = np.concatenate([m for _, m in blocks])
    assert got.dtype == np.float32 and got.shape == (10, DIM)
    np.testing.assert_allclose(got, q / 2.0, atol=1e-6)


def test_query_embeddings_from_parquet(tmp_path):
    q = unit(9, seed=6)
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"query_id": [f"q{i}" for i in range(9)],
                             "embedding": emb_array(q * 3, "list", pa.float64())}),
                   path, row_group_size=2)
    assert count_query_embeddings(path) == 9
    blocks = list(iter_query_embeddings(path, DIM, block=4))
    assert [len(ids) for ids, _ in blocks] == [4, 4, 1]
    assert [i for ids, _ in blocks for i in ids] == [f"q{i}" for i in range(9)]
    got = np.concatenate([m for _, m in blocks])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, q, atol=1e-6)


def test_query_dimension_errors(tmp_path):
    npy = tmp_path / "q.npy"
    np.save(npy, unit(3, dim=4))
    with pytest.raises(ValueError, match="query embedding dimension 4 != index dimension 8"):
        iter_query_embeddings(npy, DIM)
    fixed = tmp_path / "fixed.parquet"
    pq.write_table(pa.table({"query_id": ["a"], "embedding": emb_array(unit(1, dim=4))}), fixed)
    with pytest.raises(ValueError, match="query embedding dimension 4 != index dimension 8"):
        iter_query_embeddings(fixed, DIM)
    rows = [list(r) for r in unit(3)]
    rows[2] = rows[2][:6]
    lst = tmp_path / "list.parquet"
    pq.write_table(pa.table({"query_id": ["a", "b", "c"],
                             "embedding": emb_array(rows, "list")}), lst)
    with pytest.raises(ValueError) as err:
        list(iter_query_embeddings(lst, DIM))
    assert str(err.value) == f"{lst}: row 2: query embedding dimension 6 != index dimension 8"


def test_query_bad_rows_are_found_while_streaming(tmp_path):
    q = unit(10).astype(np.float32)
    q[9, 3] = np.nan
    npy = tmp_path / "q.npy"
    np.save(npy, q)
    it = iter_query_embeddings(npy, DIM, block=4)
    assert len(next(it)[0]) == 4 and len(next(it)[0]) == 4  # the good blocks come first
    with pytest.raises(ValueError, match=r"q\.npy: row 9: query embedding has NaN or inf"):
        next(it)
    q[9] = 0.0
    np.save(npy, q)
    with pytest.raises(ValueError, match="row 9: query embedding is all zeros"):
        list(iter_query_embeddings(npy, DIM, block=4))


def test_query_file_errors(tmp_path):
    with pytest.raises(ValueError, match="must be a .npy or .parquet file"):
        iter_query_embeddings(tmp_path / "q.csv", DIM)
    one_d = tmp_path / "one.npy"
    np.save(one_d, np.ones(DIM))
    with pytest.raises(ValueError, match=r"2-d array \[n_queries, dim\], got shape \(8,\)"):
        iter_query_embeddings(one_d, DIM)
    junk = tmp_path / "junk.npy"
    junk.write_text("nope")
    with pytest.raises(ValueError, match="junk.npy: not a readable .npy file"):
        iter_query_embeddings(junk, DIM)
    missing = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"id": ["a"], "embedding": emb_array(unit(1))}), missing)
    with pytest.raises(ValueError, match="nocol.parquet: no query id column 'query_id'"):
        iter_query_embeddings(missing, DIM)
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"query_id": ["a", "b", "a"], "embedding": emb_array(unit(3))}),
                   dup)
    with pytest.raises(ValueError, match="dup.parquet: duplicate query_id 'a' at rows 0 and 2"):
        list(iter_query_embeddings(dup, DIM))
    nulls = tmp_path / "null.parquet"
    pq.write_table(pa.table({"query_id": ["a", "b"],
                             "embedding": emb_array([list(unit(1)[0]), None], "list")}), nulls)
    with pytest.raises(ValueError, match="null.parquet: row 1: query embedding is null"):
        list(iter_query_embeddings(nulls, DIM))
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, DIM), np.float32))
    with pytest.raises(ValueError, match="no query embeddings"):
        iter_query_embeddings(empty, DIM)
