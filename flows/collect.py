"""Flow ``collect``: pull the annotations of Label Studio projects that ``handoff --to
label-studio`` filled back into DuckDB (``annotations``), so budgets count what was done and
the next ``rank`` of the pool treats those items as labelled.

Which projects: those recorded in ``labelstudio_tasks`` for a rank run (``run``), a project
title (``project``) or a pool (``pool_name``, what a curation job collects before it
ranks). The token comes from ``LABEL_STUDIO_API_KEY``; ``url`` overrides the recorded
server address (a server that moved).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from tasks.reporting import artifacts
from tasks.runtime.workspace import db_path
from tasks.storage import db


@flow(name="collect", log_prints=True)
def collect_flow(
    run: str | None = None,
    project: str | None = None,
    pool_name: str | None = None,
    url: str | None = None,
    workspace: str | None = None,
    missing_ok: bool = False,
) -> dict:
    """Upsert every annotation of the chosen projects into ``annotations`` (edited ones
    replace their row, deleted ones are marked). ``missing_ok``: nothing recorded to collect
    is not an error (a curation job before its first handoff)."""
    from tasks.annotation.annotations import collect_project, recorded_projects
    from tasks.annotation.labelstudio import LabelStudio, token_from_env

    logger = get_run_logger()
    if not (run or project or pool_name):
        raise ValueError("collect needs --run or --project (or a pool name)")
    dbf = db_path(workspace)
    if run and not (Path(dbf).is_file() and db.query(
            dbf, "SELECT count(*) FROM runs WHERE run_id = ?", [run])[0][0]):
        raise ValueError(f"no run {run!r} in {dbf} (see: sift-curate sql \"SELECT run_id, "
                         "flow, status FROM runs\")")
    targets = recorded_projects(dbf, run_id=run, project=project, pool_name=pool_name)
    what = " / ".join(f"{k} {v!r}" for k, v in (("run", run), ("project", project),
                                                 ("pool", pool_name)) if v)
    if not targets:
        if missing_ok:
            logger.info("nothing handed off to Label Studio for %s yet: nothing to collect",
                        what)
            return {"projects": [], "submitted": 0}
        raise ValueError(f"no Label Studio handoff recorded for {what} in {dbf} (hand it "
                         "off first: sift-curate handoff --run RUN --to label-studio --url URL)")
    token = token_from_env()
    results = []
    for rec_url, pid, title in targets:
        # a server that moved (--url) keeps its rows under the recorded address
        with LabelStudio(url or rec_url, token) as ls:
            res = collect_project(ls, dbf, pid, title, key_url=rec_url)
        results.append(res)
        logger.info("project %r (%d) at %s: %d tasks, %d annotations (%d submitted, %d empty, "
                    "%d skipped): %d new, %d updated, %d unchanged; %d marked deleted, %d "
                    "tasks deleted in Label Studio, %d tasks not from sift-curate ignored",
                    title, pid, rec_url, res["tasks"], res["annotations"], res["submitted"],
                    res["empty"], res["skipped"], res["new"], res["updated"],
                    res["unchanged"], res["deleted"], res["tasks_deleted"],
                    res["foreign_tasks"])
    total = {k: sum(r[k] for r in results) for k in (
        "tasks", "annotations", "submitted", "empty", "skipped", "new", "updated",
        "unchanged", "deleted", "tasks_deleted", "foreign_tasks")}
    artifacts.markdown(
        "collect", f"# Annotations collected ({what})\n\n" + artifacts.md_table(
            [{k: r[k] for k in ("project", "project_id", "tasks", "submitted", "empty",
                                "skipped", "new", "updated", "deleted", "tasks_deleted")}
             for r in results])
        + "\n\n```sql\nSELECT * FROM annotations WHERE status = 'submitted';\n"
        "SELECT * FROM budget_summary WHERE n_annotated > 0;\n```",
        description=f"collect {what}")
    return {"projects": results, **total}
