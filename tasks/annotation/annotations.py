"""The annotation loop's rows in curation.duckdb (Label Studio itself:
:mod:`tasks.annotation.labelstudio`).

``labelstudio_tasks``  one row per item pushed to a Label Studio project: the run, strategy
                       and batch it came from, the server, project and task id; ``status``
                       ``imported`` or ``deleted`` (the task is gone from the project).
``annotations``        one row per annotation collected (the issue's columns plus the
                       server, project and annotation ids). ``status``:

                       ``submitted``     a non-empty response: the item counts as labelled
                       ``empty``         submitted with an empty response (a counted skip)
                       ``skipped``       the annotator pressed Skip (a counted skip)
                       ``deleted``       the annotation was deleted in Label Studio
                       ``task_deleted``  its task was deleted in Label Studio

Collecting again upserts by (server, project, annotation id): an edited annotation replaces
its row, one that disappeared is *marked* deleted (its response stays), so nothing already
in the database is lost. Every change of one project is one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.annotation.labelstudio import (
    LABEL_CONFIG,
    LabelStudio,
    LabelStudioError,
    config_problems,
    response_text,
)
from tasks.storage import db

LABELLED = "submitted"
ANNOTATION_COLUMNS = ("run_id", "item_id", "project", "task_id", "annotator", "response",
                      "created_at", "updated_at", "pool_name", "strategy", "url", "project_id",
                      "annotation_id", "status", "collected_at", "deleted_at")
_TS = pa.timestamp("us", tz="UTC")
_TYPES = {"task_id": pa.int64(), "project_id": pa.int64(), "annotation_id": pa.int64(),
          "created_at": _TS, "updated_at": _TS, "collected_at": _TS, "deleted_at": _TS}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time from the API (``...Z`` or with an offset) as an aware datetime."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value
    t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def recorded_tasks(dbf: str | Path, url: str, project_id: int) -> dict[int, dict[str, Any]]:
    """task id -> its ``labelstudio_tasks`` row, for one project."""
    if not Path(dbf).is_file():
        return {}
    with db.connect(dbf, read_only=True) as con:
        if not _has_table(con, "labelstudio_tasks"):
            return {}
        cur = con.execute("SELECT * FROM labelstudio_tasks WHERE url = ? AND project_id = ?",
                          [url, int(project_id)])
        cols = [d[0] for d in cur.description]
        return {int(r[cols.index("task_id")]): dict(zip(cols, r, strict=True))
                for r in cur.fetchall()}


def record_tasks(dbf: str | Path, url: str, project: str, project_id: int, run_id: str,
                 strategy: str, rows: list[dict[str, Any]]) -> int:
    """Replace the ``labelstudio_tasks`` rows of (run, strategy, project) with ``rows``
    (``item_id``, ``pool_name``, ``batch``, ``task_id``, ``imported_at``, optional
    ``status``)."""
    table = pa.table({
        "run_id": pa.array([run_id] * len(rows), pa.string()),
        "pool_name": pa.array([r["pool_name"] for r in rows], pa.string()),
        "strategy": pa.array([strategy] * len(rows), pa.string()),
        "item_id": pa.array([r["item_id"] for r in rows], pa.string()),
        "batch": pa.array([r.get("batch") for r in rows], pa.int32()),
        "url": pa.array([url] * len(rows), pa.string()),
        "project": pa.array([project] * len(rows), pa.string()),
        "project_id": pa.array([int(project_id)] * len(rows), pa.int64()),
        "task_id": pa.array([int(r["task_id"]) for r in rows], pa.int64()),
        "status": pa.array([r.get("status", "imported") for r in rows], pa.string()),
        "imported_at": pa.array([r.get("imported_at") or _now() for r in rows], _TS),
    })
    db.replace_rows(dbf, "labelstudio_tasks", table,
                    "run_id = ? AND strategy = ? AND url = ? AND project_id = ?",
                    [run_id, strategy, url, int(project_id)])
    return len(rows)


def _has_table(con, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE "
                            "table_name = ?", [name]).fetchone()[0])


def recorded_projects(dbf: str | Path, *, run_id: str | None = None,
                      project: str | None = None, pool_name: str | None = None
                      ) -> list[tuple[str, int, str]]:
    """(url, project id, project title) of every Label Studio project the database holds
    tasks of, for a run, a project title or a pool (whichever are given)."""
    if not Path(dbf).is_file():
        return []
    where, params = [], []
    for col, val in (("run_id", run_id), ("project", project), ("pool_name", pool_name)):
        if val is not None:
            where.append(f"{col} = ?")
            params.append(val)
    sql = ("SELECT DISTINCT url, project_id, project FROM labelstudio_tasks"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY 1, 2")
    with db.connect(dbf, read_only=True) as con:
        if not _has_table(con, "labelstudio_tasks"):
            return []
        return [(u, int(p), t) for u, p, t in con.execute(sql, params).fetchall()]


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table({c: pa.array([r.get(c) for r in rows], _TYPES.get(c, pa.string()))
                     for c in ANNOTATION_COLUMNS})


def apply_collect(dbf: str | Path, url: str, project_id: int, fetched: list[dict[str, Any]],
                  live_task_ids: list[int]) -> dict[str, int]:
    """Upsert one project's collected annotations (``fetched``: dicts with the
    :data:`ANNOTATION_COLUMNS` but ``collected_at`` / ``deleted_at``) in one transaction.

    Rows of this project that were not fetched again are marked ``deleted`` (or
    ``task_deleted`` when their task is not in ``live_task_ids``), keeping their response;
    ``labelstudio_tasks`` rows whose task is gone are marked ``deleted``. Returns counts:
    ``new``, ``updated``, ``unchanged``, ``deleted`` (newly marked), ``tasks_deleted``
    (newly marked) and one per status of the fetched rows.
    """
    now = _now()
    url, project_id = url, int(project_id)
    rows = [{**r, "collected_at": now, "deleted_at": None} for r in fetched]
    counts = {"new": 0, "updated": 0, "unchanged": 0, "deleted": 0, "tasks_deleted": 0,
              "submitted": 0, "empty": 0, "skipped": 0}
    with db.connect(dbf) as con:
        before = {int(a): (u, resp, st) for a, u, resp, st in con.execute(
            "SELECT annotation_id, updated_at, response, status FROM annotations "
            "WHERE url = ? AND project_id = ?", [url, project_id]).fetchall()}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
            old = before.get(int(r["annotation_id"]))
            if old is None:
                counts["new"] += 1
            elif (old[0], old[1], old[2]) != (r["updated_at"], r["response"], r["status"]):
                counts["updated"] += 1
            else:
                counts["unchanged"] += 1
        con.register("fresh", _table(rows))
        con.register("live", pa.table({"task_id": pa.array(live_task_ids, pa.int64())}))
        con.execute("BEGIN")
        try:
            con.execute("DELETE FROM annotations WHERE url = ? AND project_id = ? AND "
                        "annotation_id IN (SELECT annotation_id FROM fresh)", [url, project_id])
            con.execute(f"INSERT INTO annotations SELECT {', '.join(ANNOTATION_COLUMNS)} "
                        "FROM fresh")
            counts["deleted"] = con.execute(
                "UPDATE annotations SET status = CASE WHEN task_id IN (SELECT task_id FROM "
                "live) THEN 'deleted' ELSE 'task_deleted' END, deleted_at = ? "
                "WHERE url = ? AND project_id = ? AND status NOT IN ('deleted', "
                "'task_deleted') AND annotation_id NOT IN (SELECT annotation_id FROM fresh)",
                [now, url, project_id]).fetchone()[0]
            counts["tasks_deleted"] = con.execute(
                "UPDATE labelstudio_tasks SET status = 'deleted' WHERE url = ? AND "
                "project_id = ? AND status <> 'deleted' AND task_id NOT IN (SELECT task_id "
                "FROM live)", [url, project_id]).fetchone()[0]
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("fresh")
            con.unregister("live")
    return counts


def annotated_items(dbf: str | Path, pool_name: str) -> list[str]:
    """Item ids of ``pool_name`` with a submitted, non-empty annotation (labelled now)."""
    if not Path(dbf).is_file():
        return []
    with db.connect(dbf, read_only=True) as con:
        if not _has_table(con, "annotations"):
            return []
        return [r[0] for r in con.execute(
            "SELECT DISTINCT item_id FROM annotations WHERE pool_name = ? AND status = ? "
            "ORDER BY 1", [pool_name, LABELLED]).fetchall()]


# -- the loop with a Label Studio server (client: tasks.annotation.labelstudio.LabelStudio) --

def default_project(pool_name: str) -> str:
    """The project a pool's batches go to unless ``--project`` names another (Label Studio
    titles are 3-50 characters)."""
    return f"sift-curate {pool_name}"[:50]


def check_project_title(title: str) -> str:
    title = (title or "").strip()
    if not 3 <= len(title) <= 50:
        raise ValueError(f"Label Studio project titles are 3 to 50 characters, got {title!r}")
    return title


def task_payload(row: dict[str, Any], run_id: str) -> dict[str, Any]:
    """One Label Studio task for a selected item (a row of
    tasks.annotation.handoff.fetch_selection)."""
    return {"data": {
        "instruction": row["instruction"], "input": row["input"] or "",
        "item_id": row["item_id"], "pool_name": row["pool_name"], "run_id": run_id,
        "strategy": row["strategy"], "rank": int(row["rank"]), "batch": int(row["batch"]),
        "priority": round(float(row["score"]), 6), "source": row["source"],
        "cost": None if row["cost"] is None else float(row["cost"]),
    }}


def _ours(task: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    d = task.get("data") or {}
    return d.get("item_id"), d.get("run_id"), d.get("strategy")


def push_selection(ls: LabelStudio, dbf: str | Path, run_id: str, strategy: str,
                   rows: list[dict[str, Any]], project: str, *, force: bool = False,
                   log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Import a run's selection (one strategy, rows in rank order) into the Label Studio
    project titled ``project`` (created with :data:`tasks.annotation.labelstudio.LABEL_CONFIG` when
    missing; an existing one must fit it), one import request per annotation batch, and
    record project and task ids in ``labelstudio_tasks`` after each batch.

    Idempotent: items already in the project (from this run or another) are not imported
    again. ``force`` deletes this run's tasks of this strategy that nobody has annotated
    and imports them anew; annotated tasks are kept (never destroy annotators' work).
    """
    if not rows:
        raise ValueError(f"run {run_id!r} selected no items with strategy {strategy!r}")
    pool_name = rows[0]["pool_name"]
    proj = ls.find_project(project)
    created = proj is None
    if created:
        proj = ls.create_project(project, LABEL_CONFIG, description=(
            f"sift-curate: instruction -> response for pool {pool_name}; sort by priority "
            "(higher first)"))
    else:
        problems = config_problems(proj.get("label_config") or "")
        if problems:
            raise LabelStudioError(
                f"project {project!r} (id {proj['id']}) at {ls.url} has a labelling config "
                f"that does not fit instruction -> response: {'; '.join(problems)}. Pass "
                "another --project, or give it the config of "
                "tasks.annotation.labelstudio.LABEL_CONFIG")
    pid = int(proj["id"])
    tasks = list(ls.iter_tasks(pid))
    kept, removed = 0, 0
    if force:
        alive = []
        for t in tasks:
            item, run, strat = _ours(t)
            if run == run_id and strat == strategy and not t.get("annotations") \
                    and not t.get("total_annotations") and not t.get("cancelled_annotations"):
                ls.delete_task(int(t["id"]))
                removed += 1
            else:
                kept += run == run_id and strat == strategy
                alive.append(t)
        tasks = alive
    present: dict[str, dict] = {}
    for t in tasks:
        item, _, _ = _ours(t)
        if item is not None:
            present.setdefault(item, t)
    # tasks recorded for this run that were deleted in Label Studio: not imported again
    # unless forced (someone removed them on purpose); their rows stay, marked deleted
    live_ids = {int(t["id"]) for t in tasks}
    gone = {} if force else {
        rec["item_id"]: rec for tid, rec in recorded_tasks(dbf, ls.url, pid).items()
        if rec["run_id"] == run_id and rec["strategy"] == strategy and tid not in live_ids}
    mapping, skipped_other, n_gone = [], 0, 0
    todo: dict[int, list[dict]] = {}
    for r in rows:
        t = present.get(r["item_id"])
        if t is None and r["item_id"] in gone:
            rec = gone[r["item_id"]]
            mapping.append({**rec, "status": "deleted"})
            n_gone += 1
            continue
        if t is None:
            todo.setdefault(int(r["batch"]), []).append(r)
            continue
        _, run, strat = _ours(t)
        if run == run_id and strat == strategy:
            mapping.append({"item_id": r["item_id"], "pool_name": pool_name,
                            "batch": int(r["batch"]), "task_id": int(t["id"]),
                            "imported_at": parse_time(t.get("created_at"))})
        else:
            skipped_other += 1  # already in the project from another run: not twice
    already = len(mapping) - n_gone
    imported = 0
    record_tasks(dbf, ls.url, project, pid, run_id, strategy, mapping)
    for b in sorted(todo):
        batch = todo[b]
        ids = ls.import_tasks(pid, [task_payload(r, run_id) for r in batch])
        now = _now()
        mapping += [{"item_id": r["item_id"], "pool_name": pool_name, "batch": b,
                     "task_id": i, "imported_at": now} for r, i in zip(batch, ids, strict=True)]
        imported += len(batch)
        # after every batch: a crash later leaves the database describing what is there
        record_tasks(dbf, ls.url, project, pid, run_id, strategy, mapping)
        if log:
            log(f"batch {b}: imported {len(batch)} tasks into project {project!r} ({pid})")
    return {"url": ls.url, "project": project, "project_id": pid, "created": created,
            "imported": imported, "already_imported": already,
            "in_project_from_other_runs": skipped_other, "replaced": removed,
            "kept_annotated": int(kept), "deleted_in_label_studio": n_gone,
            "n_tasks": len(mapping) - n_gone,
            "n_batches": len(todo), "project_url": f"{ls.url}/projects/{pid}/"}


