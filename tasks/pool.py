"""Reading an unlabeled instruction pool: JSONL, Parquet or CSV, validated row by row.

Fields: ``instruction`` (required, non-empty string), ``input`` (optional string),
``source`` (optional string; ``task`` is accepted as its alias; default "unknown"),
``item_id`` (optional string or integer; default: a stable id from a hash of the
content), ``output`` (optional; a non-empty output marks the item as already labelled:
it is stored but never selected), ``cost`` (optional number >= 0: the annotation cost
used instead of token counts).

Bad rows (malformed JSON, not an object, invalid UTF-8, missing or empty instruction,
wrong types, an item_id reused for different content) are quarantined with file, line
and reason; with ``strict`` the first one raises ``ValueError("FILE:LINE: reason")``.
Exact duplicates (same instruction and input) are collapsed into the first occurrence
(an output found on any copy is kept) and counted.

Parsing is one pass over the rows (JSON decoding is per line by nature, so that a bad
line can be named); everything after it works on Arrow/numpy columns.  The validated
pool is written to ``<workspace>/pools/<pool_name>/items.parquet`` for the Ray stages.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks import db
from tasks.prompt_files import iter_prompt_lines
from tasks.workspace import check_name, workspace_root

log = logging.getLogger(__name__)

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
           ".csv": "csv"}
RAW_MAX_CHARS = 2000  # of a quarantined row kept for inspection

POOL_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("instruction", pa.string()), ("input", pa.string()),
    ("source", pa.string()), ("output", pa.string()), ("cost", pa.float64()),
    ("file", pa.string()), ("line", pa.int64()),
])


@dataclass
class Pool:
    """A validated pool: ``items`` (Arrow, :data:`POOL_SCHEMA`, one row per distinct item)
    and the quarantined rows as dicts (file, line, reason, raw)."""

    items: pa.Table
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    n_rows: int = 0
    n_duplicates: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def labeled(self) -> list[bool]:
        return [o is not None for o in self.items.column("output").to_pylist()]


def content_id(instruction: str, input_text: str) -> str:
    """Stable item id from the content: the same text always gets the same id."""
    blob = json.dumps([instruction, input_text], ensure_ascii=False).encode("utf-8")
    return "h" + hashlib.sha256(blob).hexdigest()[:16]


def discover_pool_files(pool: str | Path) -> list[Path]:
    """A pool file, a folder of pool files, or a glob; sorted."""
    path = Path(pool).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in FORMATS]
    else:
        files = [Path(p) for p in sorted(glob.glob(str(pool), recursive=True))
                 if Path(p).suffix.lower() in FORMATS]
        if not files:
            raise FileNotFoundError(f"pool {pool!r}: no such file, folder or glob match")
    bad = [f for f in files if f.suffix.lower() not in FORMATS]
    if bad:
        raise ValueError(f"{bad[0]}: unsupported pool format (use .jsonl, .parquet or .csv)")
    if not files:
        raise FileNotFoundError(f"pool {pool!r}: no .jsonl, .parquet or .csv files")
    return [f.resolve() for f in files]


class BadRow(ValueError):
    """A row that cannot be used; ``str()`` is the reason."""


def _opt_str(obj: dict, key: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):  # pandas-written Parquet/CSV nulls
        return None
    if not isinstance(v, str):
        raise BadRow(f"field '{key}' must be a string, got {type(v).__name__}")
    return v


def validate_row(obj: Any) -> dict[str, Any]:
    """One pool record from a parsed row, or :class:`BadRow` with the reason."""
    if not isinstance(obj, dict):
        raise BadRow(f"expected a JSON object, got {type(obj).__name__}")
    instruction = obj.get("instruction")
    if instruction is None:
        raise BadRow("missing field 'instruction'")
    if not isinstance(instruction, str):
        raise BadRow(f"field 'instruction' must be a string, got {type(instruction).__name__}")
    if not instruction.strip():
        raise BadRow("empty field 'instruction'")
    input_text = _opt_str(obj, "input") or ""
    source = _opt_str(obj, "source")
    if source is None:
        source = _opt_str(obj, "task")
    output = _opt_str(obj, "output")
    item_id = obj.get("item_id")
    if isinstance(item_id, bool) or (item_id is not None
                                     and not isinstance(item_id, (str, int))):
        raise BadRow(f"field 'item_id' must be a string or integer, got {type(item_id).__name__}")
    item_id = str(item_id).strip() if item_id is not None and str(item_id).strip() else None
    cost = obj.get("cost")
    if cost is not None and not (isinstance(cost, float) and math.isnan(cost)):
        if isinstance(cost, bool) or not isinstance(cost, (int, float)):
            raise BadRow(f"field 'cost' must be a number, got {type(cost).__name__}")
        if not math.isfinite(cost) or cost < 0:
            raise BadRow(f"field 'cost' must be finite and >= 0, got {cost!r}")
        cost = float(cost)
    else:
        cost = None
    for name, text in (("instruction", instruction), ("input", input_text),
                       ("output", output or ""), ("source", source or "")):
        try:  # lone surrogates: undecodable CSV bytes, or "\\udcxx" escapes in JSON
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRow(f"invalid UTF-8 in field '{name}'") from None
    return {"item_id": item_id, "instruction": instruction, "input": input_text,
            "source": (source or "").strip() or "unknown",
            "output": output if output and output.strip() else None, "cost": cost}


def _iter_jsonl(path: Path):
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield lineno, raw.decode("utf-8", "replace"), BadRow(
                    f"invalid UTF-8 (byte {err.start}: {err.reason})")
                continue
            try:
                yield lineno, text, json.loads(text)
            except json.JSONDecodeError as err:
                yield lineno, text, BadRow(f"malformed JSON: {err.msg} (column {err.colno})")


def _iter_csv(path: Path):
    # surrogateescape keeps undecodable bytes as lone surrogates that validate_row rejects,
    # so one bad byte quarantines one row instead of failing the file
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "instruction" not in reader.fieldnames:
            raise ValueError(f"{path}:1: CSV header has no 'instruction' column "
                             f"(got {reader.fieldnames})")
        start = 2
        for row in reader:
            line = start
            start = reader.line_num + 1
            if None in row:
                yield line, str(row), BadRow("more fields than the header")
                continue
            obj: dict[str, Any] = {k: (v if v != "" else None) for k, v in row.items()}
            if obj.get("instruction") is None:
                obj["instruction"] = row.get("instruction")  # "" -> reported as empty
            if obj.get("cost") is not None:
                try:
                    obj["cost"] = float(obj["cost"])
                except ValueError:
                    yield line, str(row), BadRow(f"field 'cost' is not a number: {obj['cost']!r}")
                    continue
            yield line, str(row), obj


def _iter_parquet(path: Path):
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if "instruction" not in names:
        raise ValueError(f"{path}: Parquet file has no 'instruction' column (got {names})")
    row = 0
    for batch in pf.iter_batches(batch_size=65536):
        for obj in batch.to_pylist():
            row += 1
            yield row, None, obj


def read_pool(pool: str | Path, *, strict: bool = False) -> Pool:
    """Read and validate every pool file (see the module docstring).

    Line numbers are 1-based physical lines for JSONL, the record's first line for CSV
    (the header is line 1) and the 1-based row number for Parquet.
    """
    files = discover_pool_files(pool)
    cols: dict[str, list] = {k: [] for k in POOL_SCHEMA.names}
    quarantined: list[dict[str, Any]] = []
    by_content: dict[str, int] = {}
    by_id: dict[str, str] = {}
    n_rows = n_dupes = 0
    for path in files:
        kind = FORMATS[path.suffix.lower()]
        rows = {"jsonl": _iter_jsonl, "csv": _iter_csv, "parquet": _iter_parquet}[kind](path)
        for line, raw, obj in rows:
            n_rows += 1
            try:
                if isinstance(obj, BadRow):
                    raise obj
                rec = validate_row(obj)
                key = content_id(rec["instruction"], rec["input"])
                item_id = rec["item_id"] or key
                if item_id in by_id and by_id[item_id] != key:
                    raise BadRow(f"item_id {item_id!r} already used for different content")
            except BadRow as err:
                if strict:
                    raise ValueError(f"{path}:{line}: {err}") from None
                if raw is None:
                    raw = json.dumps(obj, default=str, ensure_ascii=False)
                quarantined.append({"file": str(path), "line": int(line), "reason": str(err),
                                    "raw": raw[:RAW_MAX_CHARS]})
                continue
            if key in by_content:  # exact duplicate: keep the first, keep any label
                n_dupes += 1
                i = by_content[key]
                if cols["output"][i] is None and rec["output"] is not None:
                    cols["output"][i] = rec["output"]
                continue
            by_content[key] = len(cols["item_id"])
            by_id[item_id] = key
            rec["item_id"] = item_id
            rec["file"], rec["line"] = str(path), int(line)
            for k in POOL_SCHEMA.names:
                cols[k].append(rec[k])
    items = pa.table(cols, schema=POOL_SCHEMA)
    return Pool(items=items, quarantined=quarantined, n_rows=n_rows, n_duplicates=n_dupes,
                files=[str(f) for f in files])


def pool_dir(workspace: str | Path | None, pool_name: str) -> Path:
    return workspace_root(workspace) / "pools" / check_name(pool_name, "pool name")


def write_pool_parquet(pool: Pool, workspace: str | Path | None, pool_name: str) -> Path:
    """The validated items as Parquet (read by the Ray stages); written atomically."""
    folder = pool_dir(workspace, pool_name)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "items.parquet"
    tmp = folder / ".items.parquet.tmp"
    pq.write_table(pool.items, tmp, row_group_size=8192)
    os.replace(tmp, target)
    return target


def store_pool(dbf: str | Path, run_id: str, pool_name: str, pool: Pool) -> None:
    """Replace ``pool_name``'s rows in ``pool_items`` and this run's ``quarantine`` rows,
    in one transaction each (a rerun never duplicates)."""
    t = pool.items
    rows = pa.table({
        "pool_name": pa.array([pool_name] * t.num_rows, pa.string()),
        **{k: t.column(k) for k in ("item_id", "instruction", "input", "source", "output",
                                    "cost", "file", "line")},
    })
    db.replace_rows(dbf, "pool_items", rows, "pool_name = ?", [pool_name])
    q = pool.quarantined
    db.replace_run_rows(dbf, "quarantine", run_id, pa.table({
        "run_id": pa.array([run_id] * len(q), pa.string()),
        "pool_name": pa.array([pool_name] * len(q), pa.string()),
        "file": pa.array([r["file"] for r in q], pa.string()),
        "line": pa.array([r["line"] for r in q], pa.int64()),
        "reason": pa.array([r["reason"] for r in q], pa.string()),
        "raw": pa.array([r["raw"] for r in q], pa.string()),
    }))


def read_targets(path: str | Path) -> list[str]:
    """Target prompts for SIFT: JSONL (``text``/``prompt``/``query``/``instruction`` [+
    ``input``]) or plain text, one prompt per line.  Errors name file and line."""
    from sift_ops.generation import prompt_text

    out = []
    for _, text, obj in iter_prompt_lines(path, "targets file"):
        extra = (obj or {}).get("input")
        out.append(prompt_text(text, extra if isinstance(extra, str) else None))
    return out
