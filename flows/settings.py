"""Environment defaults applied before Prefect is imported (CLI and serve entry points).

With no PREFECT_API_URL, Prefect runs each flow against a temporary local server on a
SQLite file; keeping PREFECT_HOME inside the workspace keeps its state next to the data.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure(workspace: str | Path | None = None) -> None:
    from tasks.runtime.workspace import workspace_root

    root = workspace_root(workspace)
    root.mkdir(parents=True, exist_ok=True)  # Prefect's SQLite file lives inside it
    os.environ["SIFT_WORKSPACE"] = str(root)
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the first start of the temporary server migrates a fresh SQLite file: can take 30 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    from tasks.runtime.ray_runtime import use_cluster_token

    use_cluster_token()
