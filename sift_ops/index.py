"""faiss building blocks for one trained index in a few partitions (pure computation).

Vectors are L2-normalised, so inner product == cosine. Every index returns *row ids*:
the position of a vector in the corpus' dense vector store (0..N-1), from which the
exact float vector and the corpus ``doc_id`` are read. How the pieces fit:

    choose_index(n, d, budget)        -> factory string and partition count ("auto")
    new_index / train_index           -> one trained *empty* index (the template)
    encode_block(template, x, rows)   -> a block index (many embedding shards each)
    merge_ivf_ondisk(...)             -> a partition: blocks merged, lists on disk (mmap)
    coarse_assign + search_partition  -> approximate top-K' per partition
    exact_topk / rerank_exact         -> exact scores from the stored vectors
    merge_results                     -> global top-K over partitions (faiss.ResultHeap)

GPU faiss is used for training and exhaustive search when the installed faiss reports
GPUs (faiss-gpu); CPU otherwise. Index files are written by :mod:`tasks.index.build`
(atomically, through :mod:`tasks.runtime.atomic`); ``merge_ivf_ondisk`` writes the one
file faiss itself must write, a partition's inverted lists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

# Exhaustive search while it is cheap: 65,536 x 384-d is 25M multiply-adds per query,
# about 0.3 ms on two cores; the sample and the tests stay exact.
FLAT_MAX_VECTORS = 1 << 16
# Above this many lists a flat coarse quantiser costs more than the list scans: use HNSW.
HNSW_QUANTIZER_MIN_LISTS = 1 << 16
# faiss warns below 39 training points per centroid; 64 keeps k-means stable.
TRAIN_POINTS_PER_LIST = 64
MAX_TRAIN_POINTS = 1 << 20
ID_BYTES = 8  # an int64 id per vector in the inverted lists


def num_gpus() -> int:
    """GPUs visible to faiss (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20,
               "MB": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30,
               "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_size(text: str | int | float) -> int:
    """``"4GB"``, ``"512MiB"``, ``"2e9"`` or a number of bytes -> bytes (1 GB = 2**30)."""
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", str(text))
        unit = m.group(2).upper() if m else "?"
        try:
            value = float(m.group(1)) if m else float("nan")
        except ValueError:
            value = float("nan")
        if unit not in _SIZE_UNITS or not math.isfinite(value):
            raise ValueError(f"invalid size {text!r}: use e.g. 4GB, 512MB or a byte count")
    if value <= 0:
        raise ValueError(f"size must be positive (got {text!r})")
    return int(value * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class IndexChoice:
    """What to build for a corpus: see :func:`choose_index`."""

    factory: str            # faiss index_factory string (inner product)
    kind: str               # "flat", "ivf" or "other" (any other factory string)
    nlist: int | None       # IVF lists
    code_bytes: int         # bytes per vector in the index's codes (ids excluded)
    bytes_per_vector: int   # codes + id, in RAM
    partitions: int         # so that one partition fits the memory budget
    reason: str


def pq_subquantizers(dim: int) -> int:
    """PQ code size in bytes for ``dim``: 8-d sub-vectors at 8 bits each (``d/8`` bytes),
    the largest divisor of ``dim`` not above ``d/8`` otherwise; 48 bytes for d=384."""
    target = max(1, dim // 8)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


def ivf_lists(n: int) -> int:
    """IVF lists for ``n`` vectors: the power of two nearest to sqrt(n), in [64, 2**18].

    sqrt(n) balances the two halves of a query's cost (n/nlist codes per probed list
    against nlist centroid distances); a power of two keeps list sizes predictable.
    """
    nlist = 2 ** round(math.log2(max(math.sqrt(max(n, 1)), 1.0)))
    return int(min(max(nlist, 64), 1 << 18))


def choose_index(n: int, dim: int, memory_budget: int, factory: str = "auto",
                 flat_max: int = FLAT_MAX_VECTORS) -> IndexChoice:
    """The index structure for ``n`` vectors of ``dim`` and a per-partition memory budget
    in bytes. ``factory="auto"``: exact ``Flat`` up to ``flat_max`` vectors, else
    ``IVF{sqrt n},PQ{d/8}x8`` (HNSW coarse quantiser from 2**16 lists). Any other string
    is used as given (validated)."""
    if n < 1:
        raise ValueError("no vectors to index")
    if factory in (None, "", "auto"):
        if n <= flat_max:
            return _choice("Flat", dim, n, memory_budget,
                           f"auto: {n:,} <= {flat_max:,} vectors, exhaustive search is cheap")
        nlist = ivf_lists(n)
        m = pq_subquantizers(dim)
        quant = f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_MIN_LISTS else f"IVF{nlist}"
        return _choice(f"{quant},PQ{m}x8", dim, n, memory_budget,
                       f"auto: {n:,} vectors > {flat_max:,}: {nlist} lists ~ sqrt(n), "
                       f"PQ {m} bytes per vector, exact re-rank from the vector store")
    return _choice(factory, dim, n, memory_budget, "given")


def _choice(factory: str, dim: int, n: int, budget: int, reason: str) -> IndexChoice:
    index = new_index(dim, factory)  # validates the string
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        kind, nlist, code = "ivf", int(ivf.nlist), int(ivf.code_size)
    elif isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        kind, nlist, code = "flat", None, 4 * dim
    else:
        kind, nlist = "other", None
        code = int(getattr(faiss.downcast_index(index), "code_size", 4 * dim))
    per_vector = code + ID_BYTES
    parts = max(1, math.ceil(n * per_vector / max(budget, 1)))
    return IndexChoice(factory, kind, nlist, code, per_vector, parts, reason)


def _check_matrix(x: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array [n, d], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what}: embedding dimension {x.shape[1]} != index dimension {dim}")
    return x


def new_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product index for ``factory`` ("Flat", "IVF4096,PQ48x8", ...)."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:  # faiss reports a bad factory string as RuntimeError
        raise ValueError(f"invalid faiss index factory {factory!r}: {err}") from err


def needs_training(index: faiss.Index) -> bool:
    return not index.is_trained


def train_index(index: faiss.Index, sample: np.ndarray, niter: int = 12) -> faiss.Index:
    """Train ``index`` in place on ``sample [n, d]`` (coarse k-means on GPU if present)."""
    sample = _check_matrix(sample, index.d, "training sample")
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = niter
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "pq"):
            # Polysemous training (on by default from index_factory) took ~70 of 95 s on
            # 16k vectors here and serves only Hamming-filtered search, which we never
            # use; PQ codebooks of 256 centroids need no more than 64 points each.
            ivf.do_polysemous_training = False
            ivf.pq.cp.niter = min(ivf.pq.cp.niter, 10)
            ivf.pq.cp.max_points_per_centroid = 64
        ivf.cp.max_points_per_centroid = max(ivf.cp.max_points_per_centroid,
                                             TRAIN_POINTS_PER_LIST)
        if num_gpus() > 0 and ivf.quantizer.ntotal == 0:
            clus = faiss.Clustering(index.d, ivf.nlist, ivf.cp)
            clus.spherical = True
            gpu_flat = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(index.d))
            clus.train(sample, gpu_flat)
            ivf.quantizer.add(faiss.vector_float_to_array(clus.centroids)
                              .reshape(ivf.nlist, index.d))
            ivf.quantizer.is_trained = True
    index.train(sample)
    return index


def train_size_for(nlist: int | None, n: int) -> int:
    """Training vectors: 64 per IVF list (capped at 2**20 and at ``n``), 65,536 for
    other trainable indices (``nlist`` None)."""
    want = nlist * TRAIN_POINTS_PER_LIST if nlist else 65_536
    return int(min(n, want, MAX_TRAIN_POINTS))


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(blob: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))


