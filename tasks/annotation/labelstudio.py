"""Label Studio over its REST API (httpx): projects, task import, annotations.

Authentication: ``LABEL_STUDIO_API_KEY`` holds a personal access token (Label Studio 1.18+;
a JWT *refresh* token, exchanged at ``/api/token/refresh/`` for a five-minute access token
sent as ``Authorization: Bearer``; renewed once when a request answers 401), or a legacy
token (sent as ``Authorization: Token``; disabled by default since 1.23).

Every failure a user can cause or meet is a :class:`LabelStudioError` with one clear
message: the server cannot be reached, the token is refused, a project's labelling config
does not fit, an HTTP error with the server's own ``detail``.

The labelling config (:data:`LABEL_CONFIG`) shows the instruction and its input, a text
area named ``response`` for the answer, and the strategy's priority; each task's ``data``
also carries ``item_id``, ``run_id``, ``strategy``, ``rank``, ``batch`` and ``priority``
(columns of the Data Manager, sortable there).
"""

from __future__ import annotations

import base64
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
#: the control whose text is the annotated response
RESPONSE = "response"

LABEL_CONFIG = """<View>
  <Header value="Instruction"/>
  <Text name="instruction" value="$instruction"/>
  <Header value="Input (may be empty)"/>
  <Text name="input" value="$input"/>
  <Header value="Response"/>
  <TextArea name="response" toName="instruction" rows="8" editable="true"
            maxSubmissions="1" required="true" placeholder="Write the response"/>
  <Header size="6"
          value="priority $priority: rank $rank of $strategy (batch $batch), item $item_id"/>
</View>"""


class LabelStudioError(RuntimeError):
    """Label Studio refused or could not be reached; the message says what to do.
    ``status``: the HTTP status when the server answered (None otherwise)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _httpx():
    try:
        import httpx
    except ImportError as err:  # pragma: no cover - httpx comes with prefect
        raise LabelStudioError("the Label Studio client needs httpx: "
                               "pip install 'sift-curation[labelstudio]'") from err
    return httpx


def config_problems(label_config: str) -> list[str]:
    """What keeps ``label_config`` from serving instruction -> response tasks ([] = fits):
    an object tag showing ``$instruction`` and one showing ``$input``, and a ``TextArea``
    named ``response`` attached to one of the project's object tags."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as err:
        return [f"not valid XML ({err})"]
    problems = []
    objects = {el.get("name"): el.get("value") for el in root.iter()
               if el.get("name") and el.get("value", "").startswith("$")}
    for field in ("instruction", "input"):
        if f"${field}" not in objects.values():
            problems.append(f"no tag shows ${field}")
    areas = [el for el in root.iter("TextArea") if el.get("name") == RESPONSE]
    if not areas:
        problems.append(f'no <TextArea name="{RESPONSE}"> for the response')
    elif not set((areas[0].get("toName") or "").split(",")) & set(objects):
        problems.append(f'<TextArea name="{RESPONSE}"> is not attached (toName) to a tag '
                        "that shows the task")
    return problems


def response_text(result: list[dict[str, Any]] | None) -> str | None:
    """The annotated response in an annotation's ``result`` (None when there is none);
    several text-area entries are joined by newlines."""
    texts = []
    for r in result or []:
        if r.get("from_name") == RESPONSE and r.get("type") == "textarea":
            texts += [str(t) for t in (r.get("value") or {}).get("text") or []]
    return "\n".join(texts) if texts else None


