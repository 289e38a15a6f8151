"""The LM stage's Ray Data scheduler poll: set for the stage, restored afterwards."""

from __future__ import annotations


def test_scheduler_poll_is_set_and_restored():
    from ray.data._internal.execution import streaming_executor_state as state

    from tasks.pool.lm_scoring import _scheduler_poll

    before = state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S
    old = _scheduler_poll(7.5)
    assert old == before and state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == 7.5
    assert _scheduler_poll(None) is None  # None leaves it alone
    assert state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == 7.5
    _scheduler_poll(old)
    assert state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == before
