"""Handoff files for annotation teams, one file per annotation batch, plus a manifest.

Formats:

``labelstudio``  Label Studio import JSON: a list of tasks ``{"data": {...}, "predictions":
                 [{"model_version": ..., "score": s, "result": []}]}``; the prediction
                 score is the strategy's priority, so annotators can sort tasks by it.
``jsonl``        one ``{"text": prompt, "meta": {...}}`` per line (Prodigy / Argilla style).
``csv``          a header and one row per item.

Layout: ``<out>/<run_id>/<strategy>/batch-0001.<ext>`` ... and ``manifest.json`` (format,
run, strategy, files with n_items and sha256).  An existing handoff folder is never
overwritten unless ``force``; files are written to temporary names and renamed, the
manifest last, so a manifest always describes complete files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from sift_ops.generation import prompt_text
from tasks.runtime.atomic import write_bytes_atomic, write_json_atomic
from tasks.storage import db

FORMATS = {"labelstudio": "json", "jsonl": "jsonl", "csv": "csv"}
CSV_COLUMNS = ("item_id", "rank", "batch", "strategy", "score", "source", "cost",
               "instruction", "input")


class HandoffExists(FileExistsError):
    """The handoff folder already holds files (use --force to replace them)."""


def run_strategies(dbf: str | Path, run_id: str) -> list[str]:
    rows = db.query(dbf, "SELECT DISTINCT strategy FROM selections WHERE run_id = ? "
                         "ORDER BY 1", [run_id])
    return [r[0] for r in rows]


def fetch_selection(dbf: str | Path, run_id: str, strategy: str) -> list[dict[str, Any]]:
    """The selected items of one strategy of a run, in rank order, with their text."""
    with db.connect(dbf, read_only=True) as con:
        cur = con.execute(
            """SELECT s.item_id, s.rank, s.batch, s.strategy, s.score, s.grp, s.cost,
                      p.instruction, p.input, p.source, s.pool_name
               FROM selections s
               JOIN pool_items p ON p.pool_name = s.pool_name AND p.item_id = s.item_id
               WHERE s.run_id = ? AND s.strategy = ? ORDER BY s.rank""", [run_id, strategy])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _labelstudio(rows: list[dict], run_id: str) -> bytes:
    tasks = [{
        "data": {"text": prompt_text(r["instruction"], r["input"]),
                 "instruction": r["instruction"], "input": r["input"] or "",
                 "item_id": r["item_id"], "source": r["source"], "rank": r["rank"],
                 "batch": r["batch"]},
        "predictions": [{"model_version": f"sift-curate/{r['strategy']}",
                         "score": float(r["score"]), "result": []}],
        "meta": {"run_id": run_id, "pool_name": r["pool_name"]},
    } for r in rows]
    return (json.dumps(tasks, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def _jsonl(rows: list[dict], run_id: str) -> bytes:
    lines = [json.dumps({
        "text": prompt_text(r["instruction"], r["input"]),
        "meta": {"item_id": r["item_id"], "instruction": r["instruction"],
                 "input": r["input"] or "", "source": r["source"], "strategy": r["strategy"],
                 "rank": r["rank"], "batch": r["batch"], "score": float(r["score"]),
                 "cost": r["cost"], "run_id": run_id, "pool_name": r["pool_name"]},
    }, ensure_ascii=False) for r in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _csv(rows: list[dict], run_id: str) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([r[c] if c != "input" else (r["input"] or "") for c in CSV_COLUMNS])
    return buf.getvalue().encode("utf-8")


_WRITERS = {"labelstudio": _labelstudio, "jsonl": _jsonl, "csv": _csv}


def write_handoff(rows: list[dict], fmt: str, folder: Path, run_id: str, strategy: str,
                  *, force: bool = False) -> dict[str, Any]:
    """Write one file per batch and ``manifest.json`` into ``folder``; return the manifest.

    Raises :class:`HandoffExists` if ``folder`` is not empty and not ``force``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown handoff format {fmt!r}; choose {', '.join(FORMATS)}")
    if not rows:
        raise ValueError(f"run {run_id!r} selected no items with strategy {strategy!r}")
    if folder.exists() and any(folder.iterdir()):
        if not force:
            raise HandoffExists(f"{folder} already holds a handoff; pass --force to replace it")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ext = FORMATS[fmt]
    batches: dict[int, list[dict]] = {}
    for r in rows:
        batches.setdefault(int(r["batch"]), []).append(r)
    files = []
    for b in sorted(batches):
        data = _WRITERS[fmt](batches[b], run_id)
        path = folder / f"batch-{b:04d}.{ext}"
        write_bytes_atomic(path, data)
        files.append({"file": path.name, "path": str(path), "batch": b,
                      "n_items": len(batches[b]), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"run_id": run_id, "strategy": strategy, "format": fmt,
                "n_items": len(rows), "n_batches": len(files), "files": files,
                "created_at": datetime.now(timezone.utc).isoformat()}
    write_json_atomic(folder / "manifest.json", manifest)
    return manifest


def record_handoff(dbf: str | Path, manifest: dict[str, Any], folder: Path) -> int:
    """Replace this folder's rows in ``handoffs`` (other handoffs of the run stay)."""
    now = datetime.now(timezone.utc)
    files = manifest["files"]
    rows = pa.table({
        "run_id": pa.array([manifest["run_id"]] * len(files), pa.string()),
        "path": pa.array([f["path"] for f in files], pa.string()),
        "format": pa.array([manifest["format"]] * len(files), pa.string()),
        "n_items": pa.array([f["n_items"] for f in files], pa.int64()),
        "sha256": pa.array([f["sha256"] for f in files], pa.string()),
        "created_at": pa.array([now] * len(files), pa.timestamp("us", tz="UTC")),
    })
    return db.replace_rows(dbf, "handoffs", rows, "run_id = ? AND starts_with(path, ?)",
                           [manifest["run_id"], str(folder) + os.sep])
