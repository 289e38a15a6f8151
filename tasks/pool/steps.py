"""The Prefect tasks of the ``rank`` flow, beside the pool I/O they wrap.

    ingest_pool                 stream + validate + dedupe the pool (tasks.pool.items)
    load_pool_state             the small columns, labelled / annotated items, groups, costs
    score_pool_uncertainty      LM uncertainty, cached per pool (Ray stage, tasks.pool.lm_scoring)
    embed_pool_prompts          prompt embeddings, cached per pool (Ray stage)
    select_for_annotation       each strategy under the budget (sift_ops.pool_strategies)
    write_rank_rows             item_scores, selections, budgets (one transaction per table)
    rank_plots, rank_artifact   PNGs and the Markdown artifact
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sift_ops.budget import item_costs
from sift_ops.generation import SCORE_KEYS
from sift_ops.pool_strategies import rank_items
from sift_ops.uncertainty import UNCERTAINTY_KEYS
from tasks.annotation.annotations import annotated_items
from tasks.pool.cache import cache_path, cached_compute, model_fingerprint
from tasks.pool.items import (
    IngestResult,
    count_new_items,
    ingest_pool_files,
    pool_dir,
    read_item_columns,
    read_targets,
    store_pool,
)
from tasks.pool.lm_scoring import embed_pool, score_pool
from tasks.reporting import artifacts
from tasks.reporting.rank_plots import budget_bars, score_distributions, selection_map
from tasks.runtime.progress import new_bar, progress_bar
from tasks.runtime.workspace import CorpusPaths, db_path, reports_dir, workspace_root
from tasks.storage import db


@task(name="ingest-pool", persist_result=False, cache_policy=NO_CACHE)
def ingest_pool(pool: str, pool_name: str, workspace: str | None, run_id: str,
                strict: bool) -> IngestResult:
    """Stream the pool into ``<workspace>/pools/<pool_name>/items.parquet`` (and
    quarantine.parquet), then load both into DuckDB from those files: bounded memory
    whatever the pool's size (see :func:`tasks.pool.items.ingest_pool_files`)."""
    logger = get_run_logger()
    p = ingest_pool_files(pool, pool_dir(workspace, pool_name), strict=strict)
    p.n_new = count_new_items(db_path(workspace), pool_name, p.items_path)
    store_pool(db_path(workspace), run_id, pool_name, p)
    logger.info("pool %s: %d rows in %d file(s) -> %d items (%d new since the last rank, "
                "%d already labelled), %d exact duplicates collapsed, %d rows quarantined",
                pool_name, p.n_rows, len(p.files), p.n_items, p.n_new, p.n_labeled,
                p.n_duplicates, p.n_quarantined)
    for q in p.examples:
        logger.warning("quarantined %s:%d: %s", q["file"], q["line"], q["reason"])
    if p.n_quarantined > len(p.examples):
        logger.warning("... %d more quarantined rows: SELECT * FROM quarantine WHERE run_id = "
                       "'%s'", p.n_quarantined - len(p.examples), run_id)
    if p.n_items - p.n_labeled == 0:
        raise ValueError(f"pool {pool!r} has no unlabelled items to rank "
                         f"({p.n_quarantined} rows quarantined, {p.n_labeled} labelled)")
    return p


@dataclass
class PoolState:
    """What ranking needs of an ingested pool, item by item (arrays of length n_items):
    ids, groups (``source``), which are labelled (given outputs, or annotated in Label
    Studio and collected), and the costs given in the pool (NaN where none)."""

    ingest: IngestResult
    parquet: str
    item_ids: pa.Array
    groups: np.ndarray
    labeled: np.ndarray
    given_cost: np.ndarray
    n_annotated: int

    @property
    def unlabeled(self) -> np.ndarray:
        return ~self.labeled

    @property
    def n(self) -> int:
        return len(self.labeled)

    def needs_lm_costs(self, unit: str) -> bool:
        """Token costs need the LM's answer length where the pool gives no cost."""
        return unit == "tokens" and not bool(np.isfinite(self.given_cost[self.unlabeled]).all())


