"""Flow: test-time data selection (SIFT, nearest neighbours or random) for a prompt file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from tasks import artifacts, db
from tasks.corpus import CorpusReader
from tasks.plots import variance_curves
from tasks.retry import TRANSIENT_RETRIES
from tasks.runs import make_run_id, tracked_run
from tasks.select import STRATEGIES, load_queries, select_for_queries, selection_rows
from tasks.workspace import CorpusPaths, db_path, reports_dir


@task(name="embed-queries", persist_result=False, cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def embed_queries(texts: list[str], model: str, max_tokens: int) -> np.ndarray:
    from sift_ops.embedding import TextEncoder

    return TextEncoder(model, max_tokens=max_tokens).encode(texts)


@task(name="retrieve-and-select", persist_result=False, cache_policy=NO_CACHE,
      **TRANSIENT_RETRIES)
def retrieve_and_select(workspace: str | None, name: str, query_emb: np.ndarray, k: int,
                        n: int, lam: float, strategy: str, seed: int,
                        min_gain: float | None, nprobe: int | None) -> dict:
    reader = CorpusReader(workspace, name)
    bar = tqdm(total=len(query_emb), desc=f"select {strategy}", unit="prompt",
               file=sys.stderr, dynamic_ncols=True)
    try:
        return select_for_queries(reader, CorpusPaths(workspace, name), query_emb, k=k, n=n,
                                  lam=lam, strategy=strategy, seed=seed, min_gain=min_gain,
                                  nprobe=nprobe, progress=bar.update)
    finally:
        bar.close()


def comparable_curves(dbf, name: str, queries: str, k: int, n: int, lam: float) -> dict:
    """Mean posterior variance per rank for the latest run of each strategy on the same
    corpus, prompt file, K, N and lam (so a plot can put them side by side)."""
    rows = db.query(dbf, """
        WITH latest AS (
            SELECT run_id, params->>'strategy' AS strategy,
                   row_number() OVER (PARTITION BY params->>'strategy'
                                      ORDER BY finished_at DESC) AS r
            FROM runs
            WHERE flow = 'select' AND status = 'completed' AND params->>'name' = ?
              AND params->>'queries' = ? AND (params->>'k')::INT = ?
              AND (params->>'n')::INT = ? AND abs((params->>'lam')::DOUBLE - ?) < 1e-12)
        SELECT l.strategy, t.rank, avg(t.posterior_variance)
        FROM latest l JOIN test_time_selections t USING (run_id)
        WHERE l.r = 1 GROUP BY ALL ORDER BY 1, 2""", [name, queries, k, n, lam])
    curves: dict[str, list[float]] = {}
    for strategy, _rank, mean in rows:
        curves.setdefault(strategy, []).append(mean)
    return {s: np.array(v) for s, v in curves.items()}


@flow(name="select", log_prints=True)
def select_flow(
    name: str,
    queries: str,
    workspace: str | None = None,
    k: int = 200,
    n: int = 50,
    lam: float = 0.01,
    strategy: str = "sift",
    seed: int = 0,
    min_gain: float | None = None,
    nprobe: int | None = None,
    run_id: str | None = None,
) -> dict:
    """For each prompt in ``queries``, retrieve ``k`` candidate chunks from corpus ``name``
    and choose ``n`` with ``strategy``; write them to ``test_time_selections``."""
    logger = get_run_logger()
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if lam <= 0:
        raise ValueError(f"lam must be > 0 (got {lam})")
    queries = str(Path(queries).expanduser().resolve())
    params = {"name": name, "queries": queries, "k": k, "n": n, "lam": lam,
              "strategy": strategy, "seed": seed, "min_gain": min_gain, "nprobe": nprobe}
    rid = make_run_id("select", params, run_id)
    dbf = db_path(workspace)
    manifest = CorpusPaths(workspace, name).load_manifest()
    with tracked_run(dbf, rid, "select", params) as rec:
        q = load_queries(queries)
        logger.info("%d prompts from %s; corpus %s has %s chunks", len(q.ids), queries, name,
                    manifest.get("n_chunks"))
        emb = embed_queries(q.texts, manifest["model"], manifest["max_tokens"])
        result = retrieve_and_select(workspace, name, emb, k, n, lam, strategy, seed,
                                     min_gain, nprobe)
        rows = selection_rows(rid, strategy, q.ids, result)
        db.replace_run_rows(dbf, "test_time_selections", rid, rows)
        final = result["variances"][:, -1]
        picks = result["picks"]
        distinct = np.mean([len(set(r[r >= 0].tolist())) for r in picks])
        rec.summary = {
            "prompts": len(q.ids), "rows": rows.num_rows,
            "mean_prior_variance": float(result["prior"].mean()),
            "mean_final_variance": float(final.mean()),
            "mean_distinct_picks": float(distinct),
            "mean_similarity": float(np.nanmean(result["similarity"])),
        }
    summary = rec.summary
    curves = comparable_curves(dbf, name, queries, k, n, lam)
    plot = variance_curves(curves, reports_dir(workspace, rid) / "posterior_variance.png",
                           f"{name}: K={k}, N={n}, lam={lam}")
    logger.info("%s: mean posterior variance %.4f -> %.4f after %d picks; plot %s", strategy,
                summary["mean_prior_variance"], summary["mean_final_variance"], n, plot)
    others = {s: float(c[-1]) for s, c in curves.items()}
    artifacts.markdown(
        f"select-{name}-{strategy}",
        f"# Test-time selection `{rid}`\n\n"
        f"Corpus `{name}`, prompts `{queries}`, strategy **{strategy}**, K={k}, N={n}, "
        f"lam={lam}.\n\n" + artifacts.md_table([summary]) + "\n\n"
        "Mean posterior variance after N picks, latest run of each strategy on the same "
        "inputs:\n\n" + artifacts.md_table([others]) + f"\n\nPlot: `{plot}`\n\n"
        f"```sql\nSELECT * FROM test_time_selections WHERE run_id = '{rid}';\n```",
        description=f"selection run {rid}",
    )
    return {"run_id": rid, "plot": str(plot), **summary}
