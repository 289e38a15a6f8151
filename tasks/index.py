"""Building the sharded faiss index of an embedded corpus (one Ray task per shard)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq

from sift_ops import index as fx
from tasks.corpus import embedding_matrix
from tasks.workspace import CorpusPaths, write_json_atomic

log = logging.getLogger(__name__)


def _training_sample(paths: CorpusPaths, shards: list[dict], dim: int, size: int,
                     seed: int = 0) -> np.ndarray:
    """Up to ``size`` vectors drawn evenly across shards (one shard in memory at a time)."""
    total = sum(s["n_rows"] for s in shards)
    rng = np.random.default_rng(seed)
    parts = []
    for shard in shards:
        take = min(shard["n_rows"], int(np.ceil(size * shard["n_rows"] / max(total, 1))))
        if take <= 0:
            continue
        table = pq.read_table(paths.embeddings / shard["file"], columns=["embedding"])
        emb = embedding_matrix(table["embedding"], dim)
        parts.append(emb[np.sort(rng.choice(len(emb), take, replace=False))])
    return np.concatenate(parts)[:size] if parts else np.empty((0, dim), np.float32)


def _build_one(emb_path: str, index_path: str, dim: int, template: bytes | None,
               factory: str) -> dict:
    """Read one embedding shard, index it, write the index file atomically."""
    t0 = time.perf_counter()
    table = pq.read_table(emb_path, columns=["doc_id", "embedding"])
    emb = embedding_matrix(table["embedding"], dim)
    index = fx.build_shard_index(emb, table["doc_id"].to_numpy(), template, factory)
    fx.write_index(index, index_path)
    return {"index": index_path, "ntotal": int(index.ntotal),
            "seconds": time.perf_counter() - t0}


def build_indices(paths: CorpusPaths, factory: str = fx.DEFAULT_FACTORY, *,
                  train_size: int = 50_000, rebuild: bool = False, progress=None,
                  ray_address: str | None = None) -> dict:
    """One faiss index per embedding shard; returns a summary and writes ``index.json``.

    Shards whose index already exists for the same factory are skipped; a different
    factory (or ``rebuild``) replaces the whole index folder.
    """
    import ray

    from tasks.ray_runtime import ensure_ray

    manifest = paths.load_manifest()
    if manifest.get("status") != "complete":
        raise RuntimeError(f"corpus {paths.name!r} is not completely embedded; rerun embed")
    dim = int(manifest["dim"])
    shards = [s for s in manifest["shards"] if s["n_rows"] > 0]
    if not shards:
        raise ValueError(f"corpus {paths.name!r} has no embedded rows to index")
    fx.new_index(dim, factory)  # validate the factory string before any work

    previous = None
    if paths.index_meta.is_file():
        import json

        previous = json.loads(paths.index_meta.read_text())
    if rebuild or (previous and (previous.get("factory") != factory
                                 or previous.get("dim") != dim)):
        shutil.rmtree(paths.index, ignore_errors=True)
        previous = None
    paths.index.mkdir(parents=True, exist_ok=True)
    for tmp in paths.index.glob("*.tmp"):
        tmp.unlink()

    t0 = time.perf_counter()
    template_index = fx.new_index(dim, factory)
    trained_seconds = 0.0
    if fx.needs_training(template_index):
        if paths.trained.is_file():
            template_index = fx.read_index(paths.trained)
        else:
            sample = _training_sample(paths, shards, dim, train_size)
            log.info("training %s on %d vectors", factory, len(sample))
            t1 = time.perf_counter()
            fx.train_index(template_index, sample)
            trained_seconds = time.perf_counter() - t1
            fx.write_index(template_index, paths.trained)
        template: bytes | None = fx.serialize(template_index)
    else:
        template = None

    todo = []
    done = []
    for shard in shards:
        index_path = paths.index_file(shard["file"].removesuffix(".parquet"))
        if index_path.is_file():
            done.append((shard, index_path))
        else:
            todo.append((shard, index_path))

    ensure_ray(address=ray_address)
    build = ray.remote(num_cpus=1)(_build_one)
    template_ref = ray.put(template)
    pending = {
        build.remote(str(paths.embeddings / s["file"]), str(p), dim, template_ref, factory): s
        for s, p in todo
    }
    built = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            pending.pop(ref)
            row = ray.get(ref)
            built.append(row)
            if progress is not None:
                progress(row)

    meta_shards = []
    for shard in shards:
        index_path = paths.index_file(shard["file"].removesuffix(".parquet"))
        meta_shards.append({"index": index_path.name, "embeddings": shard["file"],
                            "ntotal": shard["n_rows"]})
    meta = {
        "factory": factory, "dim": dim, "metric": "inner_product", "ids": "doc_id",
        "shards": meta_shards, "n_vectors": int(sum(s["n_rows"] for s in shards)),
        "trained": template is not None, "gpus": fx.num_gpus(),
        "built_at": datetime.now(timezone.utc).isoformat(),
    }
    write_json_atomic(paths.index_meta, meta)
    return {
        "corpus": paths.name, "factory": factory, "shards_total": len(shards),
        "shards_built": len(built), "shards_skipped": len(done),
        "n_vectors": meta["n_vectors"], "train_seconds": trained_seconds,
        "seconds": time.perf_counter() - t0, "gpus": meta["gpus"],
        "index_dir": str(paths.index),
    }


def load_index_meta(paths: CorpusPaths) -> dict:
    import json

    if not paths.index_meta.is_file():
        raise FileNotFoundError(
            f"corpus {paths.name!r} has no index at {paths.index}; "
            f"run `sift-curate index --name {paths.name}` first"
        )
    return json.loads(paths.index_meta.read_text())


def iter_shard_indices(paths: CorpusPaths, meta: dict) -> Iterator:
    """Yield the shard indices one at a time (at most one in memory)."""
    for shard in meta["shards"]:
        yield fx.read_index(paths.index / shard["index"])
