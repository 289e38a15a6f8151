"""Prefect retries: transient failures are retried, bad input fails at once."""

from __future__ import annotations

import pytest
from prefect import flow, task

from tasks.runtime.locks import WorkspaceBusy
from tasks.runtime.retry import TRANSIENT_RETRIES

CALLS: list[str] = []


@task(**TRANSIENT_RETRIES)
def flaky(kind: str) -> str:
    CALLS.append(kind)
    if len(CALLS) == 1:
        raise {"io": OSError, "value": ValueError, "busy": WorkspaceBusy}[kind]("boom")
    return "ok"


@flow
def run_flaky(kind: str) -> str:
    return flaky.with_options(retry_delay_seconds=0, retry_jitter_factor=None)(kind)


@pytest.mark.parametrize(("kind", "ok", "calls"),
                         [("io", True, 2), ("value", False, 1), ("busy", False, 1)])
def test_transient_errors_are_retried_and_bad_input_is_not(prefect_harness, kind, ok, calls):
    CALLS.clear()
    if ok:
        assert run_flaky(kind) == "ok"
    else:
        with pytest.raises(Exception, match="boom"):
            run_flaky(kind)
    assert len(CALLS) == calls
