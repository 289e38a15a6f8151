"""Shared fixtures: offline models, an isolated Prefect (test harness) and a local Ray."""

from __future__ import annotations

import os
import tempfile

import pytest

# Before prefect/transformers are imported anywhere: keep all state out of the home folder
# and never reach for a hub.
_STATE = tempfile.mkdtemp(prefix="sift-tests-")
os.environ.setdefault("PREFECT_HOME", os.path.join(_STATE, "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect API (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray instance shared by the session (2 CPUs, like the CI machine)."""
    import ray

    from tasks.runtime.ray_runtime import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


_BACKGROUND: list = []


def pytest_collection_modifyitems(session, config, items):
    """When the Label Studio test is selected and its cached install is missing, start the
    install now, in the background: it overlaps the tests that run before it (the test
    waits for it on the cache's lock)."""
    if any(i.nodeid.startswith("tests/e2e/test_label_studio.py") for i in items):
        import subprocess
        import sys
        from pathlib import Path

        from tests.e2e import label_studio

        if label_studio.installed() is None:
            _BACKGROUND.append(subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.label_studio"],
                cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True))


def pytest_sessionfinish(session, exitstatus):
    from tests.e2e.procs import stop

    for proc in _BACKGROUND:  # an install still running (the test was deselected, failed)
        stop(proc)
