"""Searching a partitioned corpus index: one Ray actor per partition, exact candidates.

Per block of query vectors ``[B, d]``:

    driver: coarse assignment once (IVF: the nprobe nearest lists of each query)
    actors: each searches its partition (memory-mapped, loaded once per actor) for the
            approximate top-K' (K' = K x rerank_factor) and re-ranks them exactly with its
            own slice of the vector store -> exact top-K of the partition
    driver: merges the per-partition top-K (faiss.ResultHeap), then fetches the winners'
            exact vectors and doc_ids from the actors that own them

No file is opened per block and no embedding shard is read. Local Ray by default;
``ray_address`` (or $RAY_ADDRESS) spreads the actors over a cluster (the workspace must
be on storage every node can read, as for ``embed``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sift_ops import index as fx
from tasks.index.vector_store import VectorStore, fetch_columns
from tasks.runtime.workspace import CorpusPaths

log = logging.getLogger(__name__)

# Re-rank at most this many candidate floats at once ([b, K', d]): bounded memory.
RERANK_FLOATS = 1 << 24


def load_index_meta(paths: CorpusPaths) -> dict:
    """The finished index's metadata (``index/index.json``)."""
    if not paths.index_meta.is_file():
        raise FileNotFoundError(
            f"corpus {paths.name!r} has no index at {paths.index}; "
            f"run `sift-curate index --name {paths.name}` first"
        )
    meta = json.loads(paths.index_meta.read_text())
    if meta.get("version", 1) < 2:
        raise RuntimeError(
            f"corpus {paths.name!r} has an index of the old one-per-shard layout; rebuild "
            f"it: `sift-curate index --name {paths.name} --rebuild`"
        )
    return meta


def partition_blocks(meta: dict, partition: dict) -> list[dict]:
    wanted = set(partition["blocks"])
    return [b for b in meta["blocks"] if b["block"] in wanted]