@task(name="load-pool-state", persist_result=False, cache_policy=NO_CACHE)
def load_pool_state(p: IngestResult, pool: str, pool_name: str, workspace: str | None
                    ) -> PoolState:
    """Only the small columns of the ingested pool (the texts stay on disk for the Ray
    stages to stream); annotations collected from Label Studio make their items labelled
    too: never selected again, and already-chosen context for diversity and SIFT."""
    logger = get_run_logger()
    items = read_item_columns(str(p.items_path))
    labeled = items.column("labeled").to_numpy(zero_copy_only=False).astype(bool)
    annotated = annotated_items(db_path(workspace), pool_name)
    n_annotated = 0
    if annotated:
        ann = pc.is_in(items.column("item_id"),
                       value_set=pa.array(annotated, pa.string())).to_numpy(
                           zero_copy_only=False).astype(bool)
        n_annotated = int((ann & ~labeled).sum())
        labeled = labeled | ann
        logger.info("%d items of pool %s annotated in Label Studio (collected) count as "
                    "labelled", n_annotated, pool_name)
        if labeled.all():
            raise ValueError(f"pool {pool!r} has no unlabelled items left to rank "
                             f"({n_annotated} annotated, {p.n_labeled} labelled)")
    return PoolState(
        ingest=p, parquet=str(p.items_path), item_ids=items.column("item_id"),
        groups=np.asarray(items.column("source").to_pylist(), dtype=object),
        labeled=labeled,
        given_cost=items.column("cost").to_numpy(zero_copy_only=False).astype(np.float64),
        n_annotated=n_annotated)


def aligned_scores(state: PoolState, table: pa.Table | None) -> dict[str, np.ndarray]:
    """The LM stage's per-item scores in pool order (NaN for items it did not score)."""
    if table is None:
        return {}
    pos = _align(state.item_ids, table)
    return {k: np.where(pos >= 0, table.column(k).to_numpy(zero_copy_only=False)[
        np.maximum(pos, 0)], np.nan) for k in SCORE_KEYS}


def pool_costs(state: PoolState, scores: dict[str, np.ndarray], unit: str) -> np.ndarray:
    """Cost of each item in ``unit``: 1 per item, or prompt + answer tokens (the pool's
    ``cost`` where given); labelled items cost 0 (never selected, not validated)."""
    if unit != "tokens":
        return np.ones(state.n)
    u = state.unlabeled
    costs = np.zeros(state.n)
    zeros = np.zeros(state.n)
    costs[u] = item_costs(scores.get("prompt_tokens", zeros)[u],
                          scores.get("gen_tokens", zeros)[u], given=state.given_cost[u])
    return costs


def aligned_embeddings(state: PoolState, table: pa.Table) -> np.ndarray:
    """[n_items, d] float32 prompt embeddings in pool order."""
    pos = _align(state.item_ids, table)
    values = pc.list_flatten(table.column("embedding")).to_numpy()
    return values.astype(np.float32).reshape(table.num_rows, -1)[pos]


@task(name="embed-target-prompts", persist_result=False, cache_policy=NO_CACHE)
def embed_targets(targets: str, model: str | None, max_tokens: int | None) -> np.ndarray:
    """[T, d] embeddings of the SIFT / NN-F target prompts, with the pool's encoder."""
    from sift_ops.embedding import TextEncoder

    texts = read_targets(targets)
    get_run_logger().info("SIFT toward %d target prompts from %s", len(texts), targets)
    return TextEncoder(model, max_tokens=max_tokens).encode(texts)


def encoder_for(corpus: str | None, encoder: str | None, workspace: str | None
                ) -> tuple[str | None, int | None]:
    """The corpus's encoder (so pool and corpus share an embedding space), else --encoder,
    else the bundled default."""
    if corpus:
        manifest = CorpusPaths(workspace, corpus).load_manifest()
        return manifest["model"], manifest.get("max_tokens")
    return encoder, None