def _annotator(completed_by: Any, users: dict[int, str]) -> str | None:
    if isinstance(completed_by, dict):
        return completed_by.get("email") or completed_by.get("username") or \
            str(completed_by.get("id"))
    if completed_by is None:
        return None
    return users.get(int(completed_by), str(completed_by))


def collect_project(ls: LabelStudio, dbf: str | Path, project_id: int, project: str, *,
                    key_url: str | None = None) -> dict[str, Any]:
    """Pull every annotation of one project into ``annotations`` (see :func:`apply_collect`).
    ``key_url``: the server address the rows are recorded under (default: ``ls.url``).

    Everything is fetched before the database is touched, so a server that fails midway
    changes nothing. Tasks that sift-curate did not import (no ``item_id`` / ``run_id`` in
    their data and no ``labelstudio_tasks`` row) are counted and ignored."""
    try:
        proj = ls.project(project_id)
    except LabelStudioError as err:
        if err.status == 404:
            raise LabelStudioError(f"project {project!r} (id {project_id}) no longer exists "
                                   f"at {ls.url}; nothing was changed in the database") from err
        raise
    problems = [p for p in config_problems(proj.get("label_config") or "") if "TextArea" in p]
    if problems:
        raise LabelStudioError(f"project {project!r} (id {project_id}) at {ls.url}: "
                               f"{'; '.join(problems)}; cannot read responses")
    users = ls.users()
    key = (key_url or ls.url).rstrip("/")
    recorded = recorded_tasks(dbf, key, project_id)
    fetched, live, foreign = [], [], 0
    for t in ls.iter_tasks(project_id):
        tid = int(t["id"])
        live.append(tid)
        rec = recorded.get(tid)
        item, run, strat = _ours(t)
        if rec:
            item, run, strat = rec["item_id"], rec["run_id"], rec["strategy"]
        if not item or not run:
            foreign += 1
            continue
        pool = rec["pool_name"] if rec else (t.get("data") or {}).get("pool_name")
        for a in t.get("annotations") or []:
            text = response_text(a.get("result"))
            status = ("skipped" if a.get("was_cancelled") else
                      "empty" if not (text or "").strip() else "submitted")
            fetched.append({
                "run_id": run, "item_id": item, "project": project, "task_id": tid,
                "annotator": _annotator(a.get("completed_by"), users), "response": text,
                "created_at": parse_time(a.get("created_at")),
                "updated_at": parse_time(a.get("updated_at")), "pool_name": pool,
                "strategy": strat, "url": key, "project_id": int(project_id),
                "annotation_id": int(a["id"]), "status": status})
    counts = apply_collect(dbf, key, project_id, fetched, live)
    return {"url": key, "project": project, "project_id": int(project_id),
            "tasks": len(live), "annotations": len(fetched), "foreign_tasks": foreign,
            **counts}