class PartitionSearcher:
    """One partition and its vector-store slice (a Ray actor, or a plain object).

    Args:
        index_dir: the corpus' ``index`` folder.
        partition: a partition entry of ``index.json``.
        blocks: the store blocks of that partition.
        dim: vector dimension.
        exact: the partition's scores are already exact (a Flat index over float32).
        threads: faiss OpenMP threads (None: faiss' default).
    """

    def __init__(self, index_dir: str, partition: dict, blocks: list[dict], dim: int,
                 exact: bool, threads: int | None = None) -> None:
        import faiss

        if threads:
            faiss.omp_set_num_threads(int(threads))
        self.index_dir = Path(index_dir)
        self.partition = partition
        self.index = fx.read_index(self.index_dir / "partitions" / partition["file"],
                                   mmap=True)
        self.store = VectorStore(self.index_dir / "store", blocks, dim)
        self.exact = exact
        self.dim = dim

    def ready(self) -> dict:
        return {"partition": self.partition["partition"], "ntotal": int(self.index.ntotal),
                "pid": os.getpid(), "node": _node_id()}

    def search(self, queries: np.ndarray, k: int, rerank_factor: int = 1,
               assign: tuple[np.ndarray, np.ndarray] | None = None,
               efsearch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` ``(scores [B, k], rows [B, k])`` of this partition."""
        if self.exact:
            return fx.search_partition(self.index, queries, k, assign=assign,
                                       efsearch=efsearch)
        kp = k * max(1, int(rerank_factor))
        scores, rows = fx.search_partition(self.index, queries, kp, assign=assign,
                                           efsearch=efsearch)
        step = max(1, RERANK_FLOATS // (rows.shape[1] * self.dim))
        parts = [fx.rerank_exact(queries[s : s + step], rows[s : s + step],
                                 self.store.vectors, k)
                 for s in range(0, len(queries), step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def fetch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact vectors ``[n, d]`` as stored (float16 travels at half the bytes; the
        driver widens it) and doc_ids ``[n]`` of ``rows`` (all owned)."""
        return self.store.vectors(rows, dtype=None), self.store.doc_ids(rows)


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # not inside Ray
        return None


@dataclass
class Hits:
    """Exact top-K of a query block: ``scores``/``rows``/``doc_ids`` ``[B, K]`` (-inf, -1
    and -1 where the corpus has fewer than K vectors), ``vectors [B, K, d]`` float32."""

    scores: np.ndarray
    rows: np.ndarray
    doc_ids: np.ndarray
    vectors: np.ndarray


class SearchService:
    """The partitions of one corpus index, loaded once, answering query blocks.

    Args:
        paths: the corpus.
        nprobe, efsearch, rerank_factor: override the settings recorded at build time.
        ray_address: a Ray cluster (else $RAY_ADDRESS, else a local Ray).
        local: search in this process instead of Ray actors (build-time recall sweeps).
        threads: faiss threads per partition (default: the CPUs per actor).
    """

    def __init__(self, paths: CorpusPaths, *, nprobe: int | None = None,
                 efsearch: int | None = None, rerank_factor: int | None = None,
                 ray_address: str | None = None, local: bool = False,
                 threads: int | None = None, meta: dict | None = None) -> None:
        self.paths = paths
        self.meta = meta or load_index_meta(paths)
        self.dim = int(self.meta["dim"])
        self.n_vectors = int(self.meta["n_vectors"])
        search = self.meta.get("search", {})
        self.nprobe = int(nprobe or search.get("nprobe") or 1)
        self.efsearch = efsearch or search.get("efsearch")
        self.rerank_factor = int(rerank_factor or search.get("rerank_factor") or 1)
        self.exact = bool(self.meta.get("exact"))
        self._trained = None
        self.quantizer = None
        if self.meta["kind"] == "ivf":
            self._trained = fx.read_index(paths.trained)  # keeps the quantiser alive
            self.quantizer = fx.coarse_quantizer(self._trained)
            nlist = int(self.meta["nlist"])
            if self.nprobe > nlist:
                self.nprobe = nlist
        parts = self.meta["partitions"]
        self.starts = np.array([p["row_start"] for p in parts], dtype=np.int64)
        self.local = local
        args = [(str(paths.index), p, partition_blocks(self.meta, p), self.dim, self.exact)
                for p in parts]
        if local:
            self._searchers = [PartitionSearcher(*a, threads=threads) for a in args]
            self.placement = [s.ready() for s in self._searchers]
        else:
            import ray

            from tasks.runtime.ray_runtime import ensure_ray

            resources = ensure_ray(address=ray_address)
            cpus = float(resources.get("CPU", 1))
            # leave the driver (coarse assignment, SIFT) half a CPU on a small machine
            per_actor = max(0.25, min(1.0, (cpus - 0.5) / len(parts)))
            threads = threads or max(1, int(cpus // len(parts)))
            actor = ray.remote(PartitionSearcher)
            self._actors = [
                actor.options(num_cpus=per_actor, scheduling_strategy="SPREAD")
                .remote(*a, threads=threads)
                for a in args
            ]
            self.placement = ray.get([a.ready.remote() for a in self._actors])
        log.info("search service: %d partitions, %d vectors, nprobe=%s rerank=%s",
                 len(parts), self.n_vectors, self.nprobe, self.rerank_factor)

    def settings(self) -> dict:
        return {"nprobe": self.nprobe if self.quantizer is not None else None,
                "efsearch": self.efsearch, "rerank_factor": self.rerank_factor,
                "partitions": len(self.starts), "exact": self.exact,
                "nodes": len({p["node"] for p in self.placement})}

    def _check(self, queries: np.ndarray) -> np.ndarray:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2:
            raise ValueError(f"queries: expected [B, d], got shape {queries.shape}")
        if queries.shape[1] != self.dim:
            raise ValueError(f"query embedding dimension {queries.shape[1]} != index "
                             f"dimension {self.dim}")
        return queries

    def search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact-scored top-``k`` ``(scores [B, k], rows [B, k])`` over all partitions."""
        queries = self._check(queries)
        assign = None
        if self.quantizer is not None:
            assign = fx.coarse_assign(self.quantizer, queries, self.nprobe, self.efsearch)
        kwargs = {"rerank_factor": self.rerank_factor, "assign": assign,
                  "efsearch": self.efsearch}
        if self.local:
            parts = [s.search(queries, k, **kwargs) for s in self._searchers]
        else:
            import ray

            q_ref = ray.put(queries)
            a_ref = ray.put(assign)
            parts = ray.get([a.search.remote(q_ref, k, self.rerank_factor, a_ref,
                                             self.efsearch) for a in self._actors])
        return fx.merge_results(parts, len(queries), k)

    def fetch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact vectors ``[*shape, d]`` and doc_ids ``[*shape]`` of ``rows`` (-1 gives
        zeros and -1), from the partitions that own them."""
        shape = rows.shape
        flat = rows.ravel()
        valid = flat >= 0
        uniq, inv = np.unique(flat[valid], return_inverse=True)
        owner = np.searchsorted(self.starts, uniq, side="right") - 1
        vec_u = np.zeros((len(uniq), self.dim), dtype=np.float32)
        ids_u = np.full(len(uniq), -1, dtype=np.int64)
        todo = [(p, np.nonzero(owner == p)[0]) for p in np.unique(owner)]
        if self.local:
            got = [self._searchers[p].fetch(uniq[sel]) for p, sel in todo]
        else:
            import ray

            got = ray.get([self._actors[p].fetch.remote(uniq[sel]) for p, sel in todo])
        for (_, sel), (v, d) in zip(todo, got, strict=True):
            vec_u[sel], ids_u[sel] = v, d
        vectors = np.zeros((flat.size, self.dim), dtype=np.float32)
        doc_ids = np.full(flat.size, -1, dtype=np.int64)
        vectors[valid], doc_ids[valid] = vec_u[inv], ids_u[inv]
        return vectors.reshape(*shape, self.dim), doc_ids.reshape(shape)

    def search(self, queries: np.ndarray, k: int) -> Hits:
        """Exact top-``k`` with the candidates' vectors: see :class:`Hits`."""
        scores, rows = self.search_rows(queries, k)
        vectors, doc_ids = self.fetch(rows)
        return Hits(scores, rows, doc_ids, vectors)

    def texts(self, rows: np.ndarray, columns: tuple[str, ...] = ("text",)
              ) -> dict[str, np.ndarray]:
        """Embedding-shard columns (``text``, ``source``) of ``rows`` (any shape; -1
        gives None), reading only the row groups of the picks."""
        store = VectorStore(self.paths.index / "store", self.meta["blocks"], self.dim)
        got = fetch_columns(store, self.paths.embeddings, rows.ravel(), columns)
        return {c: v.reshape(rows.shape) for c, v in got.items()}

    def close(self) -> None:
        if not self.local:
            import ray

            for a in self._actors:
                ray.kill(a)
            self._actors = []

    def __enter__(self) -> SearchService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