def encode_block(template: bytes, vectors: Iterable[tuple[np.ndarray, np.ndarray]],
                 dim: int) -> faiss.Index:
    """A block index: the trained empty ``template`` plus every ``(x [n, d] float32,
    rows [n] int64)`` chunk of ``vectors`` (consumed lazily, one chunk in memory)."""
    index = deserialize(template)
    for x, rows in vectors:
        x = _check_matrix(x, dim, "block vectors")
        index.add_with_ids(x, np.ascontiguousarray(rows, dtype=np.int64))
    return index


def new_id_index(dim: int, factory: str, template: bytes | None = None) -> faiss.Index:
    """A non-IVF partition index whose search returns row ids: ``IDMap2`` over the
    factory (the trained ``template`` when the factory needs training)."""
    inner = deserialize(template) if template is not None else new_index(dim, factory)
    if needs_training(inner):
        raise ValueError(f"factory {factory!r} needs training: pass a trained template")
    return faiss.IndexIDMap2(inner)


def merge_ivf_ondisk(template: bytes, block_files: list[str | Path],
                     ivfdata: str | Path) -> faiss.Index:
    """Merge IVF block indices into one index whose inverted lists live in ``ivfdata``
    (memory-mapped at search time: a partition larger than RAM still serves)."""
    index = deserialize(template)
    ivf = faiss.extract_index_ivf(index)
    if index.ntotal:
        raise ValueError("merge_ivf_ondisk needs the empty trained template")
    parts = []
    for f in block_files:
        blk = faiss.read_index(str(f), faiss.IO_FLAG_MMAP)
        blk_ivf = faiss.extract_index_ivf(blk)
        blk_ivf.own_invlists = False  # the merged lists outlive the block objects
        parts.append((blk, blk_ivf.invlists))
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    vec = faiss.InvertedListsPtrVector()
    for _, inv in parts:
        vec.push_back(inv)
    ntotal = lists.merge_from_multiple(vec.data(), vec.size(), False)
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    return index


