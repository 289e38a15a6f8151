"""Flow: the whole path on the bundled sample (what `make demo` runs).

sample -> embed (Ray Data) -> index (faiss) -> select with SIFT and with nearest neighbours,
then the SQL a user can paste to compare them in curation.duckdb.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.embed import embed_flow
from flows.index import index_flow
from flows.jobs import SAMPLE_CORPUS, SAMPLE_SHARD_DOCS
from flows.sample import sample_flow
from flows.select import select_flow
from tasks.reporting import artifacts
from tasks.runtime.workspace import CorpusPaths, db_path, workspace_root
from tasks.storage import db
from tasks.storage.db import format_rows

DEMO_CORPUS = SAMPLE_CORPUS


def demo_sql(sift_run: str, nn_run: str, embeddings_glob: str, n: int) -> list[tuple[str, str]]:
    """Three (title, SQL) pairs comparing the demo's SIFT and NN runs."""
    return [
        ("Mean posterior variance after N picks, SIFT vs NN", f"""
SELECT strategy,
       count(DISTINCT query_id)                                          AS prompts,
       round(avg(posterior_variance) FILTER (WHERE rank = {n}), 4)       AS mean_variance_after_n,
       round(avg(similarity), 4)                                         AS mean_similarity,
       round(count(DISTINCT (query_id, doc_id)) / count(DISTINCT query_id), 1)
                                                                         AS distinct_docs_per_prompt
FROM test_time_selections
WHERE run_id IN ('{sift_run}', '{nn_run}')
GROUP BY strategy ORDER BY strategy;"""),
        ("Per prompt: how much lower SIFT's variance is than NN's", f"""
SELECT query_id,
       round(max(posterior_variance)
             FILTER (WHERE run_id = '{sift_run}' AND rank = {n}), 4) AS sift,
       round(max(posterior_variance)
             FILTER (WHERE run_id = '{nn_run}' AND rank = {n}), 4)   AS nn,
       round(nn - sift, 4)                                      AS sift_gain
FROM test_time_selections
WHERE run_id IN ('{sift_run}', '{nn_run}')
GROUP BY query_id ORDER BY sift_gain DESC LIMIT 10;"""),
        ("Chunks SIFT picked that NN did not (first prompt with any)", f"""
WITH extra AS (
    SELECT s.query_id, s.rank, s.doc_id FROM test_time_selections s
    WHERE s.run_id = '{sift_run}'
      AND NOT EXISTS (SELECT 1 FROM test_time_selections n
                      WHERE n.run_id = '{nn_run}' AND n.query_id = s.query_id
                        AND n.doc_id = s.doc_id))
SELECT e.query_id, e.rank, e.doc_id, c.source, left(replace(c.text, chr(10), ' '), 70) AS text
FROM extra e JOIN read_parquet('{embeddings_glob}') c USING (doc_id)
WHERE e.query_id = (SELECT min(query_id) FROM extra)
ORDER BY e.rank LIMIT 10;"""),
    ]


@flow(name="demo", log_prints=True)
def demo_flow(workspace: str | None = None, k: int = 200, n: int = 50, lam: float = 0.01,
              n_docs: int | None = None, n_queries: int = 64) -> dict:
    """Run sample -> embed -> index -> select (sift, nn) on the bundled sample."""
    root = workspace_root(workspace)
    ws = str(root)
    sample = sample_flow(out=str(root / "sample"), n_docs=n_docs, n_queries=n_queries)
    embedded = embed_flow(corpus=sample["paths"]["pile_dir"], name=DEMO_CORPUS, workspace=ws,
                          shard_docs=SAMPLE_SHARD_DOCS)
    indexed = index_flow(name=DEMO_CORPUS, workspace=ws)
    queries = sample["paths"]["queries"]
    sift = select_flow(name=DEMO_CORPUS, queries=queries, workspace=ws, k=k, n=n, lam=lam,
                       strategy="sift")
    nn = select_flow(name=DEMO_CORPUS, queries=queries, workspace=ws, k=k, n=n, lam=lam,
                     strategy="nn")
    dbf = db_path(ws)
    glob = str(CorpusPaths(ws, DEMO_CORPUS).embeddings / "*.parquet")
    # the NN run comes second, so its plot holds both curves
    report = [f"DuckDB: {dbf}", f"Plot:   {nn['plot']}", ""]
    for title, sql in demo_sql(sift["run_id"], nn["run_id"], glob, n):
        with db.connect(dbf, read_only=True) as con:
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        report += [f"-- {title}", sql.strip(), "", format_rows(cols, rows), ""]
    text = "\n".join(report)
    print(text)
    artifacts.markdown("demo", "# Demo\n\n```\n" + text + "\n```")
    return {
        "db": str(dbf), "sift": sift, "nn": nn, "embed": embedded, "index": indexed,
        "report": text, "sample": str(Path(sample["out"])),
    }
