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

Ingest streams (:func:`ingest_pool_files`): files are read a line (JSONL, CSV) or a
record batch (Parquet) at a time, and validated items and quarantined rows are written
as they come, in batches of :data:`BATCH_ROWS`, to ``<workspace>/pools/<pool_name>/
items.parquet`` (for the Ray stages and DuckDB) and ``quarantine.parquet``. Memory is one
batch plus 110-200 bytes of bookkeeping per distinct item (content key, position,
explicit item_id), never the pool's texts: 1M rows ingest in ~310 MB peak RSS
(``benchmarks/bench_pool_ingest.py``).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import heapq
import json
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.runtime.atomic import replace_durably
from tasks.runtime.workspace import check_name, workspace_root
from tasks.selection.prompt_files import iter_prompt_lines
from tasks.storage import db

log = logging.getLogger(__name__)

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
           ".csv": "csv"}
RAW_MAX_CHARS = 2000  # of a quarantined row kept for inspection

POOL_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("instruction", pa.string()), ("input", pa.string()),
    ("source", pa.string()), ("output", pa.string()), ("cost", pa.float64()),
    ("file", pa.string()), ("line", pa.int64()),
])
QUARANTINE_SCHEMA = pa.schema([
    ("file", pa.string()), ("line", pa.int64()), ("reason", pa.string()), ("raw", pa.string()),
])

#: Rows per Parquet row group and per write: with one batch per writer, this bounds the
#: row data the ingest holds at any time.
BATCH_ROWS = 8192
#: Characters of outputs found on later duplicates held in memory before they are spilled
#: to disk as a position-sorted run (see :class:`_OutputFixes`).
FIX_BUDGET_CHARS = 32 << 20
N_EXAMPLES = 10  # quarantined rows kept in memory for logs; all of them go to the file


@dataclass
class Pool:
    """A validated pool held in memory (:func:`read_pool`, for tests and small pools):
    ``items`` (Arrow, :data:`POOL_SCHEMA`, one row per distinct item) and the quarantined
    rows as dicts (file, line, reason, raw).  Flows use :func:`ingest_pool_files`."""

    items: pa.Table
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    n_rows: int = 0
    n_duplicates: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def labeled(self) -> list[bool]:
        return [o is not None for o in self.items.column("output").to_pylist()]


def _content_key(instruction: str, input_text: str) -> int:
    """The first 64 bits of the content's sha256, as an int (a compact dict key)."""
    blob = json.dumps([instruction, input_text], ensure_ascii=False).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def _key_id(key: int) -> str:
    return f"h{key:016x}"  # the same 16 hex digits as the digest's first 8 bytes


def content_id(instruction: str, input_text: str) -> str:
    """Stable item id from the content: the same text always gets the same id."""
    return _key_id(_content_key(instruction, input_text))


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
    for batch in _iter_batches(pf, BATCH_ROWS):
        rows = batch.to_pylist()
        del batch
        for obj in rows:
            row += 1
            yield row, None, obj


