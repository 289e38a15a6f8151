"""The partitioned index on a bring-your-own-embeddings corpus (no encoder needed): IVF-PQ
in several partitions, recall measured at build time and met at search time, select with
query embeddings, and a build that fails midway resuming without adding a vector twice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.corpus.import_embeddings import import_embeddings
from tasks.runtime.workspace import CorpusPaths, db_path
from tasks.storage import db

pytestmark = pytest.mark.integration

DIM, N = 32, 6000


def _clustered(rng, n, centers):
    """Unit vectors around ``centers`` with low-rank within-cluster variation."""
    which = rng.integers(0, len(centers), n)
    basis = rng.standard_normal((len(centers), 4, DIM)) * 0.35
    z = rng.standard_normal((n, 4))
    x = centers[which] + np.einsum("nk,nkd->nd", z, basis[which])
    x += 0.05 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, DIM))
    x = _clustered(rng, N, centers)
    ids = rng.choice(10**12, size=N, replace=False).astype(np.int64)
    src = root / "vectors"
    src.mkdir()
    for i, (lo, hi) in enumerate(((0, 2500), (2500, N))):
        pq.write_table(pa.table({
            "doc_id": ids[lo:hi],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[lo:hi].ravel()), DIM),
            "text": [f"chunk {j}" for j in ids[lo:hi]],
        }), src / f"part{i}.parquet")
    paths = CorpusPaths(root, "byo")
    import_embeddings(paths, str(src), shard_rows=700)
    q = _clustered(np.random.default_rng(1), 40, centers)
    np.save(root / "queries.npy", q)
    return {"ws": str(root), "paths": paths, "x": x, "ids": ids, "q": q,
            "queries": str(root / "queries.npy")}


def _exact(byo, k):
    sims = byo["q"] @ byo["x"].T
    return np.argsort(-sims, axis=1)[:, :k], sims


def test_ivf_pq_partitions_reach_the_recall_target_and_select_reads_them(
        byo, prefect_harness, local_ray):
    from flows.index import index_flow
    from flows.select import select_flow

    res = index_flow(name="byo", workspace=byo["ws"], factory="IVF32,PQ8x8",
                     memory_budget="40KB", block_vectors=1000, target_recall=0.95,
                     recall_k=50)
    assert res["kind"] == "ivf" and res["n_vectors"] == N
    assert res["partitions_total"] >= 2 and res["blocks_total"] >= 6
    assert res["reached_target"] and res["recall"] >= 0.95 and res["recall_k"] == 50
    assert res["index_bytes_per_vector"] < 4 * DIM  # PQ codes, not the float vectors
    meta = json.loads(byo["paths"].index_meta.read_text())
    assert len(meta["recall"]["curve"]) >= 2 and meta["search"]["nprobe"] >= 1
    assert Path(meta["recall_plot"]).stat().st_size > 1000
    # the block files went into the partitions' on-disk lists
    assert not list((byo["paths"].index / "blocks").glob("*.faiss"))

    run = select_flow(name="byo", query_embeddings=byo["queries"], workspace=byo["ws"],
                      k=50, n=10, strategy="nn")
    assert run["prompts"] == 40 and run["rows"] == 400
    rows = db.query(db_path(byo["ws"]), "SELECT query_id, rank, doc_id, similarity FROM "
                    "test_time_selections WHERE run_id = ? ORDER BY query_id::INT, rank",
                    [run["run_id"]])
    got = np.array([r[2] for r in rows]).reshape(40, 10)
    want, sims = _exact(byo, 10)
    id_pos = {int(d): i for i, d in enumerate(byo["ids"])}
    found = np.mean([len(set(g.tolist()) & set(byo["ids"][w].tolist())) / 10
                     for g, w in zip(got, want, strict=True)])
    assert found >= 0.9
    # similarity is the exact inner product with the stored (float16) vector
    for qid, _, doc, sim in rows[:50]:
        assert sim == pytest.approx(sims[int(qid), id_pos[doc]], abs=2e-3)


def test_a_query_of_another_dimension_is_refused_by_name(byo, prefect_harness, local_ray,
                                                          tmp_path):
    from flows.select import select_flow

    bad = tmp_path / "q16.npy"
    np.save(bad, np.ones((3, 16), np.float32))
    with pytest.raises(ValueError, match="query embedding dimension 16 != index dimension 32"):
        select_flow(name="byo", query_embeddings=str(bad), workspace=byo["ws"], k=5, n=2)


def test_a_shard_with_nan_is_named(byo, local_ray):
    from tasks.index.build import build_index

    paths = byo["paths"]
    manifest = json.loads(paths.manifest.read_text())
    victim = paths.embeddings / sorted(s["file"] for s in manifest["shards"])[-1]
    good = victim.read_bytes()
    table = pq.read_table(victim)
    emb = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    emb[3, 5] = np.nan
    broken = table.set_column(table.schema.get_field_index("embedding"), "embedding",
                              pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM))
    pq.write_table(broken.replace_schema_metadata(table.schema.metadata), victim)
    try:
        with pytest.raises(ValueError, match=rf"{victim.name}: row 3: embedding has NaN"):
            build_index(paths, "IVF32,PQ8x8", memory_budget="40KB", block_vectors=1000,
                        recall_k=50, rebuild=True)
    finally:
        victim.write_bytes(good)


_CRASHING_BUILD = """
import os, signal, sys
from tasks.index.build import build_index
from tasks.runtime.ray_runtime import ensure_ray
from tasks.runtime.workspace import CorpusPaths

