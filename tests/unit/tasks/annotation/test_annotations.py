"""The annotation loop's DuckDB side (a real DuckDB file) and the Label Studio client's
auth and error handling (against httpx's in-process transport: no server; the real one is
tests/e2e/test_label_studio.py)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import httpx
import pyarrow as pa
import pytest

from tasks.annotation.annotations import (
    annotated_items,
    apply_collect,
    record_tasks,
    recorded_projects,
    task_payload,
)
from tasks.annotation.labelstudio import (
    LABEL_CONFIG,
    LabelStudio,
    LabelStudioError,
    config_problems,
    response_text,
)
from tasks.storage import db

URL = "http://ls.test"
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _ann(task_id: int, ann_id: int, item: str, response: str | None, status: str = "submitted",
         updated: datetime = T0) -> dict:
    return {"run_id": "r", "item_id": item, "project": "proj", "task_id": task_id,
            "annotator": "a@example.com", "response": response, "created_at": T0,
            "updated_at": updated, "pool_name": "p", "strategy": "sift", "url": URL,
            "project_id": 7, "annotation_id": ann_id, "status": status}


@pytest.fixture
def dbf(tmp_path):
    dbf = tmp_path / "curation.duckdb"
    db.start_run(dbf, "r", "rank", {})
    db.finish_run(dbf, "r", "completed")
    items = ["a", "b", "c", "d"]
    db.replace_run_rows(dbf, "selections", "r", pa.table({
        "run_id": ["r"] * 4, "pool_name": ["p"] * 4, "item_id": items,
        "rank": pa.array([1, 2, 3, 4], pa.int32()), "strategy": ["sift"] * 4,
        "score": [0.4, 0.3, 0.2, 0.1], "batch": pa.array([1, 1, 2, 2], pa.int32()),
        "grp": ["news", "code", "news", "code"], "cost": [1.0, 1.0, 1.0, 1.0]}))
    db.replace_run_rows(dbf, "budgets", "r", pa.Table.from_pylist([
        {"run_id": "r", "pool_name": "p", "strategy": "sift", "grp": g, "unit": "items",
         "total": 4.0, "allocated": 2.0, "spent": 2.0, "n_items": 10, "n_selected": 2}
        for g in ("code", "news")]))
    record_tasks(dbf, URL, "proj", 7, "r", "sift",
                 [{"item_id": i, "pool_name": "p", "batch": 1, "task_id": 100 + n}
                  for n, i in enumerate(items)])
    return dbf


def test_collect_upserts_marks_deleted_and_counts_budget(dbf):
    first = [_ann(100, 1, "a", "yes"), _ann(101, 2, "b", "sure"), _ann(102, 3, "c", " ", "empty")]
    c = apply_collect(dbf, URL, 7, first, [100, 101, 102, 103])
    assert (c["new"], c["submitted"], c["empty"], c["deleted"]) == (3, 2, 1, 0)
    assert annotated_items(dbf, "p") == ["a", "b"]
    summary = db.query(dbf, "SELECT grp, n_annotated, annotated_spent, annotated_fraction "
                            "FROM budget_summary ORDER BY grp")
    assert summary == [("code", 1, 1.0, 0.5), ("news", 1, 1.0, 0.5)]
    assert recorded_projects(dbf, run_id="r") == [(URL, 7, "proj")]
    assert recorded_projects(dbf, pool_name="other") == []

    # a's answer edited, b's annotation deleted, c's task deleted (so c's row is not fetched)
    later = T0 + timedelta(hours=1)
    second = [_ann(100, 1, "a", "yes, edited", updated=later)]
    c = apply_collect(dbf, URL, 7, second, [100, 101, 103])
    assert (c["new"], c["updated"], c["unchanged"], c["deleted"], c["tasks_deleted"]) == \
        (0, 1, 0, 2, 1)
    rows = db.query(dbf, "SELECT item_id, status, response FROM annotations ORDER BY item_id")
    assert rows == [("a", "submitted", "yes, edited"), ("b", "deleted", "sure"),
                    ("c", "task_deleted", " ")]  # responses kept
    assert db.query(dbf, "SELECT task_id FROM labelstudio_tasks WHERE status = 'deleted'") \
        == [(102,)]
    assert annotated_items(dbf, "p") == ["a"]
    # the same again: nothing changes, nothing doubles
    c = apply_collect(dbf, URL, 7, second, [100, 101, 103])
    assert (c["unchanged"], c["deleted"], c["tasks_deleted"]) == (1, 0, 0)
    assert db.query(dbf, "SELECT count(*) FROM annotations") == [(3,)]


def test_a_failing_collect_changes_nothing(dbf):
    apply_collect(dbf, URL, 7, [_ann(100, 1, "a", "yes")], [100])
    before = db.query(dbf, "SELECT * FROM annotations")
    bad = [_ann(101, 2, "b", "x"), {**_ann(102, 3, "c", "y"), "task_id": "not a number"}]
    with pytest.raises(Exception):  # noqa: B017 - the Arrow conversion refuses the row
        apply_collect(dbf, URL, 7, bad, [])
    assert db.query(dbf, "SELECT * FROM annotations") == before


def test_label_config_and_responses():
    assert config_problems(LABEL_CONFIG) == []
    other = '<View><Text name="t" value="$text"/><Choices name="c" toName="t"/></View>'
    problems = config_problems(other)
    assert len(problems) == 3 and "no tag shows $instruction" in problems[0]
    assert config_problems("<View><Text")[0].startswith("not valid XML")
    detached = LABEL_CONFIG.replace('toName="instruction"', 'toName="elsewhere"')
    assert config_problems(detached) == ['<TextArea name="response"> is not attached (toName) '
                                         "to a tag that shows the task"]
    result = [{"from_name": "response", "type": "textarea", "value": {"text": ["a", "b"]}},
              {"from_name": "other", "type": "textarea", "value": {"text": ["no"]}}]
    assert response_text(result) == "a\nb" and response_text([]) is None
    payload = task_payload({"instruction": "Do", "input": None, "item_id": "i", "pool_name": "p",
                            "strategy": "sift", "rank": 1, "batch": 2, "score": 0.5,
                            "source": "s", "cost": 1.0}, "r")
    assert payload["data"]["input"] == "" and payload["data"]["priority"] == 0.5


def _jwt(kind: str) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'HS256'})}.{enc({'token_type': kind})}.sig"


def test_personal_access_token_is_refreshed_once_on_401():
    pat, calls = _jwt("refresh"), []
    access = iter(["acc-1", "acc-2"])

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append((req.url.path, req.headers.get("authorization")))
        if req.url.path == "/api/token/refresh/":
            assert json.loads(req.content) == {"refresh": pat}
            return httpx.Response(200, json={"access": next(access)})
        if req.headers["authorization"] == "Bearer acc-1":  # expired
            return httpx.Response(401, json={"detail": "Token is expired"})
        return httpx.Response(200, json={"count": 0, "next": None, "results": []})

    with LabelStudio(URL, pat, transport=httpx.MockTransport(handler)) as ls:
        assert ls.projects() == []
    assert [c[0] for c in calls] == ["/api/token/refresh/", "/api/projects/",
                                     "/api/token/refresh/", "/api/projects/"]
    assert calls[-1][1] == "Bearer acc-2"


@pytest.mark.parametrize(("token", "status", "detail", "message"), [
    (_jwt("refresh"), 401, "Token is invalid", "refused the personal access token"),
    ("0123abcd", 401, "legacy token authentication has been disabled for this organization",
     r"refused the legacy token in LABEL_STUDIO_API_KEY \(401 on GET /api/projects/: legacy"),
])
def test_refused_tokens_are_named(token, status, detail, message):
    transport = httpx.MockTransport(lambda req: httpx.Response(status, json={"detail": detail}))
    with LabelStudio(URL, token, transport=transport) as ls, \
            pytest.raises(LabelStudioError, match=message):
        ls.projects()


def test_unreachable_server_and_non_label_studio_answers():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with LabelStudio(f"http://127.0.0.1:{port}", "tok") as ls, \
            pytest.raises(LabelStudioError, match="cannot reach Label Studio at"):
        ls.projects()
    html = httpx.MockTransport(lambda req: httpx.Response(200, text="<html>hi</html>"))
    with LabelStudio(URL, "tok", transport=html) as ls, \
            pytest.raises(LabelStudioError, match="did not answer JSON"):
        ls.projects()
    with pytest.raises(LabelStudioError, match="must start with http"):
        LabelStudio("127.0.0.1:8080", "tok")