def read_index(path: str | Path, mmap: bool = False) -> faiss.Index:
    """Read an index; ``mmap``: memory-map instead of loading. An IVF partition's lists
    live in ``<name>.ivfdata`` beside it (faiss maps that file itself, found in the same
    folder so a workspace can move); flat codes are mapped from the index file."""
    path = Path(path)
    flags = 0
    if mmap and path.with_suffix(".ivfdata").is_file():
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    elif mmap:
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
    return faiss.read_index(str(path), flags)


def coarse_quantizer(trained: faiss.Index) -> faiss.Index | None:
    """The coarse quantiser of an IVF index (None for other kinds)."""
    ivf = faiss.try_extract_index_ivf(trained)
    return None if ivf is None else ivf.quantizer


def set_efsearch(index: faiss.Index | None, ef: int | None) -> None:
    """``efSearch`` of an HNSW index or HNSW coarse quantiser (no-op for other kinds)."""
    if index is None or not ef:
        return
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIDMap2 | faiss.IndexIDMap):
        inner = faiss.downcast_index(inner.index)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(ef)


def coarse_assign(quantizer: faiss.Index, queries: np.ndarray, nprobe: int,
                  efsearch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``nprobe`` nearest lists of each query, once per query block: ``(D, I)``
    ``[B, nprobe]``, shared by every partition (they all use this quantiser)."""
    set_efsearch(quantizer, efsearch)
    return quantizer.search(_check_matrix(queries, quantizer.d, "queries"), int(nprobe))


def search_partition(index: faiss.Index, queries: np.ndarray, k: int, *,
                     assign: tuple[np.ndarray, np.ndarray] | None = None,
                     efsearch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``k`` of one partition: ``(scores [B, k], rows [B, k])``; with
    ``assign`` (from :func:`coarse_assign`) an IVF partition skips its own quantiser."""
    queries = _check_matrix(queries, index.d, "queries")
    k = int(max(1, min(k, max(index.ntotal, 1))))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and assign is not None:
        dq, iq = assign
        ivf.nprobe = int(iq.shape[1])
        return ivf.search_preassigned(queries, k, np.ascontiguousarray(iq, dtype=np.int64),
                                      np.ascontiguousarray(dq, dtype=np.float32))
    set_efsearch(index, efsearch)
    return index.search(queries, k)


def rerank_exact(queries: np.ndarray, rows: np.ndarray,
                 fetch: Callable[[np.ndarray], np.ndarray], k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` among approximate candidates ``rows [B, K']`` (-1 = none).

    ``fetch(flat_rows) -> [n, d] float32`` reads the stored vectors. Returns
    ``(scores [B, k] float32, rows [B, k] int64)``, best first; -inf / -1 pad.
    """
    B, kp = rows.shape
    valid = rows >= 0
    uniq, inv = np.unique(rows.ravel(), return_inverse=True)
    vecs = np.zeros((len(uniq), queries.shape[1]), dtype=np.float32)
    real = uniq >= 0  # -1 marks "no result": nothing to read
    vecs[real] = fetch(uniq[real])
    scores = np.einsum("bkd,bd->bk", vecs[inv.reshape(B, kp)],
                       np.asarray(queries, dtype=np.float32), optimize=True)
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    k = min(k, kp)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out_scores = np.take_along_axis(scores, top, 1)
    out_rows = np.where(np.isfinite(out_scores), np.take_along_axis(rows, top, 1), -1)
    return out_scores, out_rows.astype(np.int64)


def merge_results(parts: Iterable[tuple[np.ndarray, np.ndarray]], n_queries: int, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Global top-``k`` of per-partition ``(scores, rows)`` (largest first), padded with
    -inf / -1."""
    heap = faiss.ResultHeap(n_queries, k, keep_max=True)
    for scores, rows in parts:
        heap.add_result(np.ascontiguousarray(scores, dtype=np.float32),
                        np.ascontiguousarray(rows, dtype=np.int64))
    heap.finalize()
    return heap.D, heap.I


def exact_topk(queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, int]], k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product over a corpus streamed as ``(x [n, d], first_row)``
    chunks (one chunk in memory): ``(scores [B, k], rows [B, k])``."""
    queries = _check_matrix(queries, None, "queries")
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for x, first in chunks:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not len(x):
            continue
        sims = queries @ x.T
        kk = min(k, len(x))
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        heap.add_result(np.take_along_axis(sims, part, 1).astype(np.float32),
                        (part + first).astype(np.int64))
    heap.finalize()
    return heap.D, heap.I


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top-``k`` rows found among ``found[:, :k]``."""
    k = min(k, truth.shape[1], found.shape[1])
    hits = [len(np.intersect1d(f[:k], t[:k][t[:k] >= 0])) / max(int((t[:k] >= 0).sum()), 1)
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")