@task(name="score-pool-uncertainty", persist_result=False, cache_policy=NO_CACHE)
def score_pool_uncertainty(parquet: str, pool_name: str, lm: str | None, workspace: str | None,
                           max_new_tokens: int, gen_batch_size: int, actors: int,
                           trust_remote_code: bool, ray_address: str | None
                           ) -> tuple[pa.Table, dict]:
    """LM uncertainty of every unlabelled item: from the pool's cache where the same item
    was scored by the same LM before, with the Ray LM stage for the others."""
    from tasks.runtime.models import resolve_lm_path

    logger = get_run_logger()
    # resolve (and, the first time, convert a GGUF) on the driver, once
    lm_path = resolve_lm_path(lm, workspace_root(workspace) / "models",
                              trust_remote_code=trust_remote_code)
    key = {**model_fingerprint(lm_path), "max_new_tokens": max_new_tokens}
    stats: dict[str, Any] = {"rows": 0, "seconds": 0.0, "items_per_s": 0.0}

    def compute(todo: str, n: int) -> pa.Table:
        with progress_bar("LM uncertainty", "item", n) as bar:
            table, st = score_pool(todo, lm_path, max_new_tokens=max_new_tokens,
                                   gen_batch_size=gen_batch_size, actors=actors,
                                   progress=bar.update, ray_address=ray_address)
        stats.update(st)
        return table

    table, n_new = cached_compute(parquet, cache_path(pool_dir(workspace, pool_name), "lm",
                                                      key), compute, unlabeled_only=True)
    stats.update(lm=lm_path, scored=n_new, cached=table.num_rows - n_new)
    if n_new:
        logger.info("LM %s: scored %d new items in %.1f s (%.2f items/s, max %d new tokens); "
                    "%d from the cache", lm_path, stats["rows"], stats["seconds"],
                    stats["items_per_s"], max_new_tokens, stats["cached"])
    else:
        logger.info("LM %s: all %d items' scores from the cache", lm_path, table.num_rows)
    return table, stats


@task(name="embed-pool-prompts", persist_result=False, cache_policy=NO_CACHE)
def embed_pool_prompts(parquet: str, pool_name: str, workspace: str | None, model: str | None,
                       max_tokens: int | None, ray_address: str | None
                       ) -> tuple[pa.Table, dict]:
    """Prompt embeddings of every item (labelled ones too), cached per pool like the LM
    scores."""
    logger = get_run_logger()
    key = {**model_fingerprint(model), "max_tokens": max_tokens}
    stats: dict[str, Any] = {"rows": 0, "seconds": 0.0, "rows_per_s": 0.0}

    def compute(todo: str, n: int) -> pa.Table:
        with progress_bar("embed prompts", "item", n) as bar:
            table, st = embed_pool(todo, model, max_tokens, progress=bar.update,
                                   ray_address=ray_address)
        stats.update(st)
        return table

    table, n_new = cached_compute(parquet, cache_path(pool_dir(workspace, pool_name),
                                                      "embedding", key), compute,
                                  unlabeled_only=False)
    stats.update(embedded=n_new, cached=table.num_rows - n_new)
    logger.info("embedded %d new prompts in %.1f s (%.1f items/s); %d from the cache",
                n_new, stats["seconds"], stats["rows_per_s"], stats["cached"])
    return table, stats


@task(name="select-for-annotation", persist_result=False, cache_policy=NO_CACHE)
def select_for_annotation(strategies: list[str], emb, scores, costs, groups, labeled,
                          budget: float, allocation: str, targets, uncertainty_metric: str,
                          batch_size: int | None, seed: int, knn: int, lam: float
                          ) -> dict[str, Any]:
    """Each strategy's selection under the budget (the ranking itself: pure computation
    in :func:`sift_ops.pool_strategies.rank_items`), with its time."""
    logger = get_run_logger()
    out = {}
    for s in new_bar("strategies", iterable=strategies):
        t0 = time.perf_counter()
        r = rank_items(s, emb, scores, costs, groups, budget, allocation=allocation,
                       labeled=labeled, targets=targets, uncertainty_metric=uncertainty_metric,
                       batch_size=batch_size, seed=seed, knn=knn, lam=lam)
        secs = time.perf_counter() - t0
        out[s] = (r, secs)
        logger.info("%s: %d items, spent %.0f of %.0f (%s) in %.2f s", s, len(r.index),
                    r.spent.sum(), r.allocated.sum(), allocation, secs)
    return out


