"""The demo's report: SQL comparing its SIFT and NN runs, run against curation.duckdb."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.reporting import artifacts
from tasks.runtime.workspace import CorpusPaths, db_path
from tasks.storage import db
from tasks.storage.db import format_rows


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


@task(name="demo-report", persist_result=False, cache_policy=NO_CACHE)
def demo_report(ws: str, corpus: str, sift: dict, nn: dict, n: int) -> str:
    """The comparison queries and their results as text (printed and as an artifact)."""
    dbf = db_path(ws)
    glob = str(CorpusPaths(ws, corpus).embeddings / "*.parquet")
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
    return text
