"""Bring your own embeddings: register precomputed vectors as a corpus.

Input: Parquet files (a file, a folder searched recursively for ``*.parquet``, or a glob)
with an integer id column and an embedding column (``list<float>`` or
``fixed_size_list<float>[d]``, float16/32/64 values), optionally a text and a source column.
Output: a corpus folder ``<workspace>/corpora/<name>`` in the same format ``tasks/corpus/embed.py``
writes (``embeddings/part-FFFFF-BBBBB.parquet`` with :func:`tasks.corpus.embed.shard_schema`, the
stats JSON under :data:`tasks.corpus.embed.SHARD_META_KEY`, ``manifest.json`` with status
"complete"), marked ``"origin": "import"``.

The input is streamed batch by batch (``ParquetFile.iter_batches``); memory holds one
batch, one output shard (``shard_rows`` rows, about ``shard_rows * 4 * dim`` bytes of
vectors plus their texts: 154 MB for 100k 384-d rows; lower ``shard_rows`` for wide
vectors), and the ids of all rows for the duplicate check (see :class:`_IdLog`).

Row numbers in messages, quarantine lines and shard stats (``line_start``/``line_end``)
are **0-based row numbers within the input file** (the embed flow's "lines" are 1-based;
these are rows, not lines).

Nothing is half-registered: everything is written into a staging folder next to the
corpus (``corpora/.<name>.importing``) and swapped into place only once every input row
has been read and checked. Callers must hold the corpus lock (the flow does).
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.corpus.embed import SHARD_META_KEY, finalize_manifest, shard_name, shard_schema
from tasks.runtime.workspace import CorpusPaths

log = logging.getLogger(__name__)

ORIGIN = "import"
EXTERNAL_MODEL = "external"
QUARANTINE_FILE = "import.jsonl"
#: a vector whose L2 norm is further than this from 1 counts as "normalised"
UNIT_TOLERANCE = 1e-3
#: quarantine reasons: a null vector (or null values in it), NaN/inf values (also values
#: beyond float32's range), an all-zero vector
REASONS = ("null", "non_finite", "zero_vector")
#: rows per read batch: about 16 MB of float32 vectors, clamped to these bounds
MIN_BATCH_ROWS, MAX_BATCH_ROWS = 64, 8192


class BadEmbeddingInput(ValueError):
    """The input cannot be imported as given (a ValueError: never retried)."""


# ---------------------------------------------------------------------------- inputs


def discover_embedding_files(source: str | Path) -> list[Path]:
    """Input files from a file, a folder (searched recursively for ``*.parquet``; names
    starting with ``.`` skipped) or a glob pattern (every file it matches), sorted and
    resolved. Raises FileNotFoundError when nothing is found."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [f for f in path.rglob("*.parquet") if f.is_file()
                 and not any(part.startswith(".") for part in f.relative_to(path).parts)]
        if not files:
            raise FileNotFoundError(f"embeddings source {text!r}: no *.parquet files in folder")
    else:
        files = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                 if Path(p).is_file()]
        if not files:
            raise FileNotFoundError(
                f"embeddings source {text!r}: no such file, folder or glob match")
    return sorted({f.resolve() for f in files})


def is_float_list(type_: pa.DataType) -> bool:
    """True for list / large_list / fixed_size_list of float16/32/64."""
    return ((pa.types.is_list(type_) or pa.types.is_large_list(type_)
             or pa.types.is_fixed_size_list(type_))
            and pa.types.is_floating(type_.value_type))


