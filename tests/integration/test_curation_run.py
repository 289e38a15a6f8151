"""The curation-run flow as the scheduler runs it: no parameters, on a workspace whose
bundled sample is (or is not yet) built; reruns on unchanged inputs do no work and never
duplicate rows; new corpus files and pool rows are processed alone and counted. Real
local Ray, real Prefect (test harness), real faiss, a real DuckDB file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.runtime.workspace import db_path
from tasks.sample.bundled import build_sample, read_sample
from tasks.storage import db

pytestmark = pytest.mark.integration


def _counts(dbf: Path) -> dict:
    return {
        "selections": db.query(dbf, "SELECT strategy, count(*) FROM selections "
                               "GROUP BY 1 ORDER BY 1"),
        "runs": db.query(dbf, "SELECT flow, count(*) FROM runs GROUP BY 1 ORDER BY 1"),
        "pool_items": db.query(dbf, "SELECT count(*) FROM pool_items")[0][0],
        "handoffs": db.query(dbf, "SELECT count(*), sum(n_items) FROM handoffs")[0],
    }


def test_nightly_with_no_parameters_is_idempotent_and_counts_what_is_new(
        tmp_path, prefect_harness, local_ray):
    from flows.curation_run import curation_run_flow

    ws = tmp_path / "ws"
    # a small sample where the default job looks for it (the full one is built when
    # absent: see the next test); the scheduler sends only the workspace
    build_sample(ws / "sample", n_docs=40, n_queries=4, pool_size=30)
    first = curation_run_flow(workspace=str(ws))
    dbf = db_path(ws)
    assert first["new"]["shards"] >= 1 and first["new"]["vectors"] > 0
    assert first["new"]["pool_items"] == 30 and first["new"]["prompts_embedded"] == 30
    after_first = _counts(dbf)
    assert dict(after_first["selections"]) == {"facility_location": 30, "random": 30}
    files = sorted((ws / "handoff").rglob("batch-*.json"))
    assert files

    second = curation_run_flow(workspace=str(ws))
    assert second["new"] == {"shards": 0, "vectors": 0, "pool_items": 0, "lm_scored": 0,
                             "prompts_embedded": 0}
    assert second["rank_run"] == first["rank_run"]  # same job, same run id: rows replaced
    after_second = _counts(dbf)
    assert after_second == after_first  # nothing duplicated, runs replaced in place
    assert sorted((ws / "handoff").rglob("batch-*.json")) == files

    # new pool rows and a new corpus file arrive
    pool = ws / "sample" / "pool.jsonl"
    extra = [{"instruction": f"Summarise the new report number {i}.", "source": "News (BBC)"}
             for i in range(4)]
    with pool.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in extra)
    pile = ws / "sample" / "pile"
    (pile / "part-99.jsonl").write_text("".join(
        json.dumps({"text": f"A new document {i} about indexing new shards at night. " * 8,
                    "meta": {"pile_set_name": "New"}}) + "\n" for i in range(5)))
    third = curation_run_flow(workspace=str(ws))
    assert third["new"]["shards"] == 1 and third["new"]["vectors"] >= 5
    assert third["new"]["pool_items"] == 4 and third["new"]["prompts_embedded"] == 4
    assert db.query(dbf, "SELECT count(*) FROM pool_items")[0][0] == 34
    # still one row per (strategy, item): the rank run's rows were replaced
    assert db.query(dbf, """SELECT count(*) FROM (SELECT strategy, item_id, count(*) c
                            FROM selections GROUP BY 1, 2 HAVING c > 1)""") == [(0,)]
    assert dict(_counts(dbf)["selections"]) == {"facility_location": 34, "random": 34}
    n_vectors = db.query(dbf, "SELECT count(*) FROM read_parquet(?)",
                         [str(ws / "corpora" / "mini-pile" / "embeddings" / "*.parquet")])
    assert third["index_run"] == first["index_run"]
    index = json.loads((ws / "corpora" / "mini-pile" / "index" / "index.json").read_text())
    assert index["n_vectors"] == n_vectors[0][0]


def test_the_default_job_builds_the_bundled_sample_on_first_run(tmp_path, prefect_harness):
    from flows.curation_run import _bundled_sample

    ws = tmp_path / "fresh"
    assert read_sample(ws / "sample") is None
    paths = _bundled_sample(str(ws))
    assert read_sample(ws / "sample") == paths
    summary = json.loads(Path(paths["summary"]).read_text())
    assert summary["n_docs"] == 3400 and summary["pool_size"] == 1200
    # a half-written sample (no sample.json) is not taken for a finished one
    Path(paths["summary"]).unlink()
    assert read_sample(ws / "sample") is None
    shutil.rmtree(ws)


def test_a_bad_parameter_fails_the_run_naming_the_key(tmp_path, prefect_harness):
    from flows.curation_run import curation_run_flow
    from flows.jobs import ConfigError

    with pytest.raises(ConfigError, match="handoff_strategy 'k_center' is not among"):
        curation_run_flow(handoff_strategy="k_center", workspace=str(tmp_path))
