"""The curation job's summary artifact: what each step did and what was new."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.reporting import artifacts


@task(name="curation-artifact", persist_result=False, cache_policy=NO_CACHE)
def curation_artifact(job: dict[str, Any], embedded: dict, indexed: dict, ranked: dict,
                      handed: dict, new: dict, annotated: int) -> None:
    """One row per step (run id, what was new, the total) for the job ``job`` (the
    :class:`flows.jobs.CurationJob` fields)."""
    rows = [
        {"step": "embed", "run": embedded["run_id"], "new": f"{new['shards']} shards",
         "total": f"{embedded['chunks_total']} chunks"},
        {"step": "index", "run": indexed["run_id"], "new": f"{new['vectors']} vectors",
         "total": f"{indexed['n_vectors']} vectors"},
        {"step": "rank", "run": ranked["run_id"], "new": f"{new['pool_items']} pool items",
         "total": f"{ranked['items']} items"},
        {"step": "handoff", "run": ranked["run_id"],
         "new": (f"{handed['imported']} tasks imported" if job['handoff_to'] == "label-studio"
                 else "replaced"),
         "total": f"{handed['n_items']} items in {handed['n_batches']} "
                  + ("batch(es)" if job['handoff_to'] == "label-studio" else "file(s)")},
    ]
    artifacts.markdown(
        "curation-run",
        f"# Curation run: `{job['corpus_name']}` / `{job['pool_name']}`\n\n"
        f"Ranked with {', '.join(job['strategies'])} under {job['budget']:g} {job['unit']}; "
        f"`{job['handoff_strategy']}` handed off to "
        f"`{handed.get('folder') or handed.get('project_url')}`; {annotated} items "
        "annotated in Label Studio counted as labelled.\n\n" + artifacts.md_table(rows)
        + f"\n\nLM scored {new['lm_scored']} items and {new['prompts_embedded']} prompts "
        "were embedded (the others came from the pool's cache).\n",
        description="curation run: what was new",
    )
