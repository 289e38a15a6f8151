"""Precomputed query embeddings, streamed in blocks (for corpora imported with their own
vectors, where no encoder can embed text prompts).

Two inputs:

- ``.npy``: a float ``[B, d]`` array; query ids are the row numbers as strings ("0" ..
  "B-1"). Memory-mapped, so only one block is in memory at a time.
- ``.parquet``: a ``query_id`` column (strings; integers are turned into strings) and an
  ``embedding`` column (``list<float>`` / ``fixed_size_list<float>[d]``), read by batches.

Row numbers in messages are 0-based. Every yielded vector is float32 and L2-normalised.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.corpus.import_embeddings import (
    float_list_rows,
    float_list_values,
    is_float_list,
    open_parquet,
    require_column,
    unit_rows,
)

ID_COLUMN = "query_id"
EMBEDDING_COLUMN = "embedding"


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".parquet"):
        raise ValueError(f"{path}: query embeddings must be a .npy or .parquet file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such query embeddings file")
    return suffix[1:]


def _open_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from err
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        shape = getattr(arr, "shape", None)
        raise ValueError(f"{path}: query embeddings must be a 2-d array [n_queries, dim], "
                         f"got shape {shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{path}: query embeddings must be floats, got dtype {arr.dtype}")
    return arr


def _open_parquet(path: Path) -> pq.ParquetFile:
    pf = open_parquet(path)
    schema = pf.schema_arrow
    id_type = require_column(path, schema, ID_COLUMN, "query id")
    emb_type = require_column(path, schema, EMBEDDING_COLUMN, "embedding")
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
            or pa.types.is_string_view(id_type) or pa.types.is_integer(id_type)):
        raise ValueError(f"{path}: column {ID_COLUMN!r} has type {id_type}; expected strings")
    if not is_float_list(emb_type):
        raise ValueError(
            f"{path}: column {EMBEDDING_COLUMN!r} has type {emb_type}; expected a list or "
            "fixed_size_list of float16/float32/float64")
    return pf


def count_query_embeddings(path: str | Path) -> int:
    """Number of query vectors in a .npy or .parquet file (reads only the header/footer)."""
    path = Path(path).expanduser()
    if _kind(path) == "npy":
        return int(_open_npy(path).shape[0])
    return int(_open_parquet(path).metadata.num_rows)


def _dim_error(path: Path, got: int, dim: int, row: int | None = None) -> ValueError:
    where = f"{path}: row {row}: " if row is not None else f"{path}: "
    return ValueError(f"{where}query embedding dimension {got} != index dimension {dim}")


def _normalise(path: Path, block: np.ndarray, row0: int) -> np.ndarray:
    """float32 ``[b, d]`` unit rows; NaN/inf or all-zero rows raise naming the row."""
    with np.errstate(over="ignore", invalid="ignore"):
        block = np.asarray(block).astype(np.float32, copy=False)
    finite, norms = unit_rows(block)
    if not finite.all():
        row = row0 + int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{path}: row {row}: query embedding has NaN or inf values")
    if (norms == 0).any():
        row = row0 + int(np.flatnonzero(norms == 0)[0])
        raise ValueError(f"{path}: row {row}: query embedding is all zeros")
    return (block / norms[:, None]).astype(np.float32)


def _iter_npy(path: Path, arr: np.ndarray,
              block: int) -> Iterator[tuple[list[str], np.ndarray]]:
    for start in range(0, arr.shape[0], block):
        part = arr[start:start + block]
        ids = [str(i) for i in range(start, start + len(part))]
        yield ids, _normalise(path, part, start)


def _iter_parquet_batches(path: Path, pf: pq.ParquetFile, dim: int,
                          block: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """The file's batches as they come (any size), checked and normalised."""
    seen: dict[str, int] = {}
    row0 = 0
    batches = pf.iter_batches(columns=[ID_COLUMN, EMBEDDING_COLUMN], batch_size=block,
                              use_threads=False)
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        id_col = batch.column(ID_COLUMN)
        if id_col.null_count:
            row = row0 + int(np.flatnonzero(~id_col.is_valid().to_numpy(
                zero_copy_only=False))[0])
            raise ValueError(f"{path}: row {row}: {ID_COLUMN!r} is null")
        ids = [str(v) for v in id_col.to_pylist()]
        for i, qid in enumerate(ids):
            if qid in seen:
                raise ValueError(f"{path}: duplicate {ID_COLUMN} {qid!r} at rows {seen[qid]} "
                                 f"and {row0 + i}")
            seen[qid] = row0 + i
        col = batch.column(EMBEDDING_COLUMN)
        valid, lengths = float_list_rows(col)
        if not valid.all():
            row = row0 + int(np.flatnonzero(~valid)[0])
            raise ValueError(f"{path}: row {row}: query embedding is null")
        wrong = np.flatnonzero(lengths != dim)
        if wrong.size:
            raise _dim_error(path, int(lengths[wrong[0]]), dim, row0 + int(wrong[0]))
        matrix, has_null = float_list_values(col, valid, dim)
        if has_null.any():
            row = row0 + int(np.flatnonzero(has_null)[0])
            raise ValueError(f"{path}: row {row}: query embedding has null values")
        yield ids, _normalise(path, matrix, row0)
        row0 += n


