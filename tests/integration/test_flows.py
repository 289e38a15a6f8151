"""embed -> index -> select flows on a tiny corpus with a real local Ray, a real Prefect
API (test harness), real faiss and a real DuckDB file. Tests run in file order and share
one embedded corpus."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.corpus.lookup import CorpusReader, unpack_doc_id
from tasks.corpus.pile_reader import PileDoc, iter_pile_file
from tasks.runtime.workspace import CorpusPaths, db_path
from tasks.sample.bundled import build_sample
from tasks.storage import db

pytestmark = pytest.mark.integration

BAD_FILE = "zz-bad.jsonl"


def _bad_lines() -> list[bytes]:
    good = {"text": "A well formed document about faiss indices and Ray Data.",
            "meta": {"pile_set_name": "Test"}}
    return [
        json.dumps(good).encode(),                                     # 1 good
        b'{"text": "truncated json',                                   # 2 malformed
        json.dumps({"text": "   ", "meta": {}}).encode(),             # 3 empty text
        b'{"text": "caf\xff au lait", "meta": {"pile_set_name": "X"}}',  # 4 not UTF-8
        json.dumps({"meta": {"pile_set_name": "X"}}).encode(),        # 5 missing text
        json.dumps({**good, "text": "Second good row: DuckDB holds the budgets."}).encode(),
    ]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    sample = build_sample(root / "sample", n_docs=60, n_queries=6, pool_size=30)
    pile = Path(sample["paths"]["pile_dir"])
    (pile / BAD_FILE).write_bytes(b"\n".join(_bad_lines()) + b"\n")
    return SimpleNamespace(ws=str(root), pile=str(pile), queries=sample["paths"]["queries"],
                           paths=CorpusPaths(root, "tiny"))


@pytest.fixture(scope="session")
def embedded(tiny, prefect_harness, local_ray):
    from flows.embed import embed_flow

    return embed_flow(corpus=tiny.pile, name="tiny", workspace=tiny.ws, shard_docs=16)


def _all_rows(paths: CorpusPaths):
    return pq.read_table(sorted(str(p) for p in paths.shard_files()))


def _good_lines(pile: str) -> set[tuple[str, int]]:
    out = set()
    for f in sorted(Path(pile).iterdir()):
        for rec in iter_pile_file(f):
            if isinstance(rec, PileDoc):
                out.add((str(f.resolve()), rec.line))
    return out


def test_embed_writes_the_parquet_contract(tiny, embedded):
    manifest = tiny.paths.load_manifest()
    assert manifest["status"] == "complete" and manifest["dim"] == 384
    table = _all_rows(tiny.paths)
    schema = table.schema
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[384]"
    assert str(schema.field("doc_id").type) == "int64"
    assert str(schema.field("n_tokens").type) == "int32"
    ids = table["doc_id"].to_numpy()
    assert len(np.unique(ids)) == len(ids) == manifest["n_chunks"] == embedded["chunks_total"]
    emb = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert table["n_tokens"].to_numpy().max() <= manifest["max_tokens"]
    # every good input line became at least one chunk, and nothing else did
    files = {f["file_id"]: f["path"] for f in manifest["files"]}
    embedded_lines = {(files[unpack_doc_id(i)[0]], unpack_doc_id(i)[1]) for i in ids}
    assert embedded_lines == _good_lines(tiny.pile)
    assert len(manifest["shards"]) > len(manifest["files"])  # several shards per file


def test_bad_lines_are_quarantined_with_file_and_line(tiny, embedded):
    records = [json.loads(line) for q in sorted(tiny.paths.quarantine.glob("*.jsonl"))
               for line in q.read_text().splitlines()]
    assert embedded["bad_lines_total"] == 4 == len(records)
    assert {Path(r["file"]).name for r in records} == {BAD_FILE}
    by_line = {r["line"]: r["reason"] for r in records}
    assert sorted(by_line) == [2, 3, 4, 5]
    assert "JSON" in by_line[2]
    assert "empty" in by_line[3]
    assert "UTF-8" in by_line[4] and "0xff" in by_line[4]
    assert "missing field 'text'" in by_line[5]
    # the good rows of the bad file are embedded
    texts = set(_all_rows(tiny.paths)["text"].to_pylist())
    assert any("Second good row" in t for t in texts)


def test_rerun_of_embed_leaves_row_counts_unchanged(tiny, embedded):
    from flows.embed import embed_flow

    before = _all_rows(tiny.paths)
    again = embed_flow(corpus=tiny.pile, name="tiny", workspace=tiny.ws, shard_docs=16)
    after = _all_rows(tiny.paths)
    assert again["shards_written"] == 0
    assert after.num_rows == before.num_rows == again["chunks_total"]
    assert db.query(db_path(tiny.ws), "SELECT count(*) FROM corpora WHERE name='tiny'") == [(1,)]
    assert db.query(db_path(tiny.ws), "SELECT n_chunks FROM corpora")[0][0] == after.num_rows


def test_crash_midway_resumes_without_duplicates(tiny, embedded):
    from flows.embed import embed_flow

    before = _all_rows(tiny.paths).sort_by("doc_id")
    victim = tiny.paths.shard_files()[1]
    victim.unlink()  # as if the run died before this shard was written ...
    (tiny.paths.embeddings / f".{victim.stem}.parquet.tmp").write_bytes(b"half a file")
    again = embed_flow(corpus=tiny.pile, name="tiny", workspace=tiny.ws, shard_docs=16)
    after = _all_rows(tiny.paths).sort_by("doc_id")
    assert again["shards_written"] == 1
    assert not list(tiny.paths.embeddings.glob(".*.tmp"))
    assert after["doc_id"].equals(before["doc_id"])
    np.testing.assert_allclose(
        np.stack(after["embedding"].to_numpy(zero_copy_only=False)),
        np.stack(before["embedding"].to_numpy(zero_copy_only=False)), atol=1e-5)


def test_changing_shard_size_on_resume_is_refused(tiny, embedded):
    from flows.embed import embed_flow

    with pytest.raises(ValueError, match="shard_docs"):
        embed_flow(corpus=tiny.pile, name="tiny", workspace=tiny.ws, shard_docs=17)


def test_index_maps_rows_back_to_doc_ids_and_finds_every_shard(tiny, embedded):
    from flows.index import index_flow
    from tasks.index.search_service import SearchService

    result = index_flow(name="tiny", workspace=tiny.ws)
    assert result["n_vectors"] == embedded["chunks_total"]
    # the sample is small: exact Flat, one partition, float32 store, recall 1
    assert result["factory"] == "Flat" and result["kind"] == "flat"
    assert result["partitions_total"] == 1 and result["store_dtype"] == "float32"
    assert result["recall"] == pytest.approx(1.0)
    meta = json.loads(tiny.paths.index_meta.read_text())
    assert meta["recall"]["curve"] and Path(result["recall_plot"]).stat().st_size > 1000
    # index files no longer mirror embedding shards
    assert not list(tiny.paths.index.glob("shard-*.faiss"))
    # a vector from every shard finds itself first, with its doc_id and exact score 1
    rows = [pq.read_table(p).slice(0, 1) for p in tiny.paths.shard_files()]
    rows = [r for r in rows if r.num_rows]
    q = np.stack([r["embedding"].to_numpy(zero_copy_only=False)[0] for r in rows])
    with SearchService(tiny.paths) as svc:
        hits = svc.search(q.astype(np.float32), 5)
        texts = svc.texts(hits.rows[:, :1])["text"][:, 0]
    assert hits.doc_ids[:, 0].tolist() == [r["doc_id"][0].as_py() for r in rows]
    assert texts.tolist() == [r["text"][0].as_py() for r in rows]
    np.testing.assert_allclose(hits.scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(hits.vectors[:, 0], q, atol=1e-6)
    assert np.all(np.diff(hits.scores, axis=1) <= 1e-6)  # sorted best first
    again = index_flow(name="tiny", workspace=tiny.ws)
    assert again["blocks_built"] == 0 and again["partitions_built"] == 0
    assert again["n_vectors"] == result["n_vectors"]


def test_select_sift_and_nn_write_comparable_rows(tiny, embedded):
    from flows.index import index_flow
    from flows.select import select_flow

    index_flow(name="tiny", workspace=tiny.ws)
    k, n = 40, 8
    runs = {s: select_flow(name="tiny", queries=tiny.queries, workspace=tiny.ws, k=k, n=n,
                           strategy=s) for s in ("sift", "nn", "random")}
    dbf = db_path(tiny.ws)
    for strategy, run in runs.items():
        rows = db.query(dbf, "SELECT query_id, rank, posterior_variance, doc_id FROM "
                        "test_time_selections WHERE run_id = ? ORDER BY query_id, rank",
                        [run["run_id"]])
        assert len(rows) == 6 * n, strategy
        var = np.array([r[2] for r in rows]).reshape(6, n)
        assert np.all(np.diff(var, axis=1) <= 1e-6), strategy  # never increases
        assert db.query(dbf, "SELECT status FROM runs WHERE run_id = ?",
                        [run["run_id"]]) == [("completed",)]
        assert Path(run["plot"]).stat().st_size > 1000
    assert runs["sift"]["mean_final_variance"] <= runs["nn"]["mean_final_variance"] + 1e-6
    assert runs["sift"]["mean_final_variance"] < runs["random"]["mean_final_variance"]
    # the picked chunks really are in the corpus, with the reported similarity
    reader = CorpusReader(tiny.ws, "tiny")
    (qid, doc, sim), = db.query(dbf, "SELECT query_id, doc_id, similarity FROM "
                                "test_time_selections WHERE run_id = ? AND rank = 1 "
                                "ORDER BY query_id LIMIT 1", [runs["nn"]["run_id"]])
    assert reader.fetch(np.array([doc]))["embedding"].shape == (1, 384)
    assert -1.0 <= sim <= 1.0
    # rerunning the same selection replaces its rows
    select_flow(name="tiny", queries=tiny.queries, workspace=tiny.ws, k=k, n=n,
                strategy="sift")
    assert db.query(dbf, "SELECT count(*) FROM test_time_selections WHERE run_id = ?",
                    [runs["sift"]["run_id"]]) == [(6 * n,)]


def test_select_nn_f_and_adaptive_sift_rows(tiny, embedded):
    """NN-F's picks per prompt are never near-duplicates of each other; Adaptive SIFT's
    rows are SIFT's first picks, as many per prompt as it took (at most n)."""
    from flows.index import index_flow
    from flows.select import select_flow

    index_flow(name="tiny", workspace=tiny.ws)
    dbf = db_path(tiny.ws)
    k, n = 40, 8
    runs = {s: select_flow(name="tiny", queries=tiny.queries, workspace=tiny.ws, k=k, n=n,
                           strategy=s, dup_threshold=0.6, alpha=0.3)
            for s in ("sift", "nn-f", "adaptive-sift")}

    def picks(strategy: str) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for qid, doc, strat in db.query(dbf, "SELECT query_id, doc_id, strategy FROM "
                                        "test_time_selections WHERE run_id = ? ORDER BY "
                                        "query_id, rank", [runs[strategy]["run_id"]]):
            assert strat == strategy
            out.setdefault(qid, []).append(doc)
        return out

    reader = CorpusReader(tiny.ws, "tiny")
    for docs in picks("nn-f").values():
        e = reader.fetch(np.array(docs))["embedding"]
        sims = e @ e.T
        assert (sims[~np.eye(len(docs), dtype=bool)] < 0.6).all()
    sift, adaptive = picks("sift"), picks("adaptive-sift")
    assert all(1 <= len(a) <= n and a == sift[q][:len(a)] for q, a in adaptive.items())
    assert runs["adaptive-sift"]["mean_picks"] < n  # alpha 0.3 stops before 8 here
    params = db.query(dbf, "SELECT params->>'alpha' FROM runs WHERE run_id = ?",
                      [runs["adaptive-sift"]["run_id"]])
    assert params == [("0.3",)]


