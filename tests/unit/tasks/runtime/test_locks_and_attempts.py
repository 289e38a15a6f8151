"""Workspace locks (fail fast / wait), DuckDB write serialisation across processes, and
run attempts (a run whose process died is recorded as crashed when it starts again)."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import threading
import time

import pyarrow as pa
import pytest

from tasks.runtime.locks import WorkspaceBusy, hold
from tasks.storage import db
from tasks.storage.runs import tracked_run


def test_second_exclusive_holder_fails_fast_naming_the_holder(tmp_path):
    lock = tmp_path / "corpus-x.lock"
    with hold(lock, "corpus 'x'"):
        t0 = time.monotonic()
        with pytest.raises(WorkspaceBusy, match=rf"workspace busy: corpus 'x' .*pid {os.getpid()}"):
            with hold(lock, "corpus 'x'"):
                pass
        assert time.monotonic() - t0 < 1.0
    with hold(lock, "corpus 'x'"):  # released on exit
        pass


def test_shared_holders_coexist_and_a_waiting_writer_gets_in(tmp_path):
    lock = tmp_path / "db.lock"
    with hold(lock, "db", shared=True), hold(lock, "db", shared=True):
        with pytest.raises(WorkspaceBusy):
            with hold(lock, "db"):
                pass
    released = threading.Event()

    def holder():
        with hold(lock, "db"):
            released.wait(5)
            time.sleep(0.3)

    t = threading.Thread(target=holder)
    t.start()
    time.sleep(0.1)
    released.set()
    t0 = time.monotonic()
    with hold(lock, "db", wait_s=10):
        waited = time.monotonic() - t0
    t.join()
    assert 0.1 < waited < 5


def _writer(path: str, who: int, n: int) -> None:
    for i in range(n):
        rows = pa.table({"run_id": [f"r{who}-{i}"], "query_id": ["q"], "rank": [1],
                         "doc_id": [i], "strategy": ["sift"], "posterior_variance": [0.5],
                         "similarity": [0.9]})
        db.replace_run_rows(path, "test_time_selections", f"r{who}-{i}", rows)


def test_concurrent_processes_serialise_their_duckdb_writes(tmp_path):
    path = str(tmp_path / "curation.duckdb")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert db.query(path, "SELECT count(*), count(DISTINCT run_id) FROM "
                    "test_time_selections") == [(45, 45)]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_crashed_attempt_is_recorded_when_the_run_starts_again(tmp_path):
    path = tmp_path / "curation.duckdb"
    assert db.start_run(path, "embed-1", "embed", {"a": 1}) == 1
    # the process of attempt 1 was killed: it never finished; pretend it was another pid
    with db.connect(path) as con:
        con.execute("UPDATE run_attempts SET pid = ? WHERE run_id = 'embed-1'", [_dead_pid()])
    with tracked_run(path, "embed-1", "embed", {"a": 1}) as rec:
        rec.summary = {"ok": True}
    assert rec.attempt == 2
    rows = db.query(path, "SELECT attempt, status, error IS NOT NULL FROM run_attempts "
                    "WHERE run_id = 'embed-1' ORDER BY attempt")
    assert rows == [(1, "crashed", True), (2, "completed", False)]
    assert db.query(path, "SELECT status, attempts FROM runs WHERE run_id = 'embed-1'") == [
        ("completed", 2)]


def test_the_same_run_live_in_another_process_is_refused(tmp_path):
    path = tmp_path / "curation.duckdb"
    db.start_run(path, "select-1", "select", {})
    with db.connect(path) as con:  # attempt 1 belongs to a live process (our parent)
        con.execute("UPDATE run_attempts SET pid = ?", [os.getppid()])
    with pytest.raises(WorkspaceBusy, match="run 'select-1' is already running"):
        db.start_run(path, "select-1", "select", {})
    assert db.query(path, "SELECT count(*) FROM run_attempts") == [(1,)]