def _jwt_type(token: str) -> str | None:
    """``token_type`` of a JWT (``refresh`` for a personal access token), else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    return payload.get("token_type") if isinstance(payload, dict) else None


def token_from_env(token: str | None = None) -> str:
    """The API token: ``token`` or ``$LABEL_STUDIO_API_KEY``, or an error saying how to
    get one."""
    token = (token or os.environ.get(TOKEN_ENV) or "").strip()
    if not token:
        raise LabelStudioError(
            f"set {TOKEN_ENV} to a Label Studio personal access token (Label Studio: "
            "Account & Settings > Personal Access Token)")
    return token


class LabelStudio:
    """A small REST client; use as a context manager (closes its connections)."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 transport: Any | None = None) -> None:
        httpx = _httpx()
        if not url or not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"Label Studio URL must start with http:// or https://, "
                                   f"got {url!r}")
        self.url = url.rstrip("/")
        self._token = token
        self._kind = _jwt_type(token)
        self._access: str | None = token if self._kind == "access" else None
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  follow_redirects=False)

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport and auth ---------------------------------------------------------
    def _send(self, method: str, path: str, **kw: Any):
        httpx = _httpx()
        try:
            return self._http.request(method, path, **kw)
        except httpx.TransportError as err:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} "
                                   f"({type(err).__name__}: {err}); is it running?") from err

    @staticmethod
    def _detail(resp) -> str:
        try:
            body = resp.json()
        except ValueError:
            return resp.text[:200].strip() or resp.reason_phrase
        if isinstance(body, dict):
            detail = body.get("detail") or body.get("message") or ""
            errs = body.get("validation_errors")
            return f"{detail} {json.dumps(errs)}".strip() if errs else str(detail or body)
        return str(body)[:300]

    def _refresh(self) -> str:
        resp = self._send("POST", "/api/token/refresh/", json={"refresh": self._token})
        if resp.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the personal access token in "
                f"{TOKEN_ENV} ({resp.status_code}: {self._detail(resp)}); create a new one "
                "under Account & Settings > Personal Access Token")
        if resp.status_code != 200:
            raise LabelStudioError(f"Label Studio at {self.url}: token refresh failed "
                                   f"({resp.status_code}: {self._detail(resp)})")
        self._access = resp.json()["access"]
        return self._access

    def _headers(self) -> dict[str, str]:
        if self._kind in ("refresh", "access"):
            return {"Authorization": f"Bearer {self._access or self._refresh()}"}
        return {"Authorization": f"Token {self._token}"}

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 204),
                **kw: Any) -> Any:
        """Send an authenticated request; returns the decoded JSON body (None when empty).
        A 401 renews the access token once; other errors raise :class:`LabelStudioError`."""
        resp = self._send(method, path, headers=self._headers(), **kw)
        if resp.status_code == 401 and self._kind == "refresh":  # the access token expired
            self._access = None
            resp = self._send(method, path, headers=self._headers(), **kw)
        if resp.status_code in (401, 403):
            kind = "personal access token" if self._kind else "legacy token"
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the {kind} in {TOKEN_ENV} "
                f"({resp.status_code} on {method} {path}: {self._detail(resp)})",
                resp.status_code)
        if resp.status_code not in ok:
            raise LabelStudioError(f"Label Studio at {self.url}: {method} {path} answered "
                                   f"{resp.status_code}: {self._detail(resp)}",
                                   resp.status_code)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as err:
            raise LabelStudioError(f"Label Studio at {self.url}: {method} {path} did not "
                                   f"answer JSON (is {self.url} a Label Studio server?)") from err

    # -- API ------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "/api/current-user/whoami")

    def projects(self) -> list[dict[str, Any]]:
        out, page = [], 1
        while True:
            body = self.request("GET", "/api/projects/", params={"page": page, "page_size": 100})
            out += body["results"]
            if not body.get("next"):
                return out
            page += 1

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project titled exactly ``title`` (an error if there are several)."""
        found = [p for p in self.projects() if p.get("title") == title]
        if len(found) > 1:
            ids = ", ".join(str(p["id"]) for p in found)
            raise LabelStudioError(f"Label Studio at {self.url} has {len(found)} projects "
                                   f"titled {title!r} (ids {ids}); rename all but one or "
                                   "pass another --project")
        return found[0] if found else None

    def project(self, project_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/projects/{int(project_id)}/")

    def create_project(self, title: str, label_config: str = LABEL_CONFIG,
                       description: str = "") -> dict[str, Any]:
        return self.request("POST", "/api/projects/", json={
            "title": title, "label_config": label_config, "description": description,
            "show_skip_button": True, "maximum_annotations": 1})

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Import ``tasks`` (``{"data": {...}}`` each) in one request; the new task ids in
        the same order."""
        body = self.request("POST", f"/api/projects/{int(project_id)}/import",
                            params={"return_task_ids": "true"}, json=tasks)
        ids = body.get("task_ids")
        if ids is None or len(ids) != len(tasks):
            raise LabelStudioError(f"Label Studio at {self.url}: import into project "
                                   f"{project_id} returned {body.get('task_count')} tasks "
                                   f"for {len(tasks)} sent and no matching task ids")
        return [int(i) for i in ids]

    def iter_tasks(self, project_id: int, *, annotations: bool = True,
                   page_size: int = 200) -> Iterator[dict[str, Any]]:
        """Every task of the project, page by page (with its annotations when asked)."""
        params: dict[str, Any] = {"project": int(project_id), "page_size": page_size}
        if annotations:
            params["fields"] = "all"
        seen, page = 0, 1
        while True:
            body = self.request("GET", "/api/tasks/", params={**params, "page": page})
            tasks = body.get("tasks", [])
            yield from tasks
            seen += len(tasks)
            if not tasks or seen >= int(body.get("total", 0)):
                return
            page += 1

    def delete_task(self, task_id: int) -> None:
        self.request("DELETE", f"/api/tasks/{int(task_id)}/", ok=(200, 204, 404))

    def users(self) -> dict[int, str]:
        """User id -> e-mail (or username) of the organisation's members."""
        body = self.request("GET", "/api/users/")
        rows = body if isinstance(body, list) else body.get("results", [])
        return {int(u["id"]): u.get("email") or u.get("username") or str(u["id"])
                for u in rows}
