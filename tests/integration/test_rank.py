"""rank + handoff flows on a small sample pool: real local Ray (actor stages), real Prefect
(test harness), real faiss, a real DuckDB file, the tiny random LM; plus one test with the
real SmolLM2-135M-Instruct (marked ``real_lm``)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sift_ops.pool_strategies import STRATEGIES
from tasks.runtime.workspace import db_path
from tasks.sample.bundled import build_sample
from tasks.storage import db

pytestmark = pytest.mark.integration

BUDGET = 15
BAD_LINES = [
    b'{"instruction": "truncated',
    json.dumps({"instruction": "", "source": "News (BBC)"}).encode(),
    b'{"instruction": "bad \xfe byte"}',
]


@pytest.fixture(scope="module")
def own_ray():
    """Start this process's own local Ray before ``local_ray`` joins it: with no address,
    ray.init() attaches to any other Ray instance running on the machine (seen here when
    other test sessions ran concurrently) and then refuses num_cpus."""
    import os

    import ray

    from tasks.runtime.ray_runtime import ensure_ray

    if not ray.is_initialized():
        ensure_ray(address="local")
    yield
    if os.environ.get("RAY_ADDRESS") == "local":
        os.environ.pop("RAY_ADDRESS")


@pytest.fixture(scope="module")
def ws(tmp_path_factory, prefect_harness, own_ray, local_ray):
    from tests.tiny_lm import build_tiny_lm

    root = tmp_path_factory.mktemp("rank_ws")
    sample = build_sample(root / "sample", n_docs=60, n_queries=6, pool_size=60)
    pool = Path(sample["paths"]["pool"])
    lines = pool.read_bytes().splitlines()
    first = json.loads(lines[0])
    labelled = {**json.loads(lines[1]), "output": "an existing answer"}
    extra = [json.dumps(first).encode(),  # exact duplicate of line 1
             *BAD_LINES]
    lines[1] = json.dumps(labelled).encode()
    pool.write_bytes(b"\n".join(lines + extra) + b"\n")
    return SimpleNamespace(root=str(root), pool=str(pool), lm=str(build_tiny_lm(root / "lm")),
                           labelled_id=labelled["item_id"], queries=sample["paths"]["queries"],
                           db=db_path(root))


@pytest.fixture(scope="module")
def ranked(ws):
    from flows.rank import rank_flow

    kwargs = dict(pool=ws.pool, pool_name="sample", budget=BUDGET, strategies=list(STRATEGIES),
                  allocation="equal", batch_size=4, lm=ws.lm, max_new_tokens=6,
                  targets=ws.queries, workspace=ws.root, run_id="rank-all")
    first = rank_flow(**kwargs)
    return SimpleNamespace(result=first, kwargs=kwargs)


def test_every_strategy_spends_the_budget_exactly(ws, ranked):
    rows = db.query(ws.db, """
        SELECT strategy, sum(spent), sum(allocated), max(total), bool_and(spent <= allocated)
        FROM budgets WHERE run_id = 'rank-all' GROUP BY 1 ORDER BY 1""")
    assert [r[0] for r in rows] == sorted(STRATEGIES)
    for strategy, spent, allocated, total, within in rows:
        assert spent == allocated == total == BUDGET, strategy
        assert within, strategy
    counts = db.query(ws.db, """
        SELECT strategy, count(*), count(DISTINCT item_id), max(rank), max(batch)
        FROM selections WHERE run_id = 'rank-all' GROUP BY 1""")
    assert all(c[1:] == (BUDGET, BUDGET, BUDGET, 4) for c in counts), counts
    # equal allocation over the two sources of the sample: 8 + 7
    per_group = db.query(ws.db, """SELECT DISTINCT allocated FROM budgets
                                   WHERE run_id = 'rank-all' ORDER BY 1""")
    assert per_group == [(7.0,), (8.0,)]


def test_ingest_quarantines_collapses_and_keeps_labels(ws, ranked):
    s = ranked.result
    assert s["quarantined"] == len(BAD_LINES) and s["duplicates"] == 1 and s["labeled"] == 1
    assert s["items"] == 60
    reasons = db.query(ws.db, "SELECT line, reason FROM quarantine WHERE run_id = 'rank-all' "
                              "ORDER BY line")
    assert [r[0] for r in reasons] == [62, 63, 64]
    assert "malformed JSON" in reasons[0][1] and "invalid UTF-8" in reasons[2][1]
    picked = db.query(ws.db, "SELECT count(*) FROM selections WHERE item_id = ?",
                      [ws.labelled_id])
    assert picked == [(0,)]
    # every unlabelled item has all LM scores
    n = db.query(ws.db, """SELECT metric, count(*) FROM item_scores WHERE run_id = 'rank-all'
                           GROUP BY 1 ORDER BY 1""")
    assert dict(n)["mean_entropy"] == 59 and dict(n)["gen_tokens"] == 59
    assert s["lm_items_per_s"] > 0


def test_views(ws, ranked):
    rows = db.query(ws.db, """SELECT strategy, count(*), count(instruction)
                              FROM selected_for_annotation WHERE pool_name = 'sample'
                              GROUP BY 1""")
    assert len(rows) == len(STRATEGIES) and all(r[1] == r[2] == BUDGET for r in rows)
    summ = db.query(ws.db, """SELECT count(*), min(spent_fraction) FROM budget_summary
                              WHERE run_id = 'rank-all'""")
    assert summ[0][0] == 2 * len(STRATEGIES) and summ[0][1] == 1.0


def test_rerun_replaces_rows(ws, ranked):
    from flows.rank import rank_flow

    query = ("SELECT strategy, item_id, rank, batch FROM selections WHERE run_id = 'rank-all' "
             "ORDER BY strategy, rank")
    before = db.query(ws.db, query)
    counts = {t: db.query(ws.db, f"SELECT count(*) FROM {t}")[0][0]
              for t in ("selections", "budgets", "item_scores", "quarantine", "pool_items")}
    rank_flow(**ranked.kwargs)
    assert db.query(ws.db, query) == before  # same picks, deterministic
    for t, c in counts.items():
        assert db.query(ws.db, f"SELECT count(*) FROM {t}")[0][0] == c, t


def test_token_budget_never_exceeded(ws, ranked):
    from flows.rank import rank_flow

    rank_flow(pool=ws.pool, pool_name="sample", budget=3000, unit="tokens",
              strategies=["random", "k_center", "sift"], allocation="proportional",
              lm=ws.lm, max_new_tokens=6, workspace=ws.root, run_id="rank-tokens")
    rows = db.query(ws.db, """
        SELECT s.strategy, sum(c.value), count(*) FROM selections s
        JOIN item_scores c ON c.run_id = s.run_id AND c.item_id = s.item_id
                          AND c.metric = 'cost'
        WHERE s.run_id = 'rank-tokens' GROUP BY 1""")
    assert len(rows) == 3
    for strategy, spent, n in rows:
        assert 0 < spent <= 3000 and n > 1, strategy
    groups = db.query(ws.db, """SELECT bool_and(spent <= allocated), sum(allocated) / 3
                                FROM budgets WHERE run_id = 'rank-tokens'""")
    assert groups == [(True, 3000.0)]


def test_handoff_files_parse(ws, ranked, tmp_path):
    from flows.handoff import handoff_flow
    from tasks.annotation.handoff import HandoffExists

    out = tmp_path / "handoff"
    with pytest.raises(ValueError, match="several strategies"):
        handoff_flow(run="rank-all", format="jsonl", out=str(out), workspace=ws.root)
    res = {}
    for fmt, strategy in (("labelstudio", "k_center"), ("jsonl", "sift"), ("csv", "random")):
        res[fmt] = handoff_flow(run="rank-all", format=fmt, out=str(out), strategy=strategy,
                                workspace=ws.root)
        folder = Path(res[fmt]["folder"])
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["n_items"] == BUDGET and manifest["n_batches"] == 4
        for f in manifest["files"]:
            assert hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest() == f["sha256"]
    ls = json.loads((Path(res["labelstudio"]["folder"]) / "batch-0001.json").read_text())
    assert isinstance(ls, list) and len(ls) == 4
    for task in ls:
        assert task["data"]["text"] and isinstance(task["predictions"][0]["score"], float)
        assert task["predictions"][0]["result"] == []
    lines = (Path(res["jsonl"]["folder"]) / "batch-0004.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 3 and all(r["text"] and r["meta"]["batch"] == 4 for r in recs)
    with open(Path(res["csv"]["folder"]) / "batch-0002.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["rank"]) for r in rows] == [5, 6, 7, 8] and all(r["instruction"] for r in rows)
    assert db.query(ws.db, "SELECT count(*), sum(n_items) FROM handoffs "
                           "WHERE run_id = 'rank-all'") == [(12, 3 * BUDGET)]
    with pytest.raises(HandoffExists, match="--force"):
        handoff_flow(run="rank-all", format="csv", out=str(out), strategy="random",
                     workspace=ws.root)
    handoff_flow(run="rank-all", format="csv", out=str(out), strategy="random", force=True,
                 workspace=ws.root)
    assert db.query(ws.db, "SELECT count(*) FROM handoffs WHERE run_id = 'rank-all'") == [(12,)]


def test_strict_names_file_and_line(ws):
    from flows.rank import rank_flow

    with pytest.raises(ValueError, match=r"pool.jsonl:62: malformed JSON"):
        rank_flow(pool=ws.pool, pool_name="strict", budget=3, strategies=["random"],
                  strict=True, workspace=ws.root, run_id="rank-strict")
    assert db.query(ws.db, "SELECT status FROM runs WHERE run_id = 'rank-strict'") == [
        ("failed",)]


@pytest.mark.real_lm
def test_real_smollm2_scores_a_handful(ws, tmp_path_factory):
    """The bundled SmolLM2-135M-Instruct (GGUF converted once into the workspace's
    models/ folder; ~30 s the first time) scores 6 items with its chat template."""
    from flows.rank import rank_flow

    small = Path(ws.root) / "small.jsonl"
    small.write_bytes(b"\n".join(Path(ws.pool).read_bytes().splitlines()[:6]) + b"\n")
    res = rank_flow(pool=str(small), pool_name="small", budget=3,
                    strategies=["mean_entropy", "min_margin"], max_new_tokens=12,
                    gen_batch_size=6, workspace=ws.root, run_id="rank-smollm2")
    assert (Path(ws.root) / "models" / "SmolLM2-135M-Instruct" / "config.json").is_file()
    vals = dict(db.query(ws.db, """SELECT metric, count(*) FROM item_scores
                                   WHERE run_id = 'rank-smollm2' GROUP BY 1"""))
    assert vals["mean_entropy"] == 5 and vals["gen_tokens"] == 5  # 1 of the 6 is labelled
    gen = db.query(ws.db, """SELECT min(value), max(value) FROM item_scores
                             WHERE run_id = 'rank-smollm2' AND metric = 'gen_tokens'""")
    assert gen[0][0] >= 1 and gen[0][1] <= 12
    ent = db.query(ws.db, """SELECT min(value), max(value) FROM item_scores
                             WHERE run_id = 'rank-smollm2' AND metric = 'mean_entropy'""")
    # a trained model is far from uniform over its 49k-token vocabulary (ln 49152 = 10.8)
    assert 0 <= ent[0][0] and ent[0][1] < 8
    assert res["selected"] == {"mean_entropy": 3, "min_margin": 3}
    assert res["lm_items_per_s"] > 0


@pytest.mark.real_lm
def test_the_bundled_gguf_passed_by_path_reuses_its_converted_folder(ws):
    """`rank --lm .../SmolLM2-135M-Instruct.Q4_1.gguf` is the default model: same bytes,
    same cached folder (converted by the test above, or here the first time)."""
    from sift_ops.causal_lm import bundled_gguf
    from tasks.runtime.models import resolve_lm_path

    models = Path(ws.root) / "models"
    assert resolve_lm_path(str(bundled_gguf()), models) == str(models /
                                                              "SmolLM2-135M-Instruct")


def test_rank_with_a_gguf_file_as_lm(ws, tmp_path_factory):
    """`--lm FILE.gguf`: converted into <workspace>/models/gguf/<sha256[:16]> on the driver,
    loaded by the Ray LM actors from there, scores written."""
    from flows.rank import rank_flow
    from sift_ops.causal_lm import file_sha256
    from tests.tiny_gguf import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    small = Path(ws.root) / "small-gguf.jsonl"
    small.write_bytes(b"\n".join(Path(ws.pool).read_bytes().splitlines()[:6]) + b"\n")
    res = rank_flow(pool=str(small), pool_name="small-gguf", budget=3,
                    strategies=["mean_entropy"], lm=str(gguf), max_new_tokens=3,
                    gen_batch_size=6, workspace=ws.root, run_id="rank-gguf")
    folder = Path(ws.root) / "models" / "gguf" / file_sha256(gguf)[:16]
    assert (folder / "config.json").is_file()
    assert db.query(ws.db, """SELECT count(*) FROM item_scores WHERE run_id = 'rank-gguf'
                              AND metric = 'mean_entropy'""") == [(5,)]
    assert res["selected"] == {"mean_entropy": 3}


def test_lm_stage_streams_results_in_blocks_of_about_rows_per_call(ws, ranked):
    """With Ray Data's default 128 MB block target the whole pool was one block: results
    and the progress bar arrived only at the end of LM scoring."""
    import pyarrow.parquet as pq

    from tasks.pool.items import pool_dir
    from tasks.pool.lm_scoring import score_pool

    items = pool_dir(ws.root, "sample") / "items.parquet"
    n_unlabelled = sum(o is None for o in pq.read_table(items, columns=["output"])
                       .column("output").to_pylist())
    calls: list[int] = []
    table, stats = score_pool(items, ws.lm, max_new_tokens=2, rows_per_call=8,
                              progress=calls.append)
    assert table.num_rows == sum(calls) == n_unlabelled > 40
    assert len(calls) >= 3, calls  # ~60 items: blocks of >= 16 KiB (~20 rows), not one block


def test_collected_annotations_make_items_labelled_for_the_next_rank(ws):
    """Rows in ``annotations`` (what `collect` writes) for two of a run's picks: the next
    rank of the pool never picks them, counts them as labelled context, and budget_summary
    counts them as annotated for the run they came from. An empty answer does neither."""
    from flows.rank import rank_flow
    from tasks.annotation.annotations import apply_collect, record_tasks

    kw = dict(pool=ws.pool, pool_name="annotated", budget=6, strategies=["k_center"],
              workspace=ws.root)
    rank_flow(**kw, run_id="ann-1")
    picks = [r[0] for r in db.query(ws.db, "SELECT item_id FROM selections WHERE run_id = "
                                           "'ann-1' ORDER BY rank")]
    url = "http://ls.invalid"
    record_tasks(ws.db, url, "proj", 1, "ann-1", "k_center",
                 [{"item_id": i, "pool_name": "annotated", "batch": 1, "task_id": n}
                  for n, i in enumerate(picks)])
    rows = [{"run_id": "ann-1", "item_id": picks[n], "project": "proj", "task_id": n,
             "annotator": "a", "response": text, "created_at": None, "updated_at": None,
             "pool_name": "annotated", "strategy": "k_center", "url": url, "project_id": 1,
             "annotation_id": n, "status": status}
            for n, (text, status) in enumerate([("one", "submitted"), ("two", "submitted"),
                                                 ("", "empty")])]
    apply_collect(ws.db, url, 1, rows, list(range(len(picks))))
    assert db.query(ws.db, "SELECT sum(n_annotated), sum(annotated_spent) FROM budget_summary "
                           "WHERE run_id = 'ann-1'") == [(2, 2.0)]
    res = rank_flow(**kw, run_id="ann-2")
    assert res["annotated"] == 2 and res["labeled"] == 2 + 1  # + the pool's own output
    again = [r[0] for r in db.query(ws.db, "SELECT item_id FROM selections WHERE run_id = "
                                           "'ann-2' ORDER BY rank")]
    assert len(again) == 6 and not set(again) & set(picks[:2])
    assert db.query(ws.db, "SELECT sum(n_items) FROM budgets WHERE run_id = 'ann-2'") == [
        (db.query(ws.db, "SELECT sum(n_items) FROM budgets WHERE run_id = 'ann-1'")[0][0] - 2,)]