def open_parquet(path: Path) -> pq.ParquetFile:
    """``pq.ParquetFile(path)``, or BadEmbeddingInput naming the file."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise BadEmbeddingInput(f"{path}: not a Parquet file ({err})") from err


def require_column(path: Path, schema: pa.Schema, column: str, what: str) -> pa.DataType:
    """The type of ``column``, or BadEmbeddingInput naming the file and the column."""
    if column not in schema.names:
        raise BadEmbeddingInput(
            f"{path}: no {what} column {column!r} (columns: {', '.join(schema.names)})")
    return schema.field(column).type


def float_list_rows(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(valid bool [n], lengths int64 [n])`` of a list-of-floats column; the length of a
    null row is -1."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(column).fill_null(-1).to_numpy(zero_copy_only=False)
    return valid.astype(bool, copy=False), lengths.astype(np.int64, copy=False)


def float_list_values(column: pa.Array, valid: np.ndarray,
                      dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The valid rows of a list-of-floats column whose rows all have ``dim`` values.

    Returns ``(matrix float32 [n_valid, dim], has_null bool [n_valid])``: null values read
    as NaN and are flagged in ``has_null``; values beyond float32's range become inf.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n_valid = int(valid.sum())
    if n_valid < len(column):
        column = column.filter(pa.array(valid))
    flat = column.flatten()
    if len(flat) != n_valid * dim:  # cannot happen once the lengths were checked
        raise AssertionError(f"{len(flat)} values for {n_valid} rows of dimension {dim}")
    if flat.null_count:
        has_null = flat.is_null().to_numpy(zero_copy_only=False).reshape(n_valid, dim)
        has_null = has_null.any(axis=1)
    else:
        has_null = np.zeros(n_valid, dtype=bool)
    values = flat.to_numpy(zero_copy_only=False)
    with np.errstate(over="ignore", invalid="ignore"):
        matrix = values.astype(np.float32, copy=False).reshape(n_valid, dim)
    return matrix, has_null


def unit_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(finite bool [n], norms float64 [n])`` of a float32 ``[n, d]`` matrix (norms are
    computed in float64, so large float32 values do not overflow)."""
    finite = np.isfinite(matrix).all(axis=1)
    norms = np.sqrt(np.square(matrix, dtype=np.float64).sum(axis=1))
    return finite, norms


def _string_column(path: Path, table: pa.RecordBatch, column: str | None,
                   what: str) -> pa.Array | None:
    """A text/source column as ``string`` (None: the file has no such column)."""
    if column is None or column not in table.schema.names:
        return None
    arr = table.column(column)
    type_ = arr.type
    if pa.types.is_null(type_):
        return pa.nulls(len(arr), pa.string())
    if not (pa.types.is_string(type_) or pa.types.is_large_string(type_)
            or pa.types.is_string_view(type_)):
        raise BadEmbeddingInput(
            f"{path}: {what} column {column!r} has type {type_}; expected a string column "
            f"(pass --{what}-column with another name, or none)")
    return arr.cast(pa.string())


# ---------------------------------------------------------------------------- ids


class _IdLog:
    """All input ids, file by file, for the duplicate check.

    Only the ids are kept, as int64 numpy arrays: 8 bytes per input row (quarantined rows
    included, so a position in a file's array is the row number). The check sorts a copy,
    so it briefly needs another 8 bytes per row: about 16 GB at 10**9 rows, which is where
    this becomes a problem on a usual machine (an external sort would be the fix then).
    """

    def __init__(self, id_column: str) -> None:
        self.id_column = id_column
        self.files: list[Path] = []
        self.ids: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []

    def add(self, ids: np.ndarray) -> None:
        self._pending.append(np.array(ids, dtype=np.int64))  # a copy: no Arrow buffer kept

    def end_file(self, path: Path) -> None:
        """Close the current file's ids and check them for duplicates within the file."""
        ids = np.concatenate(self._pending) if self._pending else np.empty(0, np.int64)
        self._pending = []
        self.files.append(path)
        self.ids.append(ids)
        self._check([ids], [path])

    def check_all(self) -> None:
        """Check for ids that occur in more than one file."""
        if len(self.ids) > 1:
            self._check(self.ids, self.files)

    def _check(self, arrays: list[np.ndarray], files: list[Path]) -> None:
        total = sum(len(a) for a in arrays)
        if total < 2:
            return
        ordered = np.concatenate(arrays)  # a copy (also for one array), sorted in place
        ordered.sort()
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        if not same.size:
            return
        dup = int(ordered[same[0]])
        del ordered
        places = []
        for path, ids in zip(files, arrays, strict=True):
            for row in np.flatnonzero(ids == dup)[:2]:
                places.append(f"{path} row {int(row)}")
        raise BadEmbeddingInput(
            f"duplicate id {dup} in column {self.id_column!r}: {places[0]} and {places[1]} "
            "(0-based rows); ids must be unique across all input files")