def test_select_rejects_unknown_strategy_and_bad_queries(tiny, embedded, tmp_path):
    from flows.select import select_flow

    with pytest.raises(ValueError, match="unknown strategy 'greedy'"):
        select_flow(name="tiny", queries=tiny.queries, workspace=tiny.ws, strategy="greedy")
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"query_id": "a", "text": "fine"}\n{"query_id": "b"}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:2: missing or empty field 'text'"):
        select_flow(name="tiny", queries=str(bad), workspace=tiny.ws, k=10, n=2)
    assert db.query(db_path(tiny.ws), "SELECT count(*) FROM runs WHERE status = 'failed'")[0][0]


def test_ivf_pq_index_in_partitions_with_exact_rerank(tiny, embedded):
    """A trained IVF-PQ index in several partitions, one Ray actor each: the candidates'
    similarities are exact inner products with the stored vectors."""
    from flows.index import index_flow
    from flows.select import select_flow
    from tasks.index.search_service import SearchService

    result = index_flow(name="tiny", workspace=tiny.ws, factory="IVF4,PQ8x4", train_size=256,
                        memory_budget="1KB", block_vectors=40, target_recall=0.9,
                        recall_k=20)
    assert result["kind"] == "ivf" and result["partitions_total"] >= 2
    assert result["blocks_total"] >= 2 and result["train_seconds"] > 0
    assert result["store_dtype"] == "float16" and tiny.paths.trained.is_file()
    meta = json.loads(tiny.paths.index_meta.read_text())
    assert sum(p["ntotal"] for p in meta["partitions"]) == embedded["chunks_total"]
    # every corpus row is in exactly one partition
    assert [p["row_start"] for p in meta["partitions"][1:]] == \
        [p["row_end"] for p in meta["partitions"][:-1]]
    assert meta["recall"]["curve"] and meta["search"]["nprobe"] >= 1
    run = select_flow(name="tiny", queries=tiny.queries, workspace=tiny.ws, k=20, n=4,
                      strategy="nn")
    assert run["rows"] == 6 * 4 and run["search_partitions"] == result["partitions_total"]
    with SearchService(tiny.paths, nprobe=4, rerank_factor=4) as svc:
        q = svc.fetch(np.array([[0, 7]]))[0][0]
        hits = svc.search(q, 10)
        np.testing.assert_allclose(hits.scores, np.einsum("bkd,bd->bk", hits.vectors, q),
                                   atol=1e-5)
        assert hits.rows[:, 0].tolist() == [0, 7]  # a stored vector finds itself first
    # the exact Flat index again for the tests that follow
    flat = index_flow(name="tiny", workspace=tiny.ws, rebuild=True)
    assert flat["kind"] == "flat"


