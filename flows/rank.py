"""Flow ``rank``: choose which instructions of an unlabeled pool to annotate.

    ingest (validate, quarantine, dedupe; pool_items)
      -> LM uncertainty, only if a strategy / the allocation / a token budget needs it
      -> prompt embeddings, only for diversity strategies (and SIFT's targets)
      -> per strategy: budget allocation per source, selection, annotation batches
      -> item_scores, selections, budgets rows; plots; a Markdown artifact

The tasks are in :mod:`tasks.pool.steps`; the parameters are :class:`flows.params.RankParams`.
"""

from __future__ import annotations

from prefect import flow

from flows.params import RankParams
from sift_ops.pool_strategies import needs_embeddings, needs_lm
from sift_ops.uncertainty import UNCERTAINTY_KEYS
from tasks.pool.steps import (
    aligned_embeddings,
    aligned_scores,
    embed_pool_prompts,
    embed_targets,
    encoder_for,
    ingest_pool,
    load_pool_state,
    pool_costs,
    rank_artifact,
    rank_plots,
    rank_summary,
    score_pool_uncertainty,
    select_for_annotation,
    write_rank_rows,
)
from tasks.runtime.workspace import check_name, db_path
from tasks.storage.runs import make_run_id, tracked_run

_D = RankParams.default


@flow(name="rank", log_prints=True)
def rank_flow(
    pool: str,
    pool_name: str,
    budget: float,
    unit: str = _D("unit"),
    strategies: list[str] | None = None,
    targets: str | None = _D("targets"),
    allocation: str = _D("allocation"),
    batch_size: int | None = _D("batch_size"),
    lm: str | None = _D("lm"),
    max_new_tokens: int = _D("max_new_tokens"),
    uncertainty_metric: str = _D("uncertainty_metric"),
    corpus: str | None = _D("corpus"),
    encoder: str | None = _D("encoder"),
    strict: bool = _D("strict"),
    seed: int = _D("seed"),
    knn: int = _D("knn"),
    lam: float = _D("lam"),
    gen_batch_size: int = _D("gen_batch_size"),
    actors: int = _D("actors"),
    trust_remote_code: bool = _D("trust_remote_code"),
    ray_address: str | None = _D("ray_address"),
    workspace: str | None = None,
    run_id: str | None = None,
) -> dict:
    """Rank the unlabeled pool ``pool`` (JSONL/Parquet/CSV) with each strategy under
    ``budget`` (``unit`` items or tokens), write pool_items, item_scores, selections,
    budgets and quarantine rows, plots and an artifact.  See ``sift-curate rank --help``."""
    p = RankParams.of(locals())
    check_name(p.pool_name, "pool name")
    rid = make_run_id("rank", p.run_key(), run_id)
    with tracked_run(db_path(workspace), rid, "rank", p.run_key()) as rec:
        ingested = ingest_pool(p.pool, p.pool_name, workspace, rid, p.strict)
        state = load_pool_state(ingested, p.pool, p.pool_name, workspace)
        lm_table, lm_stats = None, {}
        if needs_lm(p.strategies, p.allocation) or state.needs_lm_costs(p.unit):
            lm_table, lm_stats = score_pool_uncertainty(
                state.parquet, p.pool_name, p.lm, workspace, p.max_new_tokens,
                p.gen_batch_size, p.actors, p.trust_remote_code, p.ray_address)
        scores = aligned_scores(state, lm_table)
        scores["cost"] = costs = pool_costs(state, scores, p.unit)
        emb, target_emb, emb_stats = None, None, {}
        if needs_embeddings(p.strategies):
            model, max_tokens = encoder_for(p.corpus, p.encoder, workspace)
            table, emb_stats = embed_pool_prompts(state.parquet, p.pool_name, workspace,
                                                  model, max_tokens, p.ray_address)
            emb = aligned_embeddings(state, table)
            if p.targets and ("sift" in p.strategies or "nn-f" in p.strategies):
                target_emb = embed_targets(p.targets, model, max_tokens)
        results = select_for_annotation(
            p.strategies, emb, {k: scores[k] for k in UNCERTAINTY_KEYS if k in scores},
            costs, state.groups, state.labeled, p.budget, p.allocation, target_emb,
            p.uncertainty_metric, p.batch_size, p.seed, p.knn, p.lam)
        bud_rows = write_rank_rows(workspace, rid, p.pool_name, state, scores, results,
                                   p.budget, p.unit)
        plots = rank_plots(workspace, rid, p.pool_name, state, scores, emb, results,
                           bud_rows, p.budget, p.unit, p.allocation)
        rec.summary = rank_summary(state, p.strategies, results, lm_stats, emb_stats)
    rank_artifact(rid, p.pool_name, p.budget, p.unit, p.allocation, rec.summary, bud_rows,
                  plots, lm_stats)
    return {"run_id": rid, "plots": plots, **rec.summary}