@task(name="write-rank-rows", persist_result=False, cache_policy=NO_CACHE)
def write_rank_rows(workspace: str | None, rid: str, pool_name: str, state: PoolState,
                    scores: dict[str, np.ndarray], results: dict[str, Any], budget: float,
                    unit: str) -> list[dict[str, Any]]:
    """Replace the run's item_scores, selections and budgets rows; returns the budget rows
    (one per strategy and group)."""
    dbf = db_path(workspace)
    item_ids = state.item_ids.to_pylist()
    id_arr = np.asarray(item_ids, dtype=object)
    sel_parts, bud_rows = [], []
    for s, (r, _secs) in results.items():
        k = len(r.index)
        sel_parts.append(pa.table({
            "run_id": pa.array([rid] * k, pa.string()),
            "pool_name": pa.array([pool_name] * k, pa.string()),
            "item_id": pa.array(id_arr[r.index], pa.string()),
            "rank": pa.array(r.rank, pa.int32()),
            "strategy": pa.array([s] * k, pa.string()),
            "score": pa.array(r.score, pa.float64()),
            "batch": pa.array(r.batch, pa.int32()),
            "grp": pa.array(np.asarray(r.group_names, dtype=object)[r.group]
                            if k else [], pa.string()),
            "cost": pa.array(r.cost, pa.float64()),
        }))
        for g in r.group_table():
            bud_rows.append({"run_id": rid, "pool_name": pool_name, "strategy": s,
                             "grp": g["grp"], "unit": unit, "total": float(budget),
                             "allocated": g["allocated"], "spent": g["spent"],
                             "n_items": g["n_items"], "n_selected": g["n_selected"]})
    db.replace_run_rows(dbf, "item_scores", rid,
                        _score_rows(rid, pool_name, item_ids, scores, state.unlabeled))
    db.replace_run_rows(dbf, "selections", rid, pa.concat_tables(sel_parts))
    db.replace_run_rows(dbf, "budgets", rid, pa.Table.from_pylist(bud_rows))
    return bud_rows


@task(name="rank-plots", persist_result=False, cache_policy=NO_CACHE)
def rank_plots(workspace: str | None, rid: str, pool_name: str, state: PoolState,
               scores: dict[str, np.ndarray], emb: np.ndarray | None,
               results: dict[str, Any], bud_rows: list[dict[str, Any]], budget: float,
               unit: str, allocation: str) -> dict[str, str]:
    """Score distributions, the PCA map of the pool with each strategy's picks, and the
    budget per group, as PNGs under the run's report folder."""
    rep = reports_dir(workspace, rid)
    u = state.unlabeled
    plots = {}
    lm_scores = {k: scores[k][u] for k in (*UNCERTAINTY_KEYS, "gen_tokens") if k in scores}
    if lm_scores:
        plots["scores"] = str(score_distributions(
            lm_scores, rep / "score_distributions.png",
            f"{pool_name}: greedy-answer uncertainty ({int(u.sum())} items)"))
    if emb is not None:
        plots["map"] = str(selection_map(
            emb, state.groups.astype(str), {s: r.index for s, (r, _) in results.items()},
            rep / "selection_map.png", f"{pool_name}: pool (PCA) and selections"))
    plots["budget"] = str(budget_bars(bud_rows, rep / "budget_per_group.png",
                                      f"{pool_name}: budget {budget:g} {unit}, "
                                      f"{allocation} allocation", unit))
    return plots


