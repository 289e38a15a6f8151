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

from tasks import db
from tasks.corpus import CorpusReader, unpack_doc_id
from tasks.pile_reader import PileDoc, iter_pile_file
from tasks.sample import build_sample
from tasks.workspace import CorpusPaths, db_path

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


def test_index_maps_ids_back_and_searches_all_shards(tiny, embedded):
    from flows.index import index_flow
    from tasks.select import retrieve

    result = index_flow(name="tiny", workspace=tiny.ws)
    assert result["n_vectors"] == embedded["chunks_total"]
    non_empty = [p for p in tiny.paths.shard_files() if pq.read_metadata(p).num_rows]
    assert result["shards_total"] == len(non_empty)
    # a vector from every shard finds itself first
    rows = [pq.read_table(p).slice(0, 1) for p in tiny.paths.shard_files()]
    rows = [r for r in rows if r.num_rows]
    q = np.stack([r["embedding"].to_numpy(zero_copy_only=False)[0] for r in rows])
    scores, ids = retrieve(tiny.paths, q.astype(np.float32), k=5)
    assert ids[:, 0].tolist() == [r["doc_id"][0].as_py() for r in rows]
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # sorted best first
    again = index_flow(name="tiny", workspace=tiny.ws)
    assert again["shards_built"] == 0


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


def test_select_rejects_unknown_strategy_and_bad_queries(tiny, embedded, tmp_path):
    from flows.select import select_flow

    with pytest.raises(ValueError, match="unknown strategy 'greedy'"):
        select_flow(name="tiny", queries=tiny.queries, workspace=tiny.ws, strategy="greedy")
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"query_id": "a", "text": "fine"}\n{"query_id": "b"}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:2: missing or empty field 'text'"):
        select_flow(name="tiny", queries=str(bad), workspace=tiny.ws, k=10, n=2)
    assert db.query(db_path(tiny.ws), "SELECT count(*) FROM runs WHERE status = 'failed'")[0][0]


def test_ivf_index_is_trained_once_and_searchable(tiny, embedded):
    from flows.index import index_flow
    from flows.select import select_flow

    result = index_flow(name="tiny", workspace=tiny.ws, factory="IVF4,Flat", train_size=500)
    assert result["shards_built"] == result["shards_total"] and result["train_seconds"] > 0
    assert tiny.paths.trained.is_file()
    run = select_flow(name="tiny", queries=tiny.queries, workspace=tiny.ws, k=20, n=4,
                      strategy="sift", nprobe=4)
    assert run["rows"] == 6 * 4


def test_select_refuses_an_encoder_of_another_dimension(tiny, embedded):
    """An index built with a 384-d encoder and prompts embedded by a 256-d one."""
    from tasks.select import retrieve

    with pytest.raises(ValueError, match="query embedding dimension 256 != index dimension 384"):
        retrieve(tiny.paths, np.zeros((2, 256), dtype=np.float32), 5)