def test_select_refuses_an_encoder_of_another_dimension(tiny, embedded):
    """An index built with a 384-d encoder and prompts embedded by a 256-d one."""
    from tasks.index.search_service import SearchService

    with SearchService(tiny.paths, local=True) as svc, \
            pytest.raises(ValueError, match="query embedding dimension 256 != index dimension 384"):
        svc.search(np.zeros((2, 256), dtype=np.float32), 5)


def test_new_shards_are_added_without_retraining_or_rebuilding_the_rest(tiny, embedded):
    """Runs last: it grows the corpus. New input -> new shards -> new blocks and a new
    partition, with the same trained model; finished partitions are not touched."""
    from flows.embed import embed_flow
    from flows.index import index_flow
    from tasks.index.search_service import SearchService

    kw = {"factory": "IVF4,PQ8x4", "train_size": 256, "memory_budget": "1KB",
          "block_vectors": 40, "target_recall": 0.9, "recall_k": 20}
    first = index_flow(name="tiny", workspace=tiny.ws, rebuild=True, **kw)
    index_dir = tiny.paths.index
    before = {p.name: p.stat().st_mtime_ns
              for p in [tiny.paths.trained, *(index_dir / "partitions").iterdir()]}
    pile = Path(tiny.pile)
    src = sorted(p for p in pile.iterdir() if p.name != BAD_FILE)[0]
    (pile / ("zz-new-" + src.name)).write_bytes(src.read_bytes())
    grown = embed_flow(corpus=tiny.pile, name="tiny", workspace=tiny.ws, shard_docs=16)
    assert grown["shards_written"] > 0
    added = index_flow(name="tiny", workspace=tiny.ws, **kw)
    assert added["n_vectors"] == grown["chunks_total"] > first["n_vectors"]
    assert added["blocks_skipped"] == first["blocks_total"]
    assert added["blocks_built"] == added["blocks_total"] - first["blocks_total"] > 0
    assert added["partitions_built"] == added["partitions_total"] - first["partitions_total"]
    assert added["trained_on"] == 0  # no retraining
    after = {p.name: p.stat().st_mtime_ns
             for p in [tiny.paths.trained, *(index_dir / "partitions").iterdir()]}
    assert {k: after[k] for k in before} == before  # nothing finished was rewritten
    # the new rows are searchable: a new shard's first vector finds itself
    new_shard = next(p for p in tiny.paths.shard_files()
                     if pq.read_metadata(p).num_rows and p.name not in
                     {s["file"] for b in json.loads((index_dir / "plan.json").read_text())
                      ["blocks"][: first["blocks_total"]] for s in b["shards"]})
    row = pq.read_table(new_shard).slice(0, 1)
    q = np.stack(row["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    with SearchService(tiny.paths, nprobe=4, rerank_factor=4, local=True) as svc:
        hits = svc.search(q, 5)
    assert hits.doc_ids[0, 0] == row["doc_id"][0].as_py()
