"""Prefect artifacts summarising runs (no-ops outside a flow run, so tasks stay testable)."""

from __future__ import annotations

import re
from typing import Any


def artifact_key(text: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100] or "run"


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def markdown(key: str, body: str, description: str = "") -> None:
    if not _in_run():
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=body, key=artifact_key(key), description=description)


def md_table(rows: list[dict[str, Any]], floatfmt: str = ".4g") -> str:
    """A Markdown table from a list of dicts with the same keys."""
    if not rows:
        return "_(none)_"
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        if v is None:  # a metric that does not apply to this row
            return ""
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
