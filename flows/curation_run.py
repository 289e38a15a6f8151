"""Flow: the scheduled curation job, end to end.

embed the corpus' new shards (finished shards are skipped) -> index them -> rank the
instruction pool under the annotation budget -> hand the chosen strategy's selection to
annotators. Each step is its own subflow with its own run id in ``runs``, so a failed
night can be rerun as a whole: every step resumes or replaces, nothing doubles.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.embed import embed_flow
from flows.handoff import handoff_flow
from flows.index import index_flow
from flows.rank import rank_flow
from tasks import artifacts
from tasks.workspace import workspace_root


@flow(name="curation-run", log_prints=True)
def curation_run_flow(
    corpus: str,
    name: str,
    pool: str,
    pool_name: str,
    budget: float,
    unit: str = "items",
    strategies: list[str] | None = None,
    handoff_strategy: str = "facility_location",
    handoff_format: str = "labelstudio",
    allocation: str = "proportional",
    batch_size: int | None = None,
    targets: str | None = None,
    lm: str | None = None,
    factory: str = "auto",
    shard_docs: int = 2000,
    ray_address: str | None = None,
    workspace: str | None = None,
) -> dict:
    """Embed ``corpus`` into corpus ``name``, index it, rank ``pool`` with ``strategies``
    (default: random + facility_location) under ``budget`` ``unit``, and write the
    handoff files of ``handoff_strategy`` as ``handoff_format`` under
    ``<workspace>/handoff``. Returns the run ids and the handoff manifest."""
    logger = get_run_logger()
    strategies = list(strategies or ["random", "facility_location"])
    if handoff_strategy not in strategies:
        raise ValueError(f"handoff_strategy {handoff_strategy!r} is not among the strategies "
                         f"ranked ({', '.join(strategies)})")
    ws = str(workspace_root(workspace))
    embedded = embed_flow(corpus=corpus, name=name, workspace=ws, shard_docs=shard_docs,
                          ray_address=ray_address)
    logger.info("embed: %d new shards, %d skipped", embedded["shards_written"],
                embedded["shards_skipped"])
    indexed = index_flow(name=name, workspace=ws, factory=factory, ray_address=ray_address)
    ranked = rank_flow(pool=pool, pool_name=pool_name, budget=budget, unit=unit,
                       strategies=strategies, targets=targets, allocation=allocation,
                       batch_size=batch_size, lm=lm, corpus=name, ray_address=ray_address,
                       workspace=ws)
    handed = handoff_flow(run=ranked["run_id"], format=handoff_format,
                          strategy=handoff_strategy, force=True, workspace=ws)
    result = {"embed_run": embedded["run_id"], "index_run": indexed["run_id"],
              "rank_run": ranked["run_id"], "handoff": handed}
    artifacts.markdown(
        "curation-run",
        f"# Curation run\n\n- corpus `{name}`: {embedded['chunks_total']} chunks "
        f"({embedded['shards_written']} new shards)\n- index run `{indexed['run_id']}`\n"
        f"- pool `{pool_name}` ranked in run `{ranked['run_id']}` with "
        f"{', '.join(strategies)} under {budget:g} {unit}\n"
        f"- handoff ({handoff_format}, {handoff_strategy}): `{handed['folder']}`\n",
        description="nightly curation",
    )
    return result