def rank_summary(state: PoolState, strategies: list[str], results: dict[str, Any],
                 lm_stats: dict[str, Any], emb_stats: dict[str, Any]) -> dict[str, Any]:
    """The run's summary (the ``runs`` row and the flow's return value)."""
    p = state.ingest
    return {
        "pool_rows": p.n_rows, "items": state.n, "new_items": p.n_new,
        "labeled": int(state.labeled.sum()), "annotated": state.n_annotated,
        "lm_scored": lm_stats.get("scored", 0), "lm_cached": lm_stats.get("cached", 0),
        "prompts_embedded": emb_stats.get("embedded", 0),
        "duplicates": p.n_duplicates, "quarantined": p.n_quarantined,
        "strategies": strategies,
        "selected": {s: int(len(r.index)) for s, (r, _) in results.items()},
        "spent": {s: float(r.spent.sum()) for s, (r, _) in results.items()},
        "selection_seconds": {s: secs for s, (_, secs) in results.items()},
        "lm_items_per_s": lm_stats.get("items_per_s"),
        "lm_seconds": lm_stats.get("seconds"),
        "embed_items_per_s": emb_stats.get("rows_per_s"),
    }


def _align(ids: pa.Array, table: pa.Table) -> np.ndarray:
    """Row of ``table`` for each item id (-1 where missing)."""
    pos = pc.index_in(ids, value_set=table.column("item_id")).to_numpy(zero_copy_only=False)
    return np.where(np.isnan(pos.astype(float)), -1, pos).astype(np.int64)


def _score_rows(rid: str, pool_name: str, item_ids: list[str], scores: dict[str, np.ndarray],
                unlabeled: np.ndarray) -> pa.Table:
    """Long rows for item_scores: one per (unlabelled item, metric) with a finite value."""
    ids, metrics, values = [], [], []
    id_arr = np.asarray(item_ids, dtype=object)
    for k, v in scores.items():
        ok = unlabeled & np.isfinite(v)
        ids.append(id_arr[ok])
        metrics.append(np.full(int(ok.sum()), k, dtype=object))
        values.append(v[ok])
    n = sum(len(x) for x in ids)
    return pa.table({
        "run_id": pa.array([rid] * n, pa.string()),
        "pool_name": pa.array([pool_name] * n, pa.string()),
        "item_id": pa.array(np.concatenate(ids) if ids else [], pa.string()),
        "metric": pa.array(np.concatenate(metrics) if metrics else [], pa.string()),
        "value": pa.array(np.concatenate(values) if values else [], pa.float64()),
    })


@task(name="rank-artifact", persist_result=False, cache_policy=NO_CACHE)
def rank_artifact(rid: str, pool_name: str, budget: float, unit: str, allocation: str,
              summary: dict, bud_rows: list[dict], plots: dict, lm_stats: dict) -> None:
    per_strategy = [{"strategy": s, "selected": summary["selected"][s],
                     "spent": summary["spent"][s],
                     "seconds": round(summary["selection_seconds"][s], 3)}
                    for s in summary["strategies"]]
    lm_line = (f"- LM scoring: {lm_stats['scored']} new items in {lm_stats['seconds']:.1f} s "
               f"(**{lm_stats['items_per_s']:.2f} items/s**), {lm_stats['cached']} from the "
               f"pool's cache, `{lm_stats['lm']}`\n"
               if lm_stats else "- LM scoring: not needed by these strategies\n")
    artifacts.markdown(
        f"rank-{pool_name}",
        f"# Annotation ranking `{rid}`\n\n"
        f"Pool `{pool_name}`: {summary['pool_rows']} rows -> {summary['items']} items "
        f"(**{summary['new_items']} new** since the last rank, {summary['labeled']} already "
        f"labelled of which {summary['annotated']} annotated in Label Studio, "
        f"{summary['duplicates']} duplicates "
        f"collapsed, **{summary['quarantined']} quarantined**).\n\n"
        f"Budget **{budget:g} {unit}**, {allocation} allocation across sources.\n\n"
        + lm_line + "\n"
        + artifacts.md_table(per_strategy) + "\n\n### Budget per group\n\n"
        + artifacts.md_table([{k: r[k] for k in ("strategy", "grp", "n_items", "allocated",
                                                 "spent", "n_selected")} for r in bud_rows])
        + "\n\nPlots:\n\n" + "\n".join(f"- `{v}`" for v in plots.values())
        + f"\n\n```sql\nSELECT * FROM selected_for_annotation WHERE run_id = '{rid}' "
        "ORDER BY strategy, rank;\nSELECT * FROM budget_summary "
        f"WHERE run_id = '{rid}';\n```",
        description=f"rank run {rid}",
    )
