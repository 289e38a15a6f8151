"""Process helpers shared by the end-to-end tests: the installed executables, a clean
environment per test, free loopback ports, and stopping a started process group."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
CLI = shutil.which("sift-curate", path=str(BIN)) or "sift-curate"
PREFECT = shutil.which("prefect", path=str(BIN)) or "prefect"
RAY = shutil.which("ray", path=str(BIN)) or "ray"


def clean_env(workspace: Path, prefect_home: Path, **extra: str) -> dict:
    """This process' environment without Prefect/Ray/sift settings, pointed at a workspace
    and a Prefect home of the test's own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "RAY_ADDRESS", "SIFT_"))}
    env.update({"SIFT_WORKSPACE": str(workspace), "PREFECT_HOME": str(prefect_home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", **extra})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the process group a test started (start_new_session=True); SIGKILL it if it
    has not exited 30 s later."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    except ProcessLookupError:
        pass
