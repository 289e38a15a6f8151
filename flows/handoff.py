"""Flow ``handoff``: write a rank run's selection as files annotation tools import, or push
it into a Label Studio project (``to="label-studio"``; token from ``LABEL_STUDIO_API_KEY``,
never a flow parameter, so it is not stored with the flow run)."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger

from tasks.annotation.handoff import (
    FORMATS,
    fetch_selection,
    record_handoff,
    run_strategies,
    write_handoff,
)
from tasks.reporting import artifacts
from tasks.runtime.workspace import db_path, workspace_root
from tasks.storage import db

DESTINATIONS = ("files", "label-studio")


@flow(name="handoff", log_prints=True)
def handoff_flow(
    run: str,
    format: str = "labelstudio",
    out: str | None = None,
    strategy: str | None = None,
    force: bool = False,
    workspace: str | None = None,
    to: str = "files",
    url: str | None = None,
    project: str | None = None,
) -> dict:
    """Export the items rank run ``run`` selected (one strategy) to
    ``<out>/<run>/<strategy>/batch-NNNN.<ext>`` + ``manifest.json``; record ``handoffs``.
    With ``to="label-studio"``: import them into project ``project`` (default
    ``sift-curate <pool>``) at ``url``, one import per batch; record the task ids."""
    logger = get_run_logger()
    if to not in DESTINATIONS:
        raise ValueError(f"unknown handoff destination {to!r}; choose {', '.join(DESTINATIONS)}")
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose {', '.join(FORMATS)}")
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
    if to == "label-studio":
        return _to_label_studio(dbf, run, strategy, url, project, force)
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


def _to_label_studio(dbf: Path, run: str, strategy: str, url: str | None,
                     project: str | None, force: bool) -> dict:
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