def _iter_parquet(path: Path, pf: pq.ParquetFile, dim: int,
                  block: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """Re-cut the file's batches into blocks of exactly ``block`` rows (the last shorter)."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    n = 0
    for batch_ids, matrix in _iter_parquet_batches(path, pf, dim, block):
        ids.extend(batch_ids)
        parts.append(matrix)
        n += len(batch_ids)
        while n >= block:
            whole = np.concatenate(parts) if len(parts) > 1 else parts[0]
            yield ids[:block], whole[:block]
            ids, parts, n = ids[block:], [whole[block:]], n - block
    if n:
        yield ids, np.concatenate(parts) if len(parts) > 1 else parts[0]


def iter_query_embeddings(path: str | Path, dim: int,
                          block: int = 1024) -> Iterator[tuple[list[str], np.ndarray]]:
    """Blocks ``(query_ids, float32 [b, dim] unit vectors)`` of up to ``block`` queries.

    ``path``: a ``.npy`` ``[B, d]`` float array (ids "0".."B-1") or a ``.parquet`` file with
    ``query_id`` and ``embedding`` columns. Every block but the last has ``block`` rows;
    memory holds about one block. Raises ValueError naming the file (and the 0-based row)
    for: another suffix, an array that is not 2-d, a dimension other than ``dim`` ("query
    embedding dimension X != index dimension Y"), NaN/inf, all-zero or null vectors, a
    duplicate or null ``query_id``, a missing column, or no queries at all. Non-unit
    vectors are normalised. Problems visible in the file's header (suffix, shape, columns,
    a fixed-size dimension, no rows) raise at the call; row-level ones while iterating.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    path = Path(path).expanduser()
    # header-level problems are raised here, at the call; row-level ones while iterating
    if _kind(path) == "npy":
        arr = _open_npy(path)
        if arr.shape[1] != dim:
            raise _dim_error(path, int(arr.shape[1]), dim)
        if arr.shape[0] == 0:
            raise ValueError(f"{path}: no query embeddings in the file")
        return _iter_npy(path, arr, block)
    pf = _open_parquet(path)
    emb_type = pf.schema_arrow.field(EMBEDDING_COLUMN).type
    if pa.types.is_fixed_size_list(emb_type) and emb_type.list_size != dim:
        raise _dim_error(path, emb_type.list_size, dim)
    if pf.metadata.num_rows == 0:
        raise ValueError(f"{path}: no query embeddings in the file")
    return _iter_parquet(path, pf, dim, block)
