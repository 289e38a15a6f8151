"""Flow: the scheduled curation job, end to end.

(bundled sample, first run only) -> embed the corpus' new shards -> index the new vectors
-> rank the instruction pool under the annotation budget -> hand the chosen strategy's
selection to annotators. Each step is its own subflow with its own run id in ``runs``, so
a failed night can be rerun as a whole: every step resumes or replaces, nothing doubles.
On unchanged inputs a rerun embeds and indexes nothing and replaces its rows and files;
the artifact counts what was new (shards, vectors, pool items).

The parameters are those of :class:`flows.jobs.CurationJob` (the same names, types and
defaults; a test holds them together), so a deployment or a cron run with no parameters
curates the bundled sample.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.collect import collect_flow
from flows.embed import embed_flow
from flows.handoff import handoff_flow
from flows.index import index_flow
from flows.jobs import (
    Allocation,
    CurationJob,
    HandoffFormat,
    HandoffTo,
    Strategy,
    Unit,
    validate_job,
)
from flows.rank import rank_flow
from flows.sample import sample_flow
from tasks.reporting.curation import curation_artifact
from tasks.runtime.workspace import workspace_root
from tasks.sample.bundled import read_sample

_D = CurationJob()  # the defaults, from the one model


@flow(name="curation-run", log_prints=True)
def curation_run_flow(
    corpus: str | None = _D.corpus,
    corpus_name: str = _D.corpus_name,
    pool: str | None = _D.pool,
    pool_name: str = _D.pool_name,
    budget: float = _D.budget,
    unit: Unit = _D.unit,
    strategies: list[Strategy] | None = None,  # type: ignore[valid-type]
    handoff_strategy: Strategy = _D.handoff_strategy,  # type: ignore[valid-type]
    handoff_format: HandoffFormat = _D.handoff_format,
    allocation: Allocation = _D.allocation,  # type: ignore[valid-type]
    batch_size: int | None = _D.batch_size,
    targets: str | None = _D.targets,
    lm: str | None = _D.lm,
    factory: str = _D.factory,
    memory_budget: str = _D.memory_budget,
    target_recall: float = _D.target_recall,
    shard_docs: int | None = _D.shard_docs,
    ray_address: str | None = _D.ray_address,
    handoff_to: HandoffTo = _D.handoff_to,
    label_studio_url: str | None = _D.label_studio_url,
    label_studio_project: str | None = _D.label_studio_project,
    collect_first: bool = _D.collect_first,
    workspace: str | None = None,
) -> dict:
    """Curate one job (see :class:`flows.jobs.CurationJob` for every parameter): embed
    ``corpus`` into ``corpus_name``, index it, rank ``pool`` with ``strategies`` under
    ``budget`` ``unit`` and write ``handoff_strategy``'s selection as ``handoff_format``
    under ``<workspace>/handoff``. Returns the run ids, the counts of new data and the
    handoff manifest."""
    logger = get_run_logger()
    params = {k: v for k, v in locals().items() if k in CurationJob.model_fields}
    if params["strategies"] is None:
        params.pop("strategies")
    job = validate_job(params)
    ws = str(workspace_root(workspace))
    corpus_in, pool_in = job.corpus, job.pool
    if job.uses_sample:
        sample = _bundled_sample(ws)
        corpus_in = corpus_in or sample["pile_dir"]
        pool_in = pool_in or sample["pool"]
    embedded = embed_flow(corpus=corpus_in, name=job.corpus_name, workspace=ws,
                          shard_docs=job.effective_shard_docs(), ray_address=job.ray_address)
    indexed = index_flow(name=job.corpus_name, workspace=ws, factory=job.factory,
                         memory_budget=job.memory_budget, target_recall=job.target_recall,
                         ray_address=job.ray_address)
    collected = None
    if job.collect_first:
        collected = collect_flow(pool_name=job.pool_name, url=job.label_studio_url,
                                 workspace=ws, missing_ok=True)
    ranked = rank_flow(pool=pool_in, pool_name=job.pool_name, budget=job.budget,
                       unit=job.unit, strategies=list(job.strategies), targets=job.targets,
                       allocation=job.allocation, batch_size=job.batch_size, lm=job.lm,
                       corpus=job.corpus_name, ray_address=job.ray_address, workspace=ws)
    if job.handoff_to == "label-studio":
        # a rerun imports nothing twice; no --force: annotators may be at work on the tasks
        handed = handoff_flow(run=ranked["run_id"], strategy=job.handoff_strategy,
                              workspace=ws, to="label-studio", url=job.label_studio_url,
                              project=job.label_studio_project)
    else:
        handed = handoff_flow(run=ranked["run_id"], format=job.handoff_format,
                              strategy=job.handoff_strategy, force=True, workspace=ws)
    new = {"shards": embedded["shards_written"], "vectors": indexed["new_vectors"],
           "pool_items": ranked["new_items"], "lm_scored": ranked.get("lm_scored", 0),
           "prompts_embedded": ranked.get("prompts_embedded", 0)}
    logger.info("new since the last run: %d shards, %d vectors, %d pool items (%d LM-scored, "
                "%d prompts embedded)", new["shards"], new["vectors"], new["pool_items"],
                new["lm_scored"], new["prompts_embedded"])
    result = {"embed_run": embedded["run_id"], "index_run": indexed["run_id"],
              "rank_run": ranked["run_id"], "new": new, "handoff": handed,
              "annotated": ranked.get("annotated", 0)}
    if collected is not None:
        result["collected"] = {k: v for k, v in collected.items() if k != "projects"}
    curation_artifact(job.model_dump(), embedded, indexed, ranked, handed, new,
                      result["annotated"])
    return result


def _bundled_sample(workspace: str) -> dict[str, str]:
    """The bundled sample in ``<workspace>/sample``: built on the first run (a subflow),
    then read from its ``sample.json`` (written last, so present means complete)."""
    folder = Path(workspace) / "sample"
    found = read_sample(folder)
    if found is None:
        found = sample_flow(out=str(folder))["paths"]
    return found
