"""The Prefect tasks of the ``select`` flow, beside the search and selection they wrap
(:mod:`tasks.index.search_service`, :mod:`tasks.selection.select`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.index.search_service import SearchService
from tasks.reporting import artifacts
from tasks.reporting.plots import variance_curves
from tasks.runtime.progress import progress_bar
from tasks.runtime.retry import TRANSIENT_RETRIES
from tasks.runtime.workspace import CorpusPaths, db_path, reports_dir
from tasks.selection.select import (
    DEFAULT_ALPHA,
    DEFAULT_DUP_THRESHOLD,
    iter_query_blocks,
    select_block,
    selection_rows,
)
from tasks.storage import db


@task(name="retrieve-and-select", persist_result=False, cache_policy=NO_CACHE,
      **TRANSIENT_RETRIES)
def retrieve_and_select(workspace: str | None, name: str, rows_dir: str, run_id: str,
                        queries: str | None, query_embeddings: str | None, k: int, n: int,
                        lam: float, strategy: str, seed: int, min_gain: float | None,
                        nprobe: int | None, rerank_factor: int | None, block: int,
                        ray_address: str | None,
                        dup_threshold: float = DEFAULT_DUP_THRESHOLD,
                        alpha: float = DEFAULT_ALPHA) -> dict:
    """Stream the prompts through the search service in blocks; each block's rows go to
    ``rows_dir/part-NNNNN.parquet`` (so memory is bounded by the block)."""
    import torch

    logger = get_run_logger()
    paths = CorpusPaths(workspace, name)
    manifest = paths.load_manifest()
    out = Path(rows_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    if query_embeddings:
        from tasks.index.query_embeddings import count_query_embeddings, iter_query_embeddings

        meta_dim = int(manifest["dim"])
        total = count_query_embeddings(query_embeddings)
        blocks = iter_query_embeddings(query_embeddings, meta_dim, block=block)
    else:
        encoder = _encoder(manifest)
        total = None
        blocks = ((q.ids, encoder.encode(q.texts)) for q in iter_query_blocks(queries, block))
    stats = {"prompts": 0, "rows": 0, "prior": 0.0, "final": 0.0, "distinct": 0.0,
             "similarity": 0.0, "n_similarity": 0, "picks": 0}
    with progress_bar(f"select {strategy}", "prompt", total) as bar, \
            SearchService(paths, nprobe=nprobe, rerank_factor=rerank_factor,
                          ray_address=ray_address) as service:
        logger.info("search service for %s: %s", name, service.settings())
        for i, (ids, emb) in enumerate(blocks):
            res = select_block(service, emb, k=k, n=n, lam=lam, strategy=strategy,
                               generator=gen, min_gain=min_gain,
                               dup_threshold=dup_threshold, alpha=alpha)
            rows = selection_rows(run_id, strategy, ids, res)
            pq.write_table(rows, out / f"part-{i:05d}.parquet")
            picks = res["picks"]
            stats["prompts"] += len(ids)
            stats["rows"] += rows.num_rows
            stats["prior"] += float(res["prior"].sum())
            stats["final"] += float(res["variances"][:, -1].sum())
            stats["distinct"] += float(sum(len(set(r[r >= 0].tolist())) for r in picks))
            sim = res["similarity"][np.isfinite(res["similarity"])]
            stats["similarity"] += float(sim.sum())
            stats["n_similarity"] += int(sim.size)
            stats["picks"] += int((picks >= 0).sum())
            bar.update(len(ids))
        settings = service.settings()
    p = max(stats["prompts"], 1)
    return {"prompts": stats["prompts"], "rows": stats["rows"],
            "mean_prior_variance": stats["prior"] / p,
            "mean_final_variance": stats["final"] / p,
            "mean_distinct_picks": stats["distinct"] / p,
            "mean_picks": stats["picks"] / p,
            "mean_similarity": stats["similarity"] / max(stats["n_similarity"], 1),
            **{f"search_{k}": v for k, v in settings.items()}}


def _encoder(manifest: dict):
    from sift_ops.embedding import TextEncoder

    model = manifest.get("model")
    if not model or model == "external" or (manifest.get("origin") == "import"
                                            and not Path(str(model)).is_dir()):
        raise ValueError(
            f"corpus {manifest.get('name')!r} was imported without an encoder (model "
            f"{model!r}): pass prompts already embedded with --query-embeddings, or import "
            "with --model pointing at the encoder folder"
        )
    return TextEncoder(model, max_tokens=manifest.get("max_tokens"))


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


@task(name="write-selections", persist_result=False, cache_policy=NO_CACHE)
def write_selections(workspace: str | None, rid: str, rows_dir: str, summary: dict,
                     strategy: str, n: int) -> None:
    """Replace the run's ``test_time_selections`` rows with the block files in
    ``rows_dir`` (one transaction), then remove the folder."""
    dbf = db_path(workspace)
    rows_dir = Path(rows_dir)
    if summary["rows"]:
        db.replace_run_rows(dbf, "test_time_selections", rid,
                            str(rows_dir / "*.parquet"))
    else:
        db.replace_run_rows(dbf, "test_time_selections", rid,
                            selection_rows(rid, strategy, [], {"picks": np.zeros(
                                (0, n), np.int64), "variances": np.zeros((0, n)),
                                "similarity": np.zeros((0, n))}))
    shutil.rmtree(rows_dir, ignore_errors=True)


@task(name="selection-report", persist_result=False, cache_policy=NO_CACHE)
def selection_report(workspace: str | None, rid: str, name: str, source: str, summary: dict,
                     strategy: str, k: int, n: int, lam: float) -> str:
    """The posterior-variance plot (this run beside the latest run of each other strategy
    on the same inputs) and the Markdown artifact; returns the plot's path."""
    logger = get_run_logger()
    dbf = db_path(workspace)
    curves = comparable_curves(dbf, name, source, k, n, lam)
    plot = variance_curves(curves, reports_dir(workspace, rid) / "posterior_variance.png",
                           f"{name}: K={k}, N={n}, lam={lam}")
    logger.info("%s: mean posterior variance %.4f -> %.4f after %d picks; plot %s", strategy,
                summary["mean_prior_variance"], summary["mean_final_variance"], n, plot)
    others = {s: float(c[-1]) for s, c in curves.items()}
    artifacts.markdown(
        f"select-{name}-{strategy}",
        f"# Test-time selection `{rid}`\n\n"
        f"Corpus `{name}`, prompts `{source}`, strategy **{strategy}**, K={k}, N={n}, "
        f"lam={lam}.\n\n" + artifacts.md_table([summary]) + "\n\n"
        "Mean posterior variance after N picks, latest run of each strategy on the same "
        "inputs:\n\n" + artifacts.md_table([others]) + f"\n\nPlot: `{plot}`\n\n"
        f"```sql\nSELECT * FROM test_time_selections WHERE run_id = '{rid}';\n```",
        description=f"selection run {rid}",
    )
    return str(plot)
