"""Sharded faiss indices over L2-normalised embeddings (inner product == cosine).

One index per embedding shard, built from an ``index_factory`` string and wrapped in an
``IDMap2`` so search returns the corpus' int64 ``doc_id`` directly. Trainable factories
(IVF, PQ, ...) are trained once on a sample and the trained *empty* index is cloned for
every shard, so all shards share one coarse quantiser and codebook. Search runs over every
shard and merges the per-shard top-k into a global top-k.

GPU faiss is used when the installed faiss reports GPUs (faiss-gpu), CPU otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

DEFAULT_FACTORY = "Flat"


def num_gpus() -> int:
    """GPUs visible to faiss (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def _check_matrix(x: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array [n, d], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what}: embedding dimension {x.shape[1]} != index dimension {dim}")
    return x


def new_index(dim: int, factory: str = DEFAULT_FACTORY) -> faiss.Index:
    """An empty inner-product index for ``factory`` (e.g. "Flat", "IVF256,Flat", "HNSW32")."""
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:  # faiss reports a bad factory string as RuntimeError
        raise ValueError(f"invalid faiss index factory {factory!r}: {err}") from err
    return faiss.IndexIDMap2(inner)


def needs_training(index: faiss.Index) -> bool:
    return not index.is_trained


def train_index(index: faiss.Index, sample: np.ndarray) -> faiss.Index:
    """Train ``index`` in place on ``sample [n, d]`` (on GPU when one is present)."""
    sample = _check_matrix(sample, index.d, "training sample")
    if num_gpus() > 0:
        # Train the IVF coarse quantiser with GPU k-means, then train the rest on CPU.
        ivf = faiss.try_extract_index_ivf(faiss.downcast_index(index.index))
        if ivf is not None:
            clus = faiss.Clustering(index.d, ivf.nlist)
            gpu_flat = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(index.d))
            clus.train(sample, gpu_flat)
            centroids = faiss.vector_float_to_array(clus.centroids).reshape(ivf.nlist, index.d)
            ivf.quantizer.add(centroids)
            ivf.quantizer.is_trained = True
    index.train(sample)
    return index


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(blob: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))


def build_shard_index(
    embeddings: np.ndarray, doc_ids: np.ndarray, template: bytes | None = None,
    factory: str = DEFAULT_FACTORY,
) -> faiss.Index:
    """Index one shard: ``embeddings [n, d]`` float32 with ``doc_ids [n]`` int64.

    ``template`` is a serialised trained empty index (from :func:`serialize`); without it a
    fresh index is made from ``factory`` (which must then need no training).
    """
    if template is not None:
        index = deserialize(template)
    else:
        index = new_index(embeddings.shape[1], factory)
        if needs_training(index):
            raise ValueError(f"factory {factory!r} needs training: pass a trained template")
    embeddings = _check_matrix(embeddings, index.d, "shard embeddings")
    ids = np.ascontiguousarray(doc_ids, dtype=np.int64)
    if ids.shape != (embeddings.shape[0],):
        raise ValueError(f"doc_ids shape {ids.shape} does not match {embeddings.shape[0]} rows")
    index.add_with_ids(embeddings, ids)
    return index


def write_index(index: faiss.Index, path: str | Path) -> None:
    """Write atomically: a crash never leaves a truncated index under the final name."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def read_index(path: str | Path, mmap: bool = False) -> faiss.Index:
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    return faiss.read_index(str(path), flags)


def set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    """Set ``nprobe`` on an IVF index inside ``index`` (no-op for other kinds)."""
    if not nprobe:
        return
    inner = index.index if isinstance(index, faiss.IndexIDMap2) else index
    ivf = faiss.try_extract_index_ivf(faiss.downcast_index(inner))
    if ivf is not None:
        ivf.nprobe = int(nprobe)


def search_shards(
    shards: Iterable[faiss.Index], queries: np.ndarray, k: int, *, nprobe: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Global top-``k`` by inner product over all ``shards`` (loaded lazily, one at a time).

    Returns ``(scores [B, k] float32, doc_ids [B, k] int64)``, best first; when fewer than k
    vectors exist, missing slots hold score -inf and id -1.
    """
    queries = _check_matrix(queries, None, "queries")
    heap = faiss.ResultHeap(queries.shape[0], k, keep_max=True)
    gpus = num_gpus()
    for index in shards:
        if index.d != queries.shape[1]:
            raise ValueError(f"query dimension {queries.shape[1]} != index dimension {index.d}")
        set_nprobe(index, nprobe)
        if gpus > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        scores, ids = index.search(queries, min(k, max(index.ntotal, 1)))
        heap.add_result(scores, ids)
    heap.finalize()
    return heap.D, heap.I