def _id_array(path: Path, batch: pa.RecordBatch, column: str, row0: int) -> np.ndarray:
    arr = batch.column(column)
    if arr.null_count:
        row = int(np.flatnonzero(~arr.is_valid().to_numpy(zero_copy_only=False))[0])
        raise BadEmbeddingInput(f"{path}: row {row0 + row} (0-based): id column {column!r} "
                                "is null")
    ids = arr.to_numpy(zero_copy_only=False)
    if ids.dtype == np.uint64:
        big = np.flatnonzero(ids > np.iinfo(np.int64).max)
        if big.size:
            raise BadEmbeddingInput(
                f"{path}: row {row0 + int(big[0])} (0-based): id {int(ids[big[0]])} in column "
                f"{column!r} does not fit in int64")
    return ids.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------- output


class _Staging:
    """The staging corpus folder: shards, quarantine lines, per-shard stats."""

    def __init__(self, paths: CorpusPaths) -> None:
        self.final = paths
        root = paths.root.parent / f".{paths.name}.importing"
        self.paths = copy.copy(paths)  # same name, every folder below the staging root
        self.paths.root = root
        self.paths.manifest = root / "manifest.json"
        self.paths.embeddings = root / "embeddings"
        self.paths.quarantine = root / "quarantine"
        self.paths.index = root / "index"
        self.paths.index_meta = self.paths.index / "index.json"
        self.paths.trained = self.paths.index / "trained.faiss"
        self._quarantine: TextIO | None = None
        self.reasons: Counter[str] = Counter()
        self.shards: list[dict] = []
        self._pending_empty: list[dict] = []  # all-null shards seen before the dim was known

    def create(self) -> None:
        if self.paths.root.exists():  # left by a crashed import; we hold the corpus lock
            log.warning("removing a stale staging folder %s", self.paths.root)
            shutil.rmtree(self.paths.root)
        self.paths.embeddings.mkdir(parents=True)
        self.paths.quarantine.mkdir(parents=True)

    def remove(self) -> None:
        self.close_quarantine()
        shutil.rmtree(self.paths.root, ignore_errors=True)

    def quarantine(self, file: Path, row: int, id_: int, reason: str) -> None:
        if self._quarantine is None:
            self._quarantine = open(self.paths.quarantine / QUARANTINE_FILE, "w",
                                    encoding="utf-8")
        self._quarantine.write(json.dumps({"file": str(file), "row": row, "id": id_,
                                           "reason": reason}) + "\n")
        self.reasons[reason] += 1

    def close_quarantine(self) -> None:
        if self._quarantine is not None:
            self._quarantine.close()
            self._quarantine = None

    def write_shard(self, stats: dict, tables: list[pa.Table], dim: int | None) -> None:
        """Write one shard like ``ShardEmbedder`` does (zstd, row groups of 8192, the stats
        JSON in the schema metadata). An empty shard waits until the dimension is known."""
        if dim is None:
            self._pending_empty.append(stats)
            return
        stats = {**stats, "dim": dim}
        schema = shard_schema(dim)
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        table = table.replace_schema_metadata({SHARD_META_KEY: json.dumps(stats).encode()})
        pq.write_table(table, self.paths.embeddings / f"{stats['shard']}.parquet",
                       compression="zstd", row_group_size=8192)
        self.shards.append(stats)

    def flush_pending(self, dim: int) -> None:
        pending, self._pending_empty = self._pending_empty, []
        for stats in pending:
            self.write_shard(stats, [], dim)


class _Shard:
    """Rows of one output shard as they arrive (input rows ``line_start``..``line_end``)."""

    def __init__(self, file_id: int, file: Path, block: int, line_start: int,
                 model: str) -> None:
        self.stats: dict[str, Any] = {
            # "file" is the input file here; the manifest lists the shard file under "file"
            # (as for embedded corpora) and keeps the input under "input_file"
            "shard": shard_name(file_id, block), "file": str(file), "input_file": str(file),
            "file_id": file_id,
            "line_start": line_start, "line_end": line_start - 1, "n_lines": 0,
            "n_docs": 0, "n_bad": 0, "n_chunks": 0, "n_rows": 0, "n_truncated": 0,
            "n_normalised": 0, "doc_id_min": -1, "doc_id_max": -1, "model": model,
        }
        self.block = block
        self.tables: list[pa.Table] = []

    def add(self, n_lines: int, n_bad: int, n_normalised: int,
            table: pa.Table | None) -> None:
        """Account for ``n_lines`` more input rows, of which ``table`` holds the kept ones."""
        s = self.stats
        s["n_lines"] += n_lines
        s["line_end"] += n_lines
        s["n_bad"] += n_bad
        s["n_normalised"] += n_normalised
        if table is not None and table.num_rows:
            ids = table.column("doc_id")
            lo, hi = int(pc.min(ids).as_py()), int(pc.max(ids).as_py())
            s["doc_id_min"] = lo if s["n_rows"] == 0 else min(s["doc_id_min"], lo)
            s["doc_id_max"] = hi if s["n_rows"] == 0 else max(s["doc_id_max"], hi)
            s["n_rows"] += table.num_rows
            s["n_docs"] = s["n_chunks"] = s["n_rows"]
            self.tables.append(table)


