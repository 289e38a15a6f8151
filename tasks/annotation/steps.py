"""The Prefect tasks of the ``handoff`` and ``collect`` flows, beside the files and the
Label Studio client they wrap (:mod:`tasks.annotation.handoff`, :mod:`tasks.annotation.
annotations`, :mod:`tasks.annotation.labelstudio`)."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.annotation.handoff import (
    fetch_selection,
    record_handoff,
    run_strategies,
    write_handoff,
)
from tasks.reporting import artifacts
from tasks.runtime.workspace import db_path, workspace_root
from tasks.storage import db


@task(name="handoff-strategy", persist_result=False, cache_policy=NO_CACHE)
def handoff_strategy(workspace: str | None, run: str, strategy: str | None) -> str:
    """The strategy of rank run ``run`` to hand off (the only one, or the one named);
    a clear error for an unknown run or strategy."""
    dbf = db_path(workspace)
    if not Path(dbf).is_file() or not db.query(dbf, "SELECT count(*) FROM runs WHERE "
                                                     "run_id = ?", [run])[0][0]:
        raise ValueError(f"no run {run!r} in {dbf} (see: sift-curate sql \"SELECT run_id, "
                         "flow, status FROM runs\")")
    available = run_strategies(dbf, run)
    if not available:
        raise ValueError(f"run {run!r} has no selections in {dbf} (is it a rank run id?)")
    if strategy is None:
        if len(available) > 1:
            raise ValueError(f"run {run!r} ranked with several strategies "
                             f"({', '.join(available)}); choose one with --strategy")
        strategy = available[0]
    if strategy not in available:
        raise ValueError(f"run {run!r} has no strategy {strategy!r}; it has "
                         f"{', '.join(available)}")
    return strategy


@task(name="handoff-files", persist_result=False, cache_policy=NO_CACHE)
def handoff_files(workspace: str | None, run: str, strategy: str, format: str,
                  out: str | None, force: bool) -> dict:
    """Write ``<out>/<run>/<strategy>/batch-NNNN.<ext>`` + ``manifest.json``; record the
    ``handoffs`` rows; publish an artifact."""
    logger = get_run_logger()
    dbf = db_path(workspace)
    root = Path(out).expanduser().resolve() if out else workspace_root(workspace) / "handoff"
    folder = root / run / strategy
    rows = fetch_selection(dbf, run, strategy)
    manifest = write_handoff(rows, format, folder, run, strategy, force=force)
    record_handoff(dbf, manifest, folder)
    logger.info("handoff of %s/%s: %d items in %d %s file(s) under %s", run, strategy,
                manifest["n_items"], manifest["n_batches"], format, folder)
    artifacts.markdown(
        f"handoff-{run}-{strategy}",
        f"# Handoff `{run}` / `{strategy}` ({format})\n\n"
        f"{manifest['n_items']} items in {manifest['n_batches']} batch file(s) in "
        f"`{folder}`.\n\n" + artifacts.md_table(
            [{k: f[k] for k in ("file", "n_items", "sha256")} for f in manifest["files"]]),
        description=f"handoff of {run}",
    )
    return {"run_id": run, "strategy": strategy, "format": format, "folder": str(folder),
            "manifest": str(folder / "manifest.json"), "n_items": manifest["n_items"],
            "n_batches": manifest["n_batches"]}



@task(name="handoff-to-label-studio", persist_result=False, cache_policy=NO_CACHE)
def handoff_label_studio(dbf: Path, run: str, strategy: str, url: str | None,
                         project: str | None, force: bool) -> dict:
    """Import the selection into a Label Studio project, one import per batch (a
    rerun imports nothing twice); record the task ids and a ``handoffs`` row."""
    import pyarrow as pa

    from tasks.annotation.annotations import check_project_title, default_project, push_selection
    from tasks.annotation.labelstudio import URL_ENV, LabelStudio, LabelStudioError, token_from_env

    logger = get_run_logger()
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise LabelStudioError(f"--url (or ${URL_ENV}) is needed to hand off to Label Studio")
    rows = fetch_selection(dbf, run, strategy)
    title = check_project_title(project or default_project(rows[0]["pool_name"]))
    with LabelStudio(url, token_from_env()) as ls:
        res = push_selection(ls, dbf, run, strategy, rows, title, force=force,
                             log=logger.info)
    mapping = sorted(f"{r[0]}:{r[1]}" for r in db.query(
        dbf, "SELECT item_id, task_id FROM labelstudio_tasks WHERE run_id = ? AND strategy = ? "
        "AND url = ? AND project_id = ? AND status = 'imported'",
        [run, strategy, res["url"], res["project_id"]]))
    path = res["project_url"]
    db.replace_rows(dbf, "handoffs", pa.table({
        "run_id": [run], "path": [path], "format": ["label-studio"],
        "n_items": pa.array([len(mapping)], pa.int64()),
        "sha256": [hashlib.sha256("\n".join(mapping).encode()).hexdigest()],
        "created_at": pa.array([datetime.now(timezone.utc)], pa.timestamp("us", tz="UTC"))}),
        "run_id = ? AND path = ?", [run, path])
    logger.info("handoff of %s/%s to Label Studio project %r (%d) at %s: %d imported, %d "
                "already there, %d in the project from other runs, %d replaced, %d kept "
                "(annotated), %d deleted in Label Studio (not re-imported without --force)",
                run, strategy, res["project"], res["project_id"], res["url"], res["imported"],
                res["already_imported"], res["in_project_from_other_runs"], res["replaced"],
                res["kept_annotated"], res["deleted_in_label_studio"])
    artifacts.markdown(
        f"handoff-{run}-{strategy}",
        f"# Handoff `{run}` / `{strategy}` to Label Studio\n\n"
        f"Project [{res['project']}]({path}) (id {res['project_id']}"
        f"{', created' if res['created'] else ''}): **{res['imported']} tasks imported** in "
        f"{res['n_batches']} batch(es), {res['already_imported']} already there, "
        f"{res['n_tasks']} tasks of this run in all.\n\n"
        f"```sql\nSELECT * FROM labelstudio_tasks WHERE run_id = '{run}';\n```",
        description=f"handoff of {run} to Label Studio",
    )
    return {"run_id": run, "strategy": strategy, "to": "label-studio", **res,
            "n_items": res["n_tasks"]}


@task(name="collect-annotations", persist_result=False, cache_policy=NO_CACHE)
def collect_annotations(workspace: str | None, run: str | None, project: str | None,
                        pool_name: str | None, url: str | None, missing_ok: bool) -> dict:
    """Upsert every annotation of the chosen projects into ``annotations``; returns the
    per-project counts and their totals, with an artifact."""
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
