"""Where things live on disk (docs/architecture.md, "Workspace on disk").

    <workspace>/corpora/<name>/manifest.json
    <workspace>/corpora/<name>/embeddings/part-FFFFF-BBBBB.parquet
    <workspace>/corpora/<name>/quarantine/part-FFFFF-BBBBB.jsonl
    <workspace>/corpora/<name>/index/index.json, trained.faiss, partitions/, store/
                                        (see tasks/index/build.py)
    <workspace>/curation.duckdb
    <workspace>/reports/<run_id>/...     plots written by flows
    <workspace>/handoff/<run_id>/...
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

DEFAULT_WORKSPACE = "workspace"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def workspace_root(workspace: str | Path | None = None) -> Path:
    """The workspace: the argument, else $SIFT_WORKSPACE, else ./workspace."""
    root = workspace or os.environ.get("SIFT_WORKSPACE") or DEFAULT_WORKSPACE
    return Path(root).expanduser().resolve()


def check_name(name: str, what: str = "corpus name") -> str:
    if not _NAME_RE.match(name or ""):
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-' (max 128 chars)"
        )
    return name


class CorpusPaths:
    """Paths of one embedded corpus inside a workspace."""

    def __init__(self, workspace: str | Path | None, name: str) -> None:
        self.workspace = workspace_root(workspace)
        self.name = check_name(name)
        self.root = self.workspace / "corpora" / name
        self.manifest = self.root / "manifest.json"
        self.embeddings = self.root / "embeddings"
        self.quarantine = self.root / "quarantine"
        self.index = self.root / "index"
        self.index_meta = self.index / "index.json"
        self.trained = self.index / "trained.faiss"

    def shard_files(self) -> list[Path]:
        return sorted(self.embeddings.glob("part-*.parquet"))

    def load_manifest(self) -> dict[str, Any]:
        if not self.manifest.is_file():
            raise FileNotFoundError(
                f"corpus {self.name!r} has no manifest at {self.manifest}; "
                f"run `sift-curate embed --name {self.name} --corpus ...` first"
            )
        return json.loads(self.manifest.read_text())


def db_path(workspace: str | Path | None = None) -> Path:
    return workspace_root(workspace) / "curation.duckdb"


def lock_path(workspace: str | Path | None, kind: str, name: str) -> Path:
    """The flock file guarding one resource (e.g. kind "corpus") of the workspace."""
    return workspace_root(workspace) / ".locks" / f"{kind}-{check_name(name, kind + ' name')}.lock"


def reports_dir(workspace: str | Path | None, run_id: str) -> Path:
    path = workspace_root(workspace) / "reports" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path