def _iter_batches(pf: pq.ParquetFile, batch_rows: int,
                  columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_rows`` rows, in file order, in bounded memory.

    One reader per row group, one thread, and Arrow's freed buffers handed back after each
    batch: a single ``iter_batches`` over a whole 940k-row file grew RSS by ~230 MB
    (measured; its reader keeps memory per row group read), this stays flat (~15 MB)."""
    for i in range(pf.num_row_groups):
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[i], columns=columns,
                                     use_threads=False):
            yield batch
            del batch
            _release_arrow_memory()


@dataclass
class IngestResult:
    """What :func:`ingest_pool_files` wrote and counted. It holds no row data, so it is
    cheap to return from a task whatever the pool's size."""

    items_path: Path  # POOL_SCHEMA, one row per distinct item, in first-seen order
    quarantine_path: Path  # QUARANTINE_SCHEMA, one row per quarantined row
    files: list[str]
    n_rows: int = 0  # rows read (blank JSONL lines are not rows)
    n_items: int = 0
    n_labeled: int = 0
    n_duplicates: int = 0
    n_quarantined: int = 0
    n_new: int = 0  # items not in pool_items for this pool before (set by the rank flow)
    examples: list[dict[str, Any]] = field(default_factory=list)  # first quarantined rows


def _release_arrow_memory() -> None:
    """Hand Arrow's freed buffers back to the OS: its allocator (mimalloc by default) keeps
    them otherwise, and RSS would creep up batch after batch."""
    pa.default_memory_pool().release_unused()


class _BatchWriter:
    """Rows (dicts with the schema's keys) appended one by one, written to ``path`` as
    Parquet row groups of ``batch_rows``.  ``rows`` is the unwritten tail: rows
    ``written`` .. ``written + len(rows) - 1``, still editable."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int) -> None:
        self.schema, self.batch_rows = schema, batch_rows
        self.rows: list[dict[str, Any]] = []
        self.written = 0
        self.writer = pq.ParquetWriter(path, schema)

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_batch(pa.RecordBatch.from_pylist(self.rows, schema=self.schema))
            self.written += len(self.rows)
            self.rows = []
            _release_arrow_memory()

    def close(self) -> None:
        self.flush()
        self.writer.close()


class _OutputFixes:
    """Outputs found on a later exact duplicate, to be written into the first copy's row
    (``position`` = that row's index in items.parquet) in a second streaming pass.

    Positions arrive in any order (the duplicate can come much later than its first copy),
    so this is an external sort: fixes are held in a dict until their text exceeds
    ``budget_chars``, then written as one position-sorted Parquet run; :meth:`merged`
    merges the runs and the rest in position order.  Each position is fixed at most once
    (only the first output found is kept), so positions are unique across runs.
    """

    def __init__(self, folder: Path, budget_chars: int) -> None:
        self.folder, self.budget_chars = folder, budget_chars
        self.pending: dict[int, str] = {}
        self.chars = 0
        self.runs: list[Path] = []
        self.count = 0

    def add(self, position: int, output: str) -> None:
        self.pending[position] = output
        self.chars += len(output)
        self.count += 1
        if self.chars > self.budget_chars:
            self._spill()

    def _spill(self) -> None:
        order = sorted(self.pending)
        path = self.folder / f"fixes-{len(self.runs):05d}.parquet"
        pq.write_table(pa.table({"position": pa.array(order, pa.int64()),
                                 "output": pa.array([self.pending[p] for p in order],
                                                    pa.string())}),
                       path, row_group_size=BATCH_ROWS)
        self.runs.append(path)
        self.pending.clear()
        self.chars = 0

    @staticmethod
    def _read_run(path: Path) -> Iterator[tuple[int, str]]:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(),
                           strict=True)

    def merged(self) -> Iterator[tuple[int, str]]:
        """Every fix as (position, output), by increasing position."""
        rest = sorted(self.pending.items())
        return heapq.merge(*(self._read_run(p) for p in self.runs), rest)


def _apply_fixes(src: Path, dst: Path, fixes: _OutputFixes) -> None:
    """Copy items ``src`` to ``dst`` one row group (one write batch) at a time, setting
    the fixed outputs."""
    pf = pq.ParquetFile(src)
    out_idx = POOL_SCHEMA.get_field_index("output")
    todo = fixes.merged()
    nxt = next(todo, None)
    start = 0
    with pq.ParquetWriter(dst, POOL_SCHEMA) as writer:
        for i in range(pf.num_row_groups):
            # one row group, one thread: iter_batches reads ahead and, with Arrow's
            # allocator keeping what it freed, grew RSS by ~150 MB on a 300k-item pool
            part = pf.read_row_group(i, use_threads=False)
            end = start + part.num_rows
            if nxt is not None and nxt[0] < end:
                outputs = part.column(out_idx).to_pylist()
                while nxt is not None and nxt[0] < end:
                    outputs[nxt[0] - start] = nxt[1]
                    nxt = next(todo, None)
                part = part.set_column(out_idx, "output", pa.array(outputs, pa.string()))
            writer.write_table(part)
            start = end
            del part
            _release_arrow_memory()
    if nxt is not None:  # a position past the last item: a bug, never a silent loss
        raise RuntimeError(f"output fix for item {nxt[0]} beyond the {start} items written")


class _Seen:
    """What the ingest remembers of the distinct items so far, and nothing else: per item
    its 64-bit content key -> position, one "has an output" byte and one "id is its content
    hash" byte; plus explicit item_ids -> content key.  About 110 bytes per item, plus
    ~90 per item with an explicit id (measured with tracemalloc at 1M items).

    Content-hash ids are not stored as strings: ``h<16 hex>`` is taken by key K exactly
    when K's item has no explicit id, which :meth:`taken_by_other` reads off the two
    structures.
    """

    def __init__(self) -> None:
        self.by_content: dict[int, int] = {}
        self.by_id: dict[str, int] = {}  # explicit item_id -> content key of its item
        self.has_output = bytearray()
        self.hash_id = bytearray()

    def taken_by_other(self, item_id: str, key: int, explicit: bool) -> bool:
        """Whether an item of other content than ``key`` already holds ``item_id``
        (``explicit``: the row gave it; else it is ``key``'s own hash id)."""
        owner = self.by_id.get(item_id)
        if owner is not None:
            return owner != key
        if not explicit or len(item_id) != 17 or item_id[0] != "h":
            return False  # a row's own hash id can only be held by its own content
        try:
            owner = int(item_id[1:], 16)
        except ValueError:
            return False
        pos = self.by_content.get(owner)
        # int() also takes upper case, "0x" and "_": only the exact spelling is the id
        return (owner != key and pos is not None and bool(self.hash_id[pos])
                and _key_id(owner) == item_id)

    def add(self, key: int, explicit_id: str | None, has_output: bool) -> int:
        """Register a new item; returns its position."""
        pos = len(self.has_output)
        self.by_content[key] = pos
        if explicit_id is not None:
            self.by_id[explicit_id] = key
        self.has_output.append(has_output)
        self.hash_id.append(explicit_id is None)
        return pos


def _validate_stream(files: list[Path], items: _BatchWriter, quarantine: _BatchWriter,
                     fixes: _OutputFixes, res: IngestResult, strict: bool) -> None:
    """The one pass over every row: validate, quarantine, deduplicate, write items.
    Row texts live only in the current write batch; across rows only :class:`_Seen`."""
    seen = _Seen()
    for path in files:
        kind = FORMATS[path.suffix.lower()]
        rows = {"jsonl": _iter_jsonl, "csv": _iter_csv, "parquet": _iter_parquet}[kind](path)
        fname = str(path)
        for line, raw, obj in rows:
            res.n_rows += 1
            try:
                if isinstance(obj, BadRow):
                    raise obj
                rec = validate_row(obj)
                key = _content_key(rec["instruction"], rec["input"])
                item_id = rec["item_id"] or _key_id(key)
                if seen.taken_by_other(item_id, key, rec["item_id"] is not None):
                    raise BadRow(f"item_id {item_id!r} already used for different content")
            except BadRow as err:
                if strict:
                    raise ValueError(f"{path}:{line}: {err}") from None
                if raw is None:
                    raw = json.dumps(obj, default=str, ensure_ascii=False)
                q = {"file": fname, "line": int(line), "reason": str(err),
                     "raw": raw[:RAW_MAX_CHARS]}
                quarantine.append(q)
                res.n_quarantined += 1
                if len(res.examples) < N_EXAMPLES:
                    res.examples.append(q)
                continue
            pos = seen.by_content.get(key)
            if pos is not None:  # exact duplicate: keep the first, keep any label
                res.n_duplicates += 1
                if rec["output"] is not None and not seen.has_output[pos]:
                    seen.has_output[pos] = 1
                    if pos >= items.written:  # first copy not written yet: fix it in place
                        items.rows[pos - items.written]["output"] = rec["output"]
                    else:
                        fixes.add(pos, rec["output"])
                continue
            seen.add(key, rec["item_id"], rec["output"] is not None)
            rec["item_id"] = item_id
            rec["file"], rec["line"] = fname, int(line)
            items.append(rec)
    res.n_items = len(seen.has_output)
    res.n_labeled = seen.has_output.count(1)


def ingest_pool_files(pool: str | Path, folder: str | Path, *, strict: bool = False,
                      batch_rows: int = BATCH_ROWS,
                      fix_budget_chars: int = FIX_BUDGET_CHARS) -> IngestResult:
    """Stream, validate and deduplicate every pool file (see the module docstring) into
    ``folder/items.parquet`` (:data:`POOL_SCHEMA`, one row per distinct item in first-seen
    order) and ``folder/quarantine.parquet`` (:data:`QUARANTINE_SCHEMA`).

    Both files are written under temporary names and moved into place only when the whole
    ingest succeeded; with ``strict`` the first bad row raises ``ValueError("FILE:LINE:
    reason")`` and leaves the previous files as they were.

    Line numbers are 1-based physical lines for JSONL, the record's first line for CSV
    (the header is line 1) and the 1-based row number for Parquet.

    Memory: one batch of ``batch_rows`` rows per writer and :class:`_Seen` (about 110
    bytes per distinct item, ~200 with an explicit item_id); outputs found on later
    duplicates beyond ``fix_budget_chars`` characters spill to disk.
    """
    files = discover_pool_files(pool)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    res = IngestResult(items_path=folder / "items.parquet",
                       quarantine_path=folder / "quarantine.parquet",
                       files=[str(f) for f in files])
    # scratch on the same filesystem, so the final moves are atomic renames
    with tempfile.TemporaryDirectory(dir=folder, prefix=".ingest-") as scratch:
        tmp = Path(scratch)
        fixes = _OutputFixes(tmp, fix_budget_chars)
        items = _BatchWriter(tmp / "items.parquet", POOL_SCHEMA, batch_rows)
        quarantine = _BatchWriter(tmp / "quarantine.parquet", QUARANTINE_SCHEMA, batch_rows)
        try:
            _validate_stream(files, items, quarantine, fixes, res, strict)
        finally:
            items.close()
            quarantine.close()
        final = tmp / "items.parquet"
        if fixes.count:  # outputs seen on later duplicates: a second pass over the items
            final = tmp / "items-fixed.parquet"
            _apply_fixes(tmp / "items.parquet", final, fixes)
        replace_durably(tmp / "quarantine.parquet", res.quarantine_path)
        replace_durably(final, res.items_path)
    return res


def read_pool(pool: str | Path, *, strict: bool = False, **kwargs: Any) -> Pool:
    """The whole validated pool in memory, for tests and small pools: the streaming
    :func:`ingest_pool_files` into a temporary folder, read back. ``kwargs`` go to it."""
    with tempfile.TemporaryDirectory(prefix="sift-pool-") as folder:
        res = ingest_pool_files(pool, folder, strict=strict, **kwargs)
        items = pq.read_table(res.items_path)
        quarantined = pq.read_table(res.quarantine_path).to_pylist()
    return Pool(items=items, quarantined=quarantined, n_rows=res.n_rows,
                n_duplicates=res.n_duplicates, files=res.files)


def read_item_columns(items_path: str | Path, batch_rows: int = BATCH_ROWS) -> pa.Table:
    """What the rank flow needs of items.parquet, without the texts: ``item_id``,
    ``source``, ``cost`` and ``labeled`` (bool: output is not null), one row per item in
    file order.  The output column is read a batch at a time and reduced to its null flag."""
    pf = pq.ParquetFile(items_path)
    parts = []
    for batch in _iter_batches(pf, batch_rows, ["item_id", "source", "cost", "output"]):
        parts.append(pa.table({"item_id": batch.column("item_id"),
                               "source": batch.column("source"),
                               "cost": batch.column("cost"),
                               "labeled": pc.is_valid(batch.column("output"))}))
    if not parts:
        return pa.table({"item_id": pa.array([], pa.string()), "source": pa.array([], pa.string()),
                         "cost": pa.array([], pa.float64()), "labeled": pa.array([], pa.bool_())})
    return pa.concat_tables(parts)


def pool_dir(workspace: str | Path | None, pool_name: str) -> Path:
    return workspace_root(workspace) / "pools" / check_name(pool_name, "pool name")


def store_pool(dbf: str | Path, run_id: str, pool_name: str, res: IngestResult) -> None:
    """Replace ``pool_name``'s rows in ``pool_items`` and this run's ``quarantine`` rows,
    in one transaction each (a rerun never duplicates).  DuckDB reads both from the
    Parquet files written by :func:`ingest_pool_files`; no row passes through Python."""
    db.replace_rows(dbf, "pool_items", res.items_path, "pool_name = ?", [pool_name],
                    constants={"pool_name": pool_name})
    db.replace_run_rows(dbf, "quarantine", run_id, res.quarantine_path,
                        constants={"run_id": run_id, "pool_name": pool_name})


def count_new_items(dbf: str | Path, pool_name: str, items_path: str | Path) -> int:
    """How many items of ``items_path`` the pool ``pool_name`` did not hold in
    ``pool_items`` (all of them the first time); counted inside DuckDB."""
    with db.connect(dbf) as con:
        return con.execute("""SELECT count(*) FROM read_parquet(?) n WHERE NOT EXISTS (
                                  SELECT 1 FROM pool_items p
                                  WHERE p.pool_name = ? AND p.item_id = n.item_id)""",
                           [str(items_path), pool_name]).fetchone()[0]


def read_targets(path: str | Path) -> list[str]:
    """Target prompts for SIFT: JSONL (``text``/``prompt``/``query``/``instruction`` [+
    ``input``]) or plain text, one prompt per line.  Errors name file and line."""
    from sift_ops.generation import prompt_text

    out = []
    for _, text, obj in iter_prompt_lines(path, "targets file"):
        extra = (obj or {}).get("input")
        out.append(prompt_text(text, extra if isinstance(extra, str) else None))
    return out