ensure_ray(num_cpus=2)
finished = []

def progress(stage, row):
    finished.append(row)
    if len(finished) == 2:  # the driver dies abruptly after its second block
        os.kill(os.getpid(), signal.SIGKILL)

build_index(CorpusPaths(sys.argv[1], "byo"), "IVF32,PQ8x8", memory_budget="40KB",
            block_vectors=1000, recall_k=50, rebuild=True, progress=progress)
"""


def test_killed_build_keeps_finished_blocks_and_rerun_adds_each_vector_once(byo, local_ray,
                                                                            tmp_path):
    import signal
    import subprocess
    import sys

    from tasks.index.build import build_index

    paths = byo["paths"]
    script = tmp_path / "crash.py"
    script.write_text(_CRASHING_BUILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, str(script), byo["ws"]], env=env,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        proc.wait(300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its Ray processes too
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-3000:]
    blocks = paths.index / "blocks"
    done = {p.name: p.stat().st_mtime_ns for p in blocks.glob("block-*.json")}
    plan = json.loads((paths.index / "plan.json").read_text())
    assert 2 <= len(done) < len(plan["blocks"])
    assert not paths.index_meta.is_file()  # no half index is ever served
    # what a crash mid-block leaves behind: a half-written store file
    (paths.index / "store" / ".vectors-00099.npy.tmp").write_bytes(b"partial")

    res = build_index(paths, "IVF32,PQ8x8", memory_budget="40KB", block_vectors=1000,
                      recall_k=50)
    assert res["blocks_skipped"] == len(done)
    assert res["blocks_built"] == len(plan["blocks"]) - len(done)
    assert {p.name: p.stat().st_mtime_ns for p in blocks.glob("block-*.json")
            if p.name in done} == done  # finished blocks were not redone
    assert not list((paths.index / "store").glob(".*.tmp"))
    meta = json.loads(paths.index_meta.read_text())
    assert sum(p["ntotal"] for p in meta["partitions"]) == N
    stored = np.concatenate([np.load(paths.index / "store" / f"doc_ids-{b['block']:05d}.npy")
                             for b in meta["blocks"]])
    assert len(stored) == N and len(np.unique(stored)) == N
    assert set(stored.tolist()) == set(byo["ids"].tolist())
    assert res["reached_target"]


def test_hnsw_index_gets_its_efsearch_from_the_recall_sweep(byo, local_ray):
    from tasks.index.build import build_index
    from tasks.index.search_service import SearchService

    res = build_index(byo["paths"], "HNSW16", memory_budget="1GB", block_vectors=2000,
                      recall_k=50, target_recall=0.97, rebuild=True)
    assert res["kind"] == "other" and res["partitions_total"] == 1
    meta = json.loads(byo["paths"].index_meta.read_text())
    efs = [c["efsearch"] for c in meta["recall"]["curve"]]
    assert efs[0] == 16 and meta["search"]["efsearch"] in efs
    assert res["reached_target"]
    with SearchService(byo["paths"], local=True) as svc:
        assert svc.efsearch == meta["search"]["efsearch"]
        _, rows = svc.search_rows(byo["q"], 10)
    want, _ = _exact(byo, 10)  # row ids are the input order here (one file after another)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), want.tolist(),
                                                               strict=True)]) >= 0.9
