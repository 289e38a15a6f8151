"""Reading an embedded corpus back: doc_id layout, shard lookup, embeddings and texts by id.

doc_id layout (int64, stable across reruns because every part is derived from the input):

    doc_id = file_id << 40 | line << 12 | chunk

``file_id`` (< 2**23) is the input file's number recorded in the manifest, ``line`` (< 2**28)
the 1-based line (or Parquet row) number in that file, ``chunk`` (< 4096) the window number
within the document. Shards hold consecutive line ranges of one file and rows sorted by
doc_id, so every shard covers a disjoint doc_id range and a lookup is two binary searches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.runtime.workspace import CorpusPaths

FILE_BITS, LINE_BITS, CHUNK_BITS = 23, 28, 12
MAX_LINE = (1 << LINE_BITS) - 1
MAX_CHUNKS = 1 << CHUNK_BITS


def pack_doc_ids(file_id: int, lines: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    """Vectorised doc_id packing. ``lines``/``chunks`` int arrays of equal length."""
    lines = np.asarray(lines, dtype=np.int64)
    chunks = np.asarray(chunks, dtype=np.int64)
    if file_id >= 1 << FILE_BITS or (lines.size and lines.max() > MAX_LINE):
        raise ValueError("doc_id overflow: more than 2**23 files or 2**28 lines in one file")
    return (np.int64(file_id) << 40) | (lines << CHUNK_BITS) | chunks


def unpack_doc_id(doc_id: int) -> tuple[int, int, int]:
    """``(file_id, line, chunk)`` of one doc_id."""
    doc_id = int(doc_id)
    return doc_id >> 40, (doc_id >> CHUNK_BITS) & MAX_LINE, doc_id & (MAX_CHUNKS - 1)


def embedding_matrix(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed_size_list<float32>[dim] column as a float32 ``[n, dim]`` array (no copy when
    the column is one chunk)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.empty((0, dim), dtype=np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(column), dim)


class CorpusReader:
    """Random access to an embedded corpus by doc_id, shard by shard (never the whole corpus).

    Args:
        workspace: workspace root (None: $SIFT_WORKSPACE or ./workspace).
        name: corpus name.
    """

    def __init__(self, workspace: str | Path | None, name: str) -> None:
        self.paths = CorpusPaths(workspace, name)
        self.manifest = self.paths.load_manifest()
        if self.manifest.get("status") != "complete":
            raise RuntimeError(
                f"corpus {name!r} is not completely embedded (status "
                f"{self.manifest.get('status')!r}); rerun `sift-curate embed` to resume it"
            )
        self.dim = int(self.manifest["dim"])
        shards = [s for s in self.manifest["shards"] if s["n_rows"] > 0]
        shards.sort(key=lambda s: s["doc_id_min"])
        self.shards = shards
        self._mins = np.array([s["doc_id_min"] for s in shards], dtype=np.int64)
        self._maxs = np.array([s["doc_id_max"] for s in shards], dtype=np.int64)

    @property
    def n_chunks(self) -> int:
        return int(self.manifest["n_chunks"])

    def _locate(self, flat_ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._mins, flat_ids, side="right") - 1
        ok = (pos >= 0) & (flat_ids <= self._maxs[np.clip(pos, 0, None)])
        if not ok.all():
            bad = flat_ids[~ok][:5].tolist()
            raise KeyError(f"doc_ids not in corpus {self.paths.name!r}: {bad}")
        return pos

    def fetch(self, doc_ids: np.ndarray, columns: tuple[str, ...] = ("embedding",)) -> dict:
        """Rows for ``doc_ids`` (any shape, int64, all present in the corpus).

        Returns ``{column: array}`` with the ids' shape prepended: ``embedding`` as float32
        ``[*shape, dim]``, other columns as object/number arrays of ``shape``. Reads only the
        shards that hold the requested ids, one at a time.
        """
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        flat = doc_ids.ravel()
        pos = self._locate(flat)
        out: dict[str, np.ndarray] = {}
        for col in columns:
            if col == "embedding":
                out[col] = np.empty((flat.size, self.dim), dtype=np.float32)
            else:
                out[col] = np.empty(flat.size, dtype=object)
        for shard_pos in np.unique(pos):
            shard = self.shards[shard_pos]
            sel = np.nonzero(pos == shard_pos)[0]
            table = pq.read_table(
                self.paths.embeddings / shard["file"], columns=["doc_id", *columns],
                memory_map=True,
            )
            ids = table["doc_id"].to_numpy()
            rows = np.searchsorted(ids, flat[sel])
            rows = np.clip(rows, 0, len(ids) - 1)
            if not np.array_equal(ids[rows], flat[sel]):
                missing = flat[sel][ids[rows] != flat[sel]][:5].tolist()
                raise KeyError(f"doc_ids missing from shard {shard['file']}: {missing}")
            for col in columns:
                if col == "embedding":
                    out[col][sel] = embedding_matrix(table[col], self.dim)[rows]
                else:
                    out[col][sel] = table[col].take(pa.array(rows)).to_numpy(zero_copy_only=False)
        shape = doc_ids.shape
        return {
            col: arr.reshape(*shape, self.dim) if col == "embedding" else arr.reshape(shape)
            for col, arr in out.items()
        }
