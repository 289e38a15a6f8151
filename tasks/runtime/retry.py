"""Retry policy for Prefect tasks: retry transient failures with backoff, never bad input.

A lost Ray worker, a full disk that was cleaned, a network filesystem hiccup: worth
another try, and safe, because every task here resumes or replaces (shards are skipped
once written, DuckDB rows are replaced per run). A malformed file, an unknown strategy or
a busy workspace will fail the same way again, so those fail at once with their message.
"""

from __future__ import annotations

from typing import Any

from tasks.runtime.locks import WorkspaceBusy

#: Exceptions that say the input or the request is wrong: retrying cannot help.
PERMANENT = (ValueError, TypeError, KeyError, LookupError, FileNotFoundError,
             PermissionError, NotImplementedError, WorkspaceBusy)


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is a permanent error."""
    exc = getattr(state, "data", None)
    return isinstance(exc, BaseException) and not isinstance(exc, PERMANENT)


#: ``@task(**TRANSIENT_RETRIES)``: 2 retries after ~5 s and ~30 s (jittered).
TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [5, 30],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": is_transient,
}