# ---------------------------------------------------------------------------- import


def _resolve_model(model: str | None) -> tuple[str, int | None]:
    """The manifest's ``model`` (an encoder folder a TextEncoder can load later, or
    "external") and the encoder's hidden size when its config states one."""
    if model is None or model == EXTERNAL_MODEL:
        return EXTERNAL_MODEL, None
    from sift_ops.model_folder import check_model_folder

    if Path(model).expanduser().is_dir():
        # custom code is refused only when the encoder is loaded (select); nothing runs here
        folder = check_model_folder(model, "encoder", "'external' (no text prompts)", True)
        folder = folder.resolve()
        name = str(folder)
    else:
        from sift_ops.embedding import DEFAULT_ENCODER, default_encoder_path  # imports torch

        if model not in (DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
            check_model_folder(model, "encoder", "'external' (no text prompts)", True)
        name, folder = DEFAULT_ENCODER, Path(default_encoder_path())
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    hidden = cfg.get("hidden_size") if isinstance(cfg, dict) else None
    return name, int(hidden) if isinstance(hidden, int) else None


def _check_existing(paths: CorpusPaths) -> dict | None:
    """The manifest of an imported corpus at ``paths`` (replaced on success), None when
    there is none; refuse a corpus that ``embed`` made (or a folder without a manifest)."""
    if not paths.root.exists():
        return None
    try:
        manifest = json.loads(paths.manifest.read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("origin") != ORIGIN:
        how = ("has no readable manifest.json" if manifest is None else
               f"was made by `sift-curate embed` (origin {manifest.get('origin')!r})")
        raise BadEmbeddingInput(
            f"corpus {paths.name!r} already exists at {paths.root} and {how}; an import only "
            "replaces a corpus made by an earlier import. Use another --name or delete that "
            "folder")
    return manifest


def _swap_in(staging: Path, paths: CorpusPaths) -> None:
    """Move ``staging`` to ``paths.root``; an imported corpus already there is replaced.

    Two renames (old aside, new in) on one filesystem: a reader sees the old corpus, then
    for a moment none, then the new one, never a mix; the old one is deleted last.
    """
    _check_existing(paths)  # again: the folder may have changed while we read the input
    if not paths.root.exists():
        os.rename(staging, paths.root)
        return
    aside = paths.root.parent / f".{paths.name}.replaced-{os.getpid()}"
    if aside.exists():
        shutil.rmtree(aside)
    os.rename(paths.root, aside)
    try:
        os.rename(staging, paths.root)
    except BaseException:
        os.rename(aside, paths.root)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def import_embeddings(
    paths: CorpusPaths,
    source: str,
    *,
    id_column: str = "doc_id",
    embedding_column: str = "embedding",
    text_column: str | None = "text",
    source_column: str | None = "source",
    model: str | None = None,
    shard_rows: int = 100_000,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Import precomputed embeddings from Parquet into the corpus at ``paths``.

    Args:
        paths: the corpus to create (or replace, when an earlier import made it).
        source: a Parquet file, a folder (searched recursively for ``*.parquet``) or a glob.
        id_column: integer ids (any int64 values, unique over all files): the ``doc_id``.
        embedding_column: ``list<float>`` or ``fixed_size_list<float>[d]`` (float16/32/64);
            every vector must have the dimension ``d`` of the first one.
        text_column, source_column: optional string columns (a file without them, or None:
            nulls).
        model: the encoder folder that made the vectors (used later to embed text prompts;
            its hidden size must equal ``d``), or None: "external".
        shard_rows: input rows per output shard (a shard holds rows of one file).
        progress: called with the number of input rows after each batch read.

    Rows whose vector is null, has NaN/inf values or is all zeros are quarantined (not
    imported; one JSON line each in ``quarantine/import.jsonl``). Other vectors are stored
    L2-normalised as float32; those whose norm was off by more than 1e-3 are counted in
    ``n_normalised``. Anything else wrong (not Parquet, a missing column, a wrong type, a
    wrong dimension, a null or duplicate id) raises :class:`BadEmbeddingInput` naming the
    file and the 0-based row, and leaves no trace.

    Returns a summary: corpus, manifest, files, source_files, rows_read, rows_imported,
    n_quarantined, quarantine_reasons, n_normalised, shards, dim, model, seconds.
    """
    t0 = time.perf_counter()
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    model_name, model_dim = _resolve_model(model)
    files = discover_embedding_files(source)
    _check_existing(paths)  # fail before reading anything when the name is taken by embed
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    staging = _Staging(paths)
    staging.create()
    try:
        summary = _import_into(staging, files, source, id_column, embedding_column,
                               text_column, source_column, model_name, model_dim,
                               shard_rows, progress)
        staging.close_quarantine()
        _swap_in(staging.paths.root, paths)
    except BaseException:
        staging.remove()
        raise
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _read_batches(pf: pq.ParquetFile, path: Path, columns: list[str],
                  batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Non-empty batches of ``columns``; a read error becomes BadEmbeddingInput."""
    row = 0
    batches = pf.iter_batches(columns=columns, batch_size=batch_rows, use_threads=False)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as err:
            raise BadEmbeddingInput(
                f"{path}: cannot read Parquet data after row {row} (0-based): {err}") from err
        if batch.num_rows:
            row += batch.num_rows
            yield batch


def _check_schema(path: Path, schema: pa.Schema, id_column: str, embedding_column: str,
                  optional: dict[str, str | None]) -> None:
    id_type = require_column(path, schema, id_column, "id")
    emb_type = require_column(path, schema, embedding_column, "embedding")
    if not pa.types.is_integer(id_type):
        raise BadEmbeddingInput(
            f"{path}: id column {id_column!r} has type {id_type}; expected integers (int64)")
    if not is_float_list(emb_type):
        raise BadEmbeddingInput(
            f"{path}: embedding column {embedding_column!r} has type {emb_type}; expected a "
            "list or fixed_size_list of float16/float32/float64")
    for what, column in optional.items():
        if column is None or column not in schema.names:
            continue
        type_ = schema.field(column).type
        if not (pa.types.is_null(type_) or pa.types.is_string(type_)
                or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)):
            raise BadEmbeddingInput(
                f"{path}: {what} column {column!r} has type {type_}; expected strings "
                f"(name another --{what}-column, or none)")


class _Importer:
    """Reads the input files one batch at a time into a :class:`_Staging` folder."""

    def __init__(self, staging: _Staging, id_column: str, embedding_column: str,
                 text_column: str | None, source_column: str | None, model_name: str,
                 model_dim: int | None, shard_rows: int,
                 progress: Callable[[int], None] | None) -> None:
        self.staging = staging
        self.id_column, self.embedding_column = id_column, embedding_column
        self.text_column, self.source_column = text_column, source_column
        self.model_name, self.model_dim = model_name, model_dim
        self.shard_rows = shard_rows
        self.progress = progress
        self.ids = _IdLog(id_column)
        self.first: tuple[int, Path, int] | None = None  # (dim, file, row) of vector one
        self.rows_read = self.rows_imported = self.n_normalised = 0
        self.files: list[dict] = []

    @property
    def dim(self) -> int | None:
        return self.first[0] if self.first else None

    def read_file(self, file_id: int, path: Path) -> None:
        pf = open_parquet(path)
        schema = pf.schema_arrow
        _check_schema(path, schema, self.id_column, self.embedding_column,
                      {"text": self.text_column, "source": self.source_column})
        text_col = self.text_column if self.text_column in schema.names else None
        source_col = self.source_column if self.source_column in schema.names else None
        if self.text_column and text_col is None:
            log.info("%s: no text column %r; texts are null", path, self.text_column)
        columns = [self.id_column, self.embedding_column,
                   *(c for c in (text_col, source_col) if c)]
        emb_type = schema.field(self.embedding_column).type
        known_dim = self.dim or (
            emb_type.list_size if pa.types.is_fixed_size_list(emb_type) else None)
        # about 16 MB of float32 vectors per batch
        batch_rows = (max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, (1 << 22) // known_dim))
                      if known_dim else min(1024, MAX_BATCH_ROWS))
        row0 = 0
        shard: _Shard | None = None
        for batch in _read_batches(pf, path, columns, batch_rows):
            n = batch.num_rows
            keep, table, off = self._batch(path, batch, row0, text_col, source_col)
            keep_rows = np.flatnonzero(keep)
            # split the batch at shard boundaries (shard b holds rows b*shard_rows ...)
            start = 0
            while start < n:
                block = (row0 + start) // self.shard_rows
                if shard is None or shard.block != block:
                    if shard is not None:
                        self.staging.write_shard(shard.stats, shard.tables, self.dim)
                    shard = _Shard(file_id, path, block, row0 + start, self.model_name)
                stop = min(n, (block + 1) * self.shard_rows - row0)
                lo, hi = np.searchsorted(keep_rows, [start, stop])
                shard.add(stop - start, int((~keep[start:stop]).sum()),
                          int(off[lo:hi].sum()),
                          table.slice(lo, hi - lo) if table is not None and hi > lo else None)
                start = stop
            self.rows_read += n
            self.rows_imported += len(keep_rows)
            self.n_normalised += int(off.sum())
            row0 += n
            if self.progress is not None:
                self.progress(n)
        if shard is not None:
            self.staging.write_shard(shard.stats, shard.tables, self.dim)
        self.ids.end_file(path)
        self.files.append({"file_id": file_id, "path": str(path), "n_rows": row0,
                           "text_column": text_col, "source_column": source_col})

    def _set_first(self, path: Path, row: int, dim: int) -> None:
        if dim == 0:
            raise BadEmbeddingInput(f"{path}: row {row} (0-based): the embedding is empty "
                                    "(dimension 0)")
        if self.model_dim is not None and self.model_dim != dim:
            raise BadEmbeddingInput(
                f"{path}: the embeddings have dimension {dim} but encoder {self.model_name} "
                f"makes {self.model_dim}-d vectors; pass the encoder that made them, or no "
                "--model")
        self.first = (dim, path, row)
        self.staging.flush_pending(dim)

    def _batch(self, path: Path, batch: pa.RecordBatch, row0: int, text_col: str | None,
               source_col: str | None) -> tuple[np.ndarray, pa.Table | None, np.ndarray]:
        """Check one batch and quarantine its bad rows. Returns ``(keep bool [n], the kept
        rows in shard_schema (None: none kept), off bool [n_kept]: norm was not 1 within
        1e-3)``."""
        n = batch.num_rows
        ids = _id_array(path, batch, self.id_column, row0)
        self.ids.add(ids)
        col = batch.column(self.embedding_column)
        valid, lengths = float_list_rows(col)
        if self.first is None and valid.any():
            row = int(np.flatnonzero(valid)[0])
            self._set_first(path, row0 + row, int(lengths[row]))
        reason = np.full(n, "null", dtype=object)  # every invalid (null) row stays "null"
        keep = np.zeros(n, dtype=bool)
        dim = self.dim or 0
        matrix = np.empty((0, dim), dtype=np.float32)
        norms = np.empty(0)
        if self.first is not None and valid.any():
            wrong = np.flatnonzero(valid & (lengths != dim))
            if wrong.size:
                r = int(wrong[0])
                raise BadEmbeddingInput(
                    f"{path}: row {row0 + r} (0-based): embedding has dimension "
                    f"{int(lengths[r])}, expected {dim} (the dimension of the first vector, "
                    f"{self.first[1]} row {self.first[2]})")
            matrix, has_null = float_list_values(col, valid, dim)
            finite, norms = unit_rows(matrix)
            sub = np.full(len(matrix), "", dtype=object)
            sub[norms == 0] = "zero_vector"
            sub[~finite] = "non_finite"
            sub[has_null] = "null"
            reason[valid] = sub
            good = sub == ""
            keep[valid] = good
            matrix, norms = matrix[good], norms[good]
            matrix = (matrix / norms[:, None]).astype(np.float32)
        for r in np.flatnonzero(~keep):
            self.staging.quarantine(path, row0 + int(r), int(ids[r]), str(reason[r]))
        keep_rows = np.flatnonzero(keep)
        table = (_output_table(batch, keep_rows, ids, matrix, text_col, source_col, path, dim)
                 if len(keep_rows) else None)
        return keep, table, np.abs(norms - 1.0) > UNIT_TOLERANCE


def _import_into(staging: _Staging, files: list[Path], source: str, id_column: str,
                 embedding_column: str, text_column: str | None, source_column: str | None,
                 model_name: str, model_dim: int | None, shard_rows: int,
                 progress: Callable[[int], None] | None) -> dict[str, Any]:
    """Read every file into ``staging``; write its manifest. Raises on bad input."""
    imp = _Importer(staging, id_column, embedding_column, text_column, source_column,
                    model_name, model_dim, shard_rows, progress)
    for file_id, path in enumerate(files):
        imp.read_file(file_id, path)
    imp.ids.check_all()
    if imp.dim is None:
        raise BadEmbeddingInput(
            f"embeddings source {source!r}: no vectors to import ({imp.rows_read} rows, "
            f"every {embedding_column!r} is null)" if imp.rows_read else
            f"embeddings source {source!r}: the input files have no rows")
    if imp.rows_imported == 0:
        raise BadEmbeddingInput(
            f"embeddings source {source!r}: all {imp.rows_read} rows were quarantined "
            f"({dict(staging.reasons)}); nothing to import")
    n_quarantined = sum(staging.reasons.values())
    reasons = {r: staging.reasons.get(r, 0) for r in REASONS}
    now = datetime.now(timezone.utc).isoformat()
    manifest = {
        "name": staging.final.name, "corpus": source, "origin": ORIGIN, "model": model_name,
        "dim": imp.dim, "pooling": None, "normalized": True, "max_tokens": None,
        "shard_docs": None, "shard_chars": None, "shard_rows": shard_rows,
        "doc_id_layout": f"external: the input's {id_column!r} column",
        "row_numbering": "0-based rows within each input file",
        "id_column": id_column, "embedding_column": embedding_column,
        "text_column": text_column, "source_column": source_column,
        "files": imp.files, "source_files": [str(p) for p in files],
        "rows_read": imp.rows_read, "rows_imported": imp.rows_imported,
        "n_quarantined": n_quarantined, "quarantine_reasons": reasons,
        "n_normalised": imp.n_normalised, "shards": [], "status": "importing",
        "created_at": now, "updated_at": now,
    }
    # the shard list and totals (n_chunks, n_docs, n_bad) come from the shard files, as
    # for an embedded corpus; status becomes "complete"
    manifest = finalize_manifest(staging.paths, manifest)
    if manifest["n_chunks"] != imp.rows_imported:
        raise AssertionError(f"the shards hold {manifest['n_chunks']} rows, "
                             f"{imp.rows_imported} were imported")
    return {
        "corpus": staging.final.name, "manifest": str(staging.final.manifest),
        "files": len(files), "source_files": [str(p) for p in files],
        "rows_read": imp.rows_read, "rows_imported": imp.rows_imported,
        "n_quarantined": n_quarantined, "quarantine_reasons": reasons,
        "quarantine": (str(staging.final.quarantine / QUARANTINE_FILE) if n_quarantined
                       else None),
        "n_normalised": imp.n_normalised, "shards": len(manifest["shards"]), "dim": imp.dim,
        "model": model_name,
    }


def _output_table(batch: pa.RecordBatch, keep_rows: np.ndarray, ids: np.ndarray,
                  matrix: np.ndarray, text_col: str | None, source_col: str | None,
                  path: Path, dim: int) -> pa.Table:
    """The kept rows of one batch in :func:`tasks.corpus.embed.shard_schema` (``matrix``: their
    unit vectors, float32 ``[len(keep_rows), dim]``)."""
    n = len(keep_rows)
    take = pa.array(keep_rows, pa.int64())

    def strings(column: str | None, what: str) -> pa.Array:
        arr = _string_column(path, batch, column, what)
        return pa.nulls(n, pa.string()) if arr is None else arr.take(take)

    return pa.table({
        "doc_id": pa.array(ids[keep_rows], pa.int64()),
        "source": strings(source_col, "source"),
        "text": strings(text_col, "text"),
        "n_tokens": pa.array(np.zeros(n, dtype=np.int32), pa.int32()),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(matrix.reshape(-1), pa.float32()), dim),
    }, schema=shard_schema(dim))
