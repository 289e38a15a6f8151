"""The annotation loop with a real Label Studio, through the installed CLI, once:

rank a pool -> ``handoff --to label-studio`` (twice: nothing imported twice) -> an annotator
(signed up through an invite link) answers in Label Studio's API as the browser would, one
answer empty -> ``collect`` -> edits one answer, deletes another, an admin deletes a task ->
``collect`` again (upsert, marks) -> budget_summary counts the annotated items -> a re-rank of
the same pool never picks them and uses them as already-chosen context -> faults (wrong
token, server unreachable, a project with another config, an unknown run) fail clearly and
leave DuckDB as it was -> ``--force`` replaces what nobody annotated.

The main path runs through the installed CLI; the reruns, faults and ``--force`` call the
same flows in this process (one Prefect start instead of one per command, for CI's time).

Label Studio is installed into its own virtual environment, cached per version (see
tests/e2e/label_studio.py); the test is skipped, saying why, only when it cannot be
installed. The server runs on a free loopback port with a fresh data folder and is stopped
by its process group.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks.sample.bundled import build_sample
from tasks.storage import db
from tests.e2e import label_studio as lsx
from tests.e2e.procs import CLI, clean_env, free_port, stop

pytestmark = pytest.mark.e2e

ADMIN, ADMIN_PW = "curator@example.com", "curator-pw-1"
ANNOTATOR, ANNOTATOR_PW = "annotator@example.com", "annotator-pw-1"
BUDGET, BATCH = 8, 4
STRATEGIES = ("k_center", "sift")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    t0 = time.monotonic()
    try:
        exe = lsx.install()
    except RuntimeError as err:
        pytest.skip(f"Label Studio {lsx.VERSION} cannot be installed here: {err}")
    installed_s = time.monotonic() - t0
    root = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "label-studio.log"
    proc = lsx.start(exe, root / "data", port, ADMIN, ADMIN_PW, log)
    print(f"\nlabel-studio {lsx.VERSION}: install/cache {installed_s:.1f} s, starting at {url}")
    try:
        # not waited for here: the test ranks while the server migrates its database
        yield {"url": url, "proc": proc, "log": log, "started": time.monotonic()}
    finally:
        stop(proc)
    assert proc.poll() is not None


def _cli(args: list[str], env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    res = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=600)
    print(f"  sift-curate {' '.join(args[:3])} ...: rc {res.returncode} in "
          f"{time.monotonic() - t0:.1f} s")
    if ok:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def _result(res: subprocess.CompletedProcess) -> dict:
    """The JSON summary the CLI prints last on stderr."""
    text = "\n" + res.stderr
    return json.JSONDecoder().raw_decode(text, text.rindex("\n{") + 1)[0]


def _ls(session, method: str, path: str, **kw):
    """An API call with a logged-in browser session (cookie + CSRF header)."""
    r = session.request(method, path, headers={"X-CSRFToken": session.cookies.get("csrftoken")},
                        **kw)
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:300]}"
    return r.json() if r.content else None


def _answer(text: str) -> list[dict]:
    return [{"from_name": "response", "to_name": "instruction", "type": "textarea",
             "value": {"text": [text]}}]


def _show(dbf: Path, sql: str) -> list[tuple]:
    """Print a query and its rows as `sift-curate sql` would (the issue's "must show")."""
    with db.connect(dbf, read_only=True) as con:
        cur = con.execute(sql)
        cols, rows = [d[0] for d in cur.description], cur.fetchall()
    print(f"\n{sql}\n{db.format_rows(cols, rows)}")
    return rows


ANNOTATED_SQL = """SELECT a.task_id, a.annotator, a.status, left(a.response, 20) AS response, s.grp
FROM annotations a JOIN selections s USING (run_id, strategy, item_id)
ORDER BY a.task_id"""
BUDGET_SQL = """SELECT strategy, grp, allocated, spent, n_annotated, annotated_spent,
       annotated_fraction
FROM budget_summary WHERE run_id = 'r1' ORDER BY strategy, grp"""
RERANK_SQL = """SELECT s.run_id, s.strategy, count(*) AS picked,
       count(a.item_id) AS annotated_among_picks
FROM selections s LEFT JOIN (SELECT DISTINCT pool_name, item_id FROM annotations
                             WHERE status = 'submitted') a USING (pool_name, item_id)
GROUP BY ALL ORDER BY ALL"""


def _db_state(dbf: Path) -> dict:
    return {t: db.query(dbf, f"SELECT * FROM {t} ORDER BY ALL")
            for t in ("annotations", "labelstudio_tasks", "selections", "handoffs")}


def test_annotation_loop(server, tmp_path, prefect_harness, monkeypatch):
    from flows.collect import collect_flow
    from flows.handoff import handoff_flow
    from tasks.annotation.labelstudio import LabelStudioError

    url = server["url"]
    ws = tmp_path / "ws"
    pool = build_sample(tmp_path / "s", n_docs=40, n_queries=4, pool_size=40)["paths"]["pool"]
    env = clean_env(ws, ws / ".prefect")
    dbf = ws / "curation.duckdb"
    rank = ["rank", "--pool", pool, "--pool-name", "p", "--budget", str(BUDGET),
            "--batch-size", str(BATCH), *[a for s in STRATEGIES for a in ("--strategy", s)]]
    _cli([*rank, "--run-id", "r1"], env)
    lsx.wait_healthy(url, server["proc"], server["log"])
    print(f"label-studio healthy {time.monotonic() - server['started']:.1f} s after its start")
    admin = lsx.login(url, ADMIN, ADMIN_PW)
    env["LABEL_STUDIO_API_KEY"] = lsx.personal_access_token(admin)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", env["LABEL_STUDIO_API_KEY"])

    # -- handoff: a project with the instruction -> response config, one import per batch
    handoff = ["handoff", "--run", "r1", "--strategy", "sift", "--to", "label-studio",
               "--url", url]
    first = _result(_cli(handoff, env))
    print("handoff:", json.dumps({k: first[k] for k in ("project", "project_id", "created",
                                                        "imported", "n_batches")}))
    assert first["created"] and first["imported"] == BUDGET and first["n_batches"] == 2
    # the rerun (in this process from here on: one Prefect start for the rest, not one per
    # command; the CLI's one-line errors are the exceptions' messages)
    again = handoff_flow(run="r1", strategy="sift", to="label-studio", url=url,
                         workspace=str(ws))
    assert again["imported"] == 0 and again["already_imported"] == BUDGET
    pid = first["project_id"]
    tasks = _ls(admin, "GET", "/api/tasks/", params={"project": pid, "page_size": 100})
    assert tasks["total"] == BUDGET  # nothing imported twice
    recorded = db.query(dbf, "SELECT item_id, task_id, batch FROM labelstudio_tasks "
                             "WHERE run_id = 'r1' ORDER BY task_id")
    by_task = {t["id"]: t["data"] for t in tasks["tasks"]}
    assert sorted(by_task) == [r[1] for r in recorded]
    assert all(by_task[t]["item_id"] == i and by_task[t]["batch"] == b for i, t, b in recorded)
    assert {"instruction", "input", "priority", "rank", "strategy"} <= set(by_task[recorded[0][1]])

    # -- an annotator answers five tasks in rank order, one with an empty response
    annotator = lsx.sign_up_annotator(admin, ANNOTATOR, ANNOTATOR_PW)
    order = sorted(by_task, key=lambda t: by_task[t]["rank"])
    answers = {order[0]: "Answer one.", order[1]: "Answer two.", order[2]: "Answer three.",
               order[3]: "   ", order[4]: "A first draft."}
    ann_ids = {t: _ls(annotator, "POST", f"/api/tasks/{t}/annotations/",
                      params={"project": pid}, json={"result": _answer(a)})["id"]
               for t, a in answers.items()}
    c1 = _result(_cli(["collect", "--run", "r1"], env))
    print("collect 1:", json.dumps({k: c1[k] for k in ("annotations", "submitted", "empty",
                                                       "new", "updated", "deleted")}))
    assert (c1["annotations"], c1["submitted"], c1["empty"], c1["new"]) == (5, 4, 1, 5)

    # -- edit one answer, delete another, the admin deletes a task nobody answered
    _ls(annotator, "PATCH", f"/api/annotations/{ann_ids[order[4]]}/",
        json={"result": _answer("The final answer.")})
    _ls(annotator, "DELETE", f"/api/annotations/{ann_ids[order[2]]}/")
    _ls(admin, "DELETE", f"/api/tasks/{order[5]}/")
    c2 = _result(_cli(["collect", "--project", first["project"]], env))
    print("collect 2:", json.dumps({k: c2[k] for k in ("annotations", "submitted", "new",
                                                       "updated", "unchanged", "deleted",
                                                       "tasks_deleted")}))
    assert (c2["new"], c2["updated"], c2["unchanged"], c2["deleted"], c2["tasks_deleted"]) \
        == (0, 1, 3, 1, 1)
    rows = db.query(dbf, "SELECT task_id, annotator, status, response FROM annotations "
                         "ORDER BY task_id")
    assert rows == [(order[0], ANNOTATOR, "submitted", "Answer one."),
                    (order[1], ANNOTATOR, "submitted", "Answer two."),
                    (order[2], ANNOTATOR, "deleted", "Answer three."),  # kept, marked
                    (order[3], ANNOTATOR, "empty", "   "),
                    (order[4], ANNOTATOR, "submitted", "The final answer.")]
    assert db.query(dbf, "SELECT status FROM labelstudio_tasks WHERE task_id = ?",
                    [order[5]]) == [("deleted",)]
    again = collect_flow(run="r1", workspace=str(ws))
    assert (again["new"], again["updated"], again["deleted"]) == (0, 0, 0)
    # what a curation job with collect_first does: the pool's projects, none is no error
    by_pool = collect_flow(pool_name="p", workspace=str(ws), missing_ok=True)
    assert len(by_pool["projects"]) == 1 and by_pool["unchanged"] == 4
    assert collect_flow(pool_name="other", workspace=str(ws), missing_ok=True)["projects"] == []
    done = {by_task[t]["item_id"] for t in (order[0], order[1], order[4])}

    # -- budgets: annotated items per group, in the budget's unit
    _show(dbf, ANNOTATED_SQL)
    summary = {(r[0], r[1]): r[4:6] for r in _show(dbf, BUDGET_SQL)}
    assert sum(v[0] for (s, _), v in summary.items() if s == "sift") == 3
    assert sum(v[1] for (s, _), v in summary.items() if s == "sift") == 3.0
    # only the strategy handed off counts
    assert sum(v[0] for (s, _), v in summary.items() if s == "k_center") == 0

    # -- re-rank: annotated items are labelled, never picked, and context for the picks
    r2 = _result(_cli([*rank, "--run-id", "r2"], env))
    assert r2["annotated"] == 3 and r2["labeled"] == 3
    for s in STRATEGIES:
        picked = {r[0] for r in db.query(dbf, "SELECT item_id FROM selections WHERE run_id = "
                                              "'r2' AND strategy = ?", [s])}
        assert len(picked) == BUDGET and not picked & done, s
    rows = _show(dbf, RERANK_SQL)
    assert [r[3] for r in rows if r[0] == "r2"] == [0, 0]
    assert ("r1", "sift", BUDGET, 3) in rows
    _check_context(ws, dbf, done)

    # -- faults: each a clear error, and the database as it was
    state = _db_state(dbf)
    pat = env["LABEL_STUDIO_API_KEY"]
    for token, message in (("not-a-token", "refused the legacy token"),
                           (pat[:-4] + "AAAA", "refused the personal access token")):
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
        with pytest.raises(LabelStudioError, match=message):
            collect_flow(run="r1", workspace=str(ws))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    with pytest.raises(LabelStudioError, match="cannot reach Label Studio at"):
        collect_flow(run="r1", url=f"http://127.0.0.1:{free_port()}", workspace=str(ws))
    _ls(admin, "POST", "/api/projects/", json={
        "title": "other config", "label_config": '<View><Text name="t" value="$text"/>'
        '<Choices name="c" toName="t"><Choice value="a"/></Choices></View>'})
    with pytest.raises(LabelStudioError, match="does not fit instruction -> response"):
        handoff_flow(run="r1", strategy="sift", to="label-studio", url=url,
                     project="other config", workspace=str(ws))
    for flow in (collect_flow, handoff_flow):
        with pytest.raises(ValueError, match="no run 'nope'"):
            flow(run="nope", url=url, workspace=str(ws))
    assert _db_state(dbf) == state

    # -- --force: tasks nobody annotated are replaced, annotated ones kept
    forced = handoff_flow(run="r1", strategy="sift", to="label-studio", url=url, force=True,
                          workspace=str(ws))
    # kept: the four tasks with an annotation (the empty one too); replaced: the three
    # without; imported: those three and the task the admin deleted
    assert (forced["replaced"], forced["kept_annotated"], forced["imported"]) == (3, 4, 4)
    total = _ls(admin, "GET", "/api/tasks/", params={"project": pid, "page_size": 1})["total"]
    assert total == BUDGET  # the deleted task is back (forced), nothing doubled
    assert db.query(dbf, "SELECT count(*), count(DISTINCT item_id) FROM labelstudio_tasks "
                         "WHERE run_id = 'r1' AND status = 'imported'") == [(BUDGET, BUDGET)]
    assert db.query(dbf, "SELECT count(*) FROM annotations WHERE status = 'submitted'") \
        == [(3,)]


def _check_context(ws: Path, dbf: Path, done: set[str]) -> None:
    """r2's picks are those of rank_items with the annotated items as labelled context, and
    differ from a ranking that merely drops them from the pool."""
    from sift_ops.pool_strategies import rank_items
    from tasks.pool.items import read_item_columns

    items = read_item_columns(ws / "pools" / "p" / "items.parquet")
    ids = np.asarray(items.column("item_id").to_pylist(), dtype=object)
    groups = np.asarray(items.column("source").to_pylist(), dtype=object)
    cache = pq.read_table(sorted((ws / "pools" / "p" / "cache").glob("embedding-*.parquet")))
    pos = pc.index_in(items.column("item_id"), value_set=cache.column("item_id")).to_numpy()
    emb = np.stack(cache.column("embedding").to_numpy(zero_copy_only=False))[pos]
    emb = emb.astype(np.float32)
    labeled = np.isin(ids, list(done))
    keep = ~labeled
    for s in STRATEGIES:
        got = [r[0] for r in db.query(dbf, "SELECT item_id FROM selections WHERE run_id = 'r2' "
                                           "AND strategy = ? ORDER BY rank", [s])]
        with_context = rank_items(s, emb, None, None, groups, BUDGET, labeled=labeled,
                                  batch_size=BATCH)
        dropped = rank_items(s, emb[keep], None, None, groups[keep], BUDGET, batch_size=BATCH)
        assert list(ids[with_context.index]) == got, s
        assert list(ids[keep][dropped.index]) != got, s
