"""The dense vector store beside a corpus index: exact vectors and doc_ids by row id.

Row ids are what every index partition returns: the position of a vector in the store
(0..N-1). The store is a list of blocks, each two ``.npy`` files memory-mapped on open:

    index/store/vectors-BBBBB.npy   [n_b, d] float16 or float32, L2-normalised
    index/store/doc_ids-BBBBB.npy   [n_b] int64 (the corpus doc_id of each row)

Block b holds rows ``start_b .. start_b + n_b - 1``, filled from the embedding shards
listed in its metadata, in order, so a row also maps back to (shard file, row in shard)
for fetching texts of the picks only. Reads touch only the requested rows' pages.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def vectors_file(store_dir: Path, block: int) -> Path:
    return store_dir / f"vectors-{block:05d}.npy"


def doc_ids_file(store_dir: Path, block: int) -> Path:
    return store_dir / f"doc_ids-{block:05d}.npy"


class VectorStore:
    """Memory-mapped exact vectors of the ``blocks`` (dicts with ``block``, ``start``,
    ``n`` and ``shards``: ``[{"file", "n_rows", "offset"}]``) under ``store_dir``."""

    def __init__(self, store_dir: str | Path, blocks: list[dict], dim: int) -> None:
        self.store_dir = Path(store_dir)
        self.blocks = sorted(blocks, key=lambda b: b["start"])
        self.dim = int(dim)
        self._starts = np.array([b["start"] for b in self.blocks], dtype=np.int64)
        self._ends = np.array([b["start"] + b["n"] for b in self.blocks], dtype=np.int64)
        self._vec: dict[int, np.ndarray] = {}
        self._ids: dict[int, np.ndarray] = {}

    @property
    def n_rows(self) -> int:
        return int(sum(b["n"] for b in self.blocks))

    def _block_vectors(self, pos: int) -> np.ndarray:
        if pos not in self._vec:
            arr = np.load(vectors_file(self.store_dir, self.blocks[pos]["block"]),
                          mmap_mode="r")
            if arr.shape != (self.blocks[pos]["n"], self.dim):
                raise ValueError(f"vector store block {self.blocks[pos]['block']}: shape "
                                 f"{arr.shape} != ({self.blocks[pos]['n']}, {self.dim})")
            self._vec[pos] = arr
        return self._vec[pos]

    def _block_ids(self, pos: int) -> np.ndarray:
        if pos not in self._ids:
            self._ids[pos] = np.load(doc_ids_file(self.store_dir, self.blocks[pos]["block"]),
                                     mmap_mode="r")
        return self._ids[pos]

    def _locate(self, rows: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._starts, rows, side="right") - 1
        ok = (rows >= 0) & (pos >= 0) & (rows < self._ends[np.clip(pos, 0, None)])
        if not ok.all():
            raise KeyError(f"rows not in this vector store: {rows[~ok][:5].tolist()}")
        return pos

    def _gather(self, rows: np.ndarray, column, dtype) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        pos = self._locate(rows)
        first = column(0) if self.blocks else None
        shape = (len(rows), self.dim) if first is not None and first.ndim == 2 else len(rows)
        out = np.empty(shape, dtype=dtype or (first.dtype if first is not None else np.int64))
        for p in np.unique(pos):
            sel = np.nonzero(pos == p)[0]
            local = rows[sel] - self._starts[p]
            order = np.argsort(local)  # page-ordered reads of the memory map
            out[sel[order]] = column(int(p))[local[order]]
        return out

    def vectors(self, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Exact vectors ``[n, d]`` of ``rows [n]``, as ``dtype`` (None: as stored)."""
        return self._gather(rows, self._block_vectors, dtype)

    def doc_ids(self, rows: np.ndarray) -> np.ndarray:
        """Corpus doc_ids ``[n]`` int64 of ``rows [n]``."""
        return self._gather(rows, self._block_ids, np.int64)

    def iter_chunks(self, chunk_rows: int = 65_536) -> Iterator[tuple[np.ndarray, int]]:
        """The whole store as ``(x [n, d] float32, first_row)`` chunks, one in memory."""
        for pos, b in enumerate(self.blocks):
            vec = self._block_vectors(pos)
            for s in range(0, b["n"], chunk_rows):
                yield np.asarray(vec[s : s + chunk_rows], dtype=np.float32), b["start"] + s

    def shard_rows(self, rows: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Where ``rows`` came from: ``[(shard file, positions in rows, row in shard)]``."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        pos = self._locate(rows)
        out = []
        for p in np.unique(pos):
            b = self.blocks[int(p)]
            sel = np.nonzero(pos == p)[0]
            local = rows[sel] - b["start"]
            offsets = np.array([s["offset"] for s in b["shards"]], dtype=np.int64)
            which = np.searchsorted(offsets, local, side="right") - 1
            for w in np.unique(which):
                m = which == w
                out.append((b["shards"][int(w)]["file"], sel[m], local[m] - offsets[w]))
        return out


def read_rows(path: str | Path, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` of the given rows (0-based, any order) of one Parquet file, reading
    only the row groups that hold them."""
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    bounds = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    rows = np.asarray(rows, dtype=np.int64)
    group = np.searchsorted(bounds, rows, side="right") - 1
    groups = np.unique(group)
    table = pf.read_row_groups([int(g) for g in groups], columns=columns)
    # rows renumbered within the concatenation of the groups read
    sizes = bounds[groups + 1] - bounds[groups]
    read_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    local = read_start[np.searchsorted(groups, group)] + rows - bounds[group]
    return table.take(pa.array(local))


def fetch_columns(store: VectorStore, embeddings_dir: str | Path, rows: np.ndarray,
                  columns: tuple[str, ...] = ("text",)) -> dict[str, np.ndarray]:
    """``columns`` of the embedding-shard rows behind ``rows [n]`` (-1 gives None), as
    object arrays ``[n]``; only the row groups that hold them are read."""
    rows = np.asarray(rows, dtype=np.int64).ravel()
    out = {c: np.full(len(rows), None, dtype=object) for c in columns}
    valid = np.nonzero(rows >= 0)[0]
    for file, sel, in_shard in store.shard_rows(rows[valid]):
        table = read_rows(Path(embeddings_dir) / file, in_shard, list(columns))
        for c in columns:
            out[c][valid[sel]] = table[c].to_numpy(zero_copy_only=False)
    return out
