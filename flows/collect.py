"""Flow ``collect``: pull the annotations of Label Studio projects that ``handoff --to
label-studio`` filled back into DuckDB (``annotations``), so budgets count what was done and
the next ``rank`` of the pool treats those items as labelled.

Which projects: those recorded in ``labelstudio_tasks`` for a rank run (``run``), a project
title (``project``) or a pool (``pool_name``, what a curation job collects before it
ranks). The token comes from ``LABEL_STUDIO_API_KEY``; ``url`` overrides the recorded
server address (a server that moved).

Tasks: :mod:`tasks.annotation.steps`; parameters: :class:`flows.params.CollectParams`.
"""

from __future__ import annotations

from prefect import flow

from flows.params import CollectParams
from tasks.annotation.steps import collect_annotations

_D = CollectParams.default


@flow(name="collect", log_prints=True)
def collect_flow(
    run: str | None = _D("run"),
    project: str | None = _D("project"),
    pool_name: str | None = _D("pool_name"),
    url: str | None = _D("url"),
    workspace: str | None = None,
    missing_ok: bool = _D("missing_ok"),
) -> dict:
    """Upsert every annotation of the chosen projects into ``annotations`` (edited ones
    replace their row, deleted ones are marked). ``missing_ok``: nothing recorded to collect
    is not an error (a curation job before its first handoff)."""
    p = CollectParams.of(locals())
    return collect_annotations(workspace, p.run, p.project, p.pool_name, p.url, p.missing_ok)
