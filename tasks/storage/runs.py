"""Run identity and bookkeeping in the ``runs`` table.

A run id is derived from the flow name and its parameters unless given, so running the
same job again (a retry, a cron tick with the same inputs) replaces that run's rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.runtime.locks import hold
from tasks.runtime.workspace import db_path, lock_path
from tasks.storage import db


def make_run_id(flow: str, params: dict[str, Any], run_id: str | None = None) -> str:
    if run_id:
        return run_id
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return f"{flow}-{hashlib.sha1(blob).hexdigest()[:10]}"


class RunRecord:
    """Mutable holder for the summary a tracked run stores when it finishes."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.attempt = 1
        self.summary: dict[str, Any] = {}


@contextmanager
def tracked_run(db_file: str | Path, run_id: str, flow: str,
                params: dict[str, Any]) -> Iterator[RunRecord]:
    """Mark the run 'running', then 'completed' or 'failed' (with the error) at the end."""
    try:
        from prefect.runtime import flow_run

        params = {**params, "prefect_flow_run_id": str(flow_run.id or "")}
    except Exception:  # outside a flow run: nothing to record
        pass
    attempt = db.start_run(db_file, run_id, flow, params)
    record = RunRecord(run_id)
    record.attempt = attempt
    try:
        yield record
    except BaseException as err:
        db.finish_run(db_file, run_id, "failed", {**record.summary, "error": repr(err)},
                      attempt)
        raise
    db.finish_run(db_file, run_id, "completed", record.summary, attempt)


@contextmanager
def corpus_run(workspace: str | Path | None, corpus: str, run_id: str, flow: str,
               params: dict[str, Any]) -> Iterator[RunRecord]:
    """:func:`tracked_run` holding corpus ``corpus``'s lock throughout: one embed, import or
    index run per corpus at a time; a second one fails at once with "workspace busy"."""
    with hold(lock_path(workspace, "corpus", corpus), f"corpus {corpus!r}"), \
            tracked_run(db_path(workspace), run_id, flow, params) as record:
        yield record
