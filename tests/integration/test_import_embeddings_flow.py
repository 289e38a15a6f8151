"""The import-embeddings flow on a real Prefect API (test harness) and a real DuckDB file."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.corpus.import_embeddings import BadEmbeddingInput
from tasks.runtime.workspace import CorpusPaths, db_path
from tasks.storage import db

pytestmark = pytest.mark.integration

DIM = 16


def _write(path, ids, emb) -> None:
    pq.write_table(pa.table({
        "doc_id": pa.array(ids, pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(emb, np.float32).reshape(-1)), DIM),
        "text": [f"document {i}" for i in ids],
    }), path)


def test_import_flow_records_the_run_and_the_corpus(tmp_path, prefect_harness):
    from flows.import_embeddings import import_embeddings_flow

    emb = np.random.default_rng(0).normal(size=(40, DIM))
    emb[5] = 0.0  # quarantined
    src = tmp_path / "vectors"
    src.mkdir()
    _write(src / "a.parquet", list(range(1000, 1040)), emb)
    ws = str(tmp_path / "ws")

    out = import_embeddings_flow(name="byo", source=str(src), workspace=ws, shard_rows=16)
    assert out["run_id"].startswith("import-embeddings-")
    assert out["rows_imported"] == 39 and out["n_quarantined"] == 1
    assert out["n_normalised"] == 39 and out["dim"] == DIM and out["shards"] == 3

    dbf = db_path(ws)
    [(flow, status, summary)] = db.query(
        dbf, "SELECT flow, status, summary FROM runs WHERE run_id = ?", [out["run_id"]])
    assert (flow, status) == ("import-embeddings", "completed")
    assert json.loads(summary)["rows_imported"] == 39
    [row] = db.query(dbf, "SELECT name, path, model, dim, n_chunks FROM corpora")
    paths = CorpusPaths(ws, "byo")
    assert row == ("byo", str(paths.root), "external", DIM, 39)
    assert paths.load_manifest()["origin"] == "import"

    # bad input: the run is recorded as failed and the corpus stays as it was
    manifest = paths.manifest.read_text()
    _write(src / "b.parquet", [1000], emb[:1])
    with pytest.raises(BadEmbeddingInput, match="duplicate id 1000"):
        import_embeddings_flow(name="byo", source=str(src), workspace=ws, shard_rows=16,
                               run_id="import-bad")
    [(status,)] = db.query(dbf, "SELECT status FROM runs WHERE run_id = 'import-bad'")
    assert status == "failed"
    assert paths.manifest.read_text() == manifest
