"""Building a corpus index: one trained faiss model in a few partitions, plus the vector
store, with the recall measured at build time.

    index/plan.json                 blocks (shards -> rows) and partitions, fixed before work
    index/trained.faiss             the trained empty index (trained once, reused)
    index/blocks/block-BBBBB.json   a finished block (written last; .faiss for IVF)
    index/store/vectors-BBBBB.npy   exact vectors, doc_ids-BBBBB.npy their doc_ids
    index/partitions/part-PPPPP.faiss (+ .ivfdata)  memory-mapped at search time
    index/index.json                the finished index: what search opens
    index/recall.png                recall@K against latency, per re-rank factor

Blocks are the unit of parallel work (one Ray task turns many embedding shards into one
block); partitions are the unit of search (one actor each, sized to the memory budget).
A block's rows are fixed in the plan before it is built, so a killed build keeps its
finished blocks and a rerun never adds a vector twice; shards embedded later become new
blocks and new partitions, with the same trained model and no rebuild of the rest.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from sift_ops import index as fx
from tasks.corpus.lookup import embedding_matrix
from tasks.index.search_service import SearchService
from tasks.index.vector_store import VectorStore, doc_ids_file, vectors_file
from tasks.runtime.atomic import atomic_path, replace_durably, write_json_atomic
from tasks.runtime.workspace import CorpusPaths

log = logging.getLogger(__name__)

INDEX_VERSION = 2
DEFAULT_MEMORY_BUDGET = "4GB"
DEFAULT_BLOCK_VECTORS = 1 << 18
HOLDOUT_QUERIES = 1000
RERANK_FACTORS = (1, 2, 4, 8, 16)
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
EF_SEARCHES = (16, 32, 64, 128, 256, 512)


def write_index(index: Any, path: Path) -> None:
    """``faiss.write_index`` through :func:`tasks.runtime.atomic.atomic_path`: a reader
    (or a resumed build) finds the old file or the whole new one, never a truncated index."""
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def _dirs(paths: CorpusPaths) -> dict[str, Path]:
    root = paths.index
    return {"root": root, "blocks": root / "blocks", "store": root / "store",
            "partitions": root / "partitions", "plan": root / "plan.json"}


def store_dtype_for(kind: str, requested: str = "auto") -> str:
    """float32 beside an exact Flat index (the scores stay bit-exact), float16 otherwise
    (half the bytes; the measured effect on SIFT picks is in benchmarks/README.md)."""
    if requested in ("float16", "float32"):
        return requested
    if requested != "auto":
        raise ValueError(f"store dtype must be auto, float16 or float32 (got {requested!r})")
    return "float32" if kind == "flat" else "float16"


# ---------------------------------------------------------------------------- planning


def _group(items: list[dict], size_of, limit: int) -> list[list[dict]]:
    """Consecutive groups of ``items`` whose sizes add up to at most ``limit`` (a single
    larger item forms its own group)."""
    groups: list[list[dict]] = []
    cur: list[dict] = []
    total = 0
    for it in items:
        s = size_of(it)
        if cur and total + s > limit:
            groups.append(cur)
            cur, total = [], 0
        cur.append(it)
        total += s
    if cur:
        groups.append(cur)
    return groups


def plan_index(shards: list[dict], previous: dict | None, *, dim: int, factory: str,
               memory_budget: int, store_dtype: str, block_vectors: int) -> dict:
    """Blocks and partitions for ``shards`` (manifest entries with ``file``/``n_rows``).

    Blocks and partitions of ``previous`` are kept as they are (their rows are fixed);
    shards not in any block become new blocks, appended after the last row, and the new
    blocks new partitions. Raises if an indexed shard changed or disappeared.
    """
    by_file = {s["file"]: s for s in shards}
    if previous is None:
        n = sum(s["n_rows"] for s in shards)
        choice = fx.choose_index(n, dim, memory_budget, factory)
        plan = {"version": INDEX_VERSION, "dim": dim, "factory_requested": factory,
                "factory": choice.factory, "kind": choice.kind, "nlist": choice.nlist,
                "code_bytes": choice.code_bytes, "bytes_per_vector": choice.bytes_per_vector,
                "choice_reason": choice.reason, "store_dtype": store_dtype_for(choice.kind,
                                                                              store_dtype),
                "store_dtype_requested": store_dtype, "memory_budget": memory_budget,
                "planned_for": n, "blocks": [], "partitions": []}
    else:
        plan = json.loads(json.dumps(previous))
        plan["memory_budget"] = memory_budget
    indexed = {}
    for b in plan["blocks"]:
        for s in b["shards"]:
            indexed[s["file"]] = s["n_rows"]
    for file, n_rows in indexed.items():
        now = by_file.get(file)
        if now is None or now["n_rows"] != n_rows:
            raise RuntimeError(
                f"embedding shard {file} changed since it was indexed ({n_rows} rows, now "
                f"{now['n_rows'] if now else 'missing'}); rebuild the index with --rebuild"
            )
    new = [s for s in shards if s["file"] not in indexed]
    next_row = sum(b["n"] for b in plan["blocks"])
    next_block = len(plan["blocks"])
    new_blocks = []
    for group in _group(new, lambda s: s["n_rows"], block_vectors):
        offset, entries = 0, []
        for s in group:
            entries.append({"file": s["file"], "n_rows": s["n_rows"], "offset": offset})
            offset += s["n_rows"]
        new_blocks.append({"block": next_block, "start": next_row, "n": offset,
                           "shards": entries})
        next_block += 1
        next_row += offset
    plan["blocks"] += new_blocks
    if new_blocks:
        n_new = sum(b["n"] for b in new_blocks)
        n_parts = max(1, math.ceil(n_new * plan["bytes_per_vector"] / memory_budget))
        next_part = len(plan["partitions"])
        first = new_blocks[0]["start"]
        groups: list[list[dict]] = [[] for _ in range(n_parts)]
        # by block midpoint: consecutive blocks, at most n_parts balanced groups (filling
        # groups up to n/P left a tiny remainder partition with an actor of its own)
        for b in new_blocks:
            mid = b["start"] - first + b["n"] / 2
            groups[min(n_parts - 1, int(mid * n_parts / n_new))].append(b)
        for group in (g for g in groups if g):
            plan["partitions"].append({
                "partition": next_part, "file": f"part-{next_part:05d}.faiss",
                "blocks": [b["block"] for b in group], "row_start": group[0]["start"],
                "row_end": group[-1]["start"] + group[-1]["n"],
            })
            next_part += 1
    return plan


def _compatible(previous: dict, dim: int, factory: str, store_dtype: str) -> str | None:
    """Why ``previous`` cannot be extended (None when it can)."""
    if previous.get("version") != INDEX_VERSION:
        return "an index of an older layout"
    if previous.get("dim") != dim:
        return f"dimension {previous.get('dim')} != {dim}"
    if previous.get("factory_requested") != factory and previous.get("factory") != factory:
        return f"factory {previous.get('factory_requested')!r} != {factory!r}"
    if previous.get("store_dtype_requested", "auto") != store_dtype \
            and previous.get("store_dtype") != store_dtype:
        return f"store dtype {previous.get('store_dtype')} != {store_dtype}"
    return None


# ---------------------------------------------------------------------------- training


def training_sample(paths: CorpusPaths, shards: list[dict], dim: int, size: int,
                    seed: int = 0) -> np.ndarray:
    """``size`` vectors drawn uniformly at random over all rows of all ``shards`` (not the
    first rows), reading one shard's embedding column at a time."""
    counts = np.array([s["n_rows"] for s in shards], dtype=np.int64)
    total = int(counts.sum())
    size = min(size, total)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=size, replace=False))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    which = np.searchsorted(bounds, picks, side="right") - 1
    out = np.empty((size, dim), dtype=np.float32)
    filled = 0
    for s in np.unique(which):
        local = picks[which == s] - bounds[s]
        emb = _read_shard(paths, shards[int(s)], dim)[1]
        out[filled : filled + len(local)] = emb[local]
        filled += len(local)
    return out


def _read_shard(paths: CorpusPaths, shard: dict, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(doc_ids [n], embeddings [n, d] float32)`` of one shard, checked."""
    path = paths.embeddings / shard["file"]
    table = pq.read_table(path, columns=["doc_id", "embedding"])
    if table.num_rows != shard["n_rows"]:
        raise RuntimeError(f"{path}: {table.num_rows} rows, the manifest says {shard['n_rows']}")
    size = getattr(table.schema.field("embedding").type, "list_size", None)
    if size is not None and size != dim:
        raise ValueError(f"{path}: embedding dimension {size} != corpus dimension {dim}")
    emb = embedding_matrix(table["embedding"], dim)
    if not np.isfinite(emb).all():
        bad = int(np.nonzero(~np.isfinite(emb).all(axis=1))[0][0])
        raise ValueError(f"{path}: row {bad}: embedding has NaN or inf")
    return table["doc_id"].to_numpy(), emb


# ---------------------------------------------------------------------------- Ray tasks


def build_block(corpus_root: str, block: dict, dim: int, kind: str,
                store_dtype: str, template: bytes | None, threads: int = 1) -> dict:
    """One block: its shards' vectors and doc_ids into the store, and (IVF) a block index
    with row ids; the ``block-B.json`` marker is written last."""
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    paths = _paths_from(corpus_root)
    d = _dirs(paths)
    b = block["block"]
    vec_tmp = d["store"] / f".vectors-{b:05d}.npy.tmp"
    ids_tmp = d["store"] / f".doc_ids-{b:05d}.npy.tmp"
    vec = np.lib.format.open_memmap(vec_tmp, mode="w+", dtype=store_dtype,
                                    shape=(block["n"], dim))
    ids = np.lib.format.open_memmap(ids_tmp, mode="w+", dtype=np.int64, shape=(block["n"],))
    index = fx.deserialize(template) if kind == "ivf" else None
    for s in block["shards"]:
        doc_ids, emb = _read_shard(paths, s, dim)
        lo, hi = s["offset"], s["offset"] + s["n_rows"]
        vec[lo:hi] = emb
        ids[lo:hi] = doc_ids
        if index is not None:
            index.add_with_ids(emb, np.arange(block["start"] + lo, block["start"] + hi,
                                              dtype=np.int64))
    vec.flush()
    ids.flush()
    del vec, ids
    replace_durably(vec_tmp, vectors_file(d["store"], b))
    replace_durably(ids_tmp, doc_ids_file(d["store"], b))
    if index is not None:
        write_index(index, d["blocks"] / f"block-{b:05d}.faiss")
    stats = {"block": b, "n": block["n"], "shards": len(block["shards"]),
             "seconds": time.perf_counter() - t0}
    write_json_atomic(d["blocks"] / f"block-{b:05d}.json", stats)
    return stats


def build_partition(corpus_root: str, plan: dict, partition: dict,
                    template: bytes | None, threads: int = 1) -> dict:
    """Merge a partition's blocks: IVF lists on disk (``merge_ondisk``), other kinds
    re-read from the store into an ``IDMap2`` index; marker written last."""
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    paths = _paths_from(corpus_root)
    d = _dirs(paths)
    p = partition["partition"]
    target = d["partitions"] / partition["file"]
    blocks = [b for b in plan["blocks"] if b["block"] in set(partition["blocks"])]
    if plan["kind"] == "ivf":
        ivfdata = target.with_suffix(".ivfdata")
        ivfdata.unlink(missing_ok=True)
        index = fx.merge_ivf_ondisk(template, [d["blocks"] / f"block-{b['block']:05d}.faiss"
                                               for b in blocks], ivfdata)
    else:
        index = fx.new_id_index(plan["dim"], plan["factory"], template)
        store = VectorStore(d["store"], blocks, plan["dim"])
        for x, first in store.iter_chunks():
            index.add_with_ids(x, np.arange(first, first + len(x), dtype=np.int64))
    write_index(index, target)
    n = int(index.ntotal)
    del index
    size = sum(f.stat().st_size for f in d["partitions"].glob(f"part-{p:05d}.*")
               if not f.name.endswith(".json"))
    stats = {**partition, "ntotal": n, "bytes": size, "seconds": time.perf_counter() - t0}
    write_json_atomic(d["partitions"] / f"part-{p:05d}.json", stats)
    return stats


def _paths_from(corpus_root: str) -> CorpusPaths:
    root = Path(corpus_root)
    return CorpusPaths(root.parent.parent, root.name)


def _run_ray(fn, calls: list[tuple], cpus_per_task: float, progress, what: str) -> list:
    import ray

    remote = ray.remote(num_cpus=cpus_per_task, max_retries=2)(fn)
    pending = {remote.remote(*args): args for args in calls}
    out = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            pending.pop(ref)
            row = ray.get(ref)
            out.append(row)
            if progress is not None:
                progress(what, row)
    return out


# ---------------------------------------------------------------------------- recall


def measure_recall(paths: CorpusPaths, meta: dict, *, k: int, target: float,
                   holdout: int = HOLDOUT_QUERIES, seed: int = 0) -> dict:
    """Recall@k of the built index against exact search, for held-out corpus vectors.

    The exact top-k is streamed over the vector store (one chunk in memory). For IVF
    indices every (rerank factor, nprobe) is timed until recall stops rising; the
    cheapest setting that reaches ``target`` becomes the default. Returns
    ``{"curve": [...], "search": {...}, "holdout": n, "k": k}``.
    """
    d = _dirs(paths)
    store = VectorStore(d["store"], meta["blocks"], meta["dim"])
    n = store.n_rows
    k = min(k, n)
    rng = np.random.default_rng(seed)
    q_rows = np.sort(rng.choice(n, size=min(holdout, n), replace=False))
    queries = store.vectors(q_rows)
    t0 = time.perf_counter()
    # the held-out vectors are in the index: their own row (a trivial hit) is dropped from
    # both sides, so the recall is that of the other k neighbours, as for a new prompt
    _, truth = fx.exact_topk(queries, store.iter_chunks(), min(k + 1, n))
    truth = _without_own(truth, q_rows, k)
    exact_seconds = time.perf_counter() - t0
    ks = sorted({x for x in (10, 50, 200, k) if x <= k})
    curve: list[dict] = []

    def point(service: SearchService, **setting) -> dict:
        t = time.perf_counter()
        _, rows = service.search_rows(queries, min(k + 1, n))
        ms = 1000 * (time.perf_counter() - t) / len(queries)
        rows = _without_own(rows, q_rows, k)
        row = {**setting, "ms_per_query": ms,
               **{f"recall@{x}": fx.recall_at(rows, truth, x) for x in ks}}
        curve.append(row)
        return row

    key = f"recall@{k}"
    if meta["kind"] == "ivf":
        nlist = int(meta["nlist"])
        hnsw = "HNSW" in meta["factory"].split(",")[0]
        nprobes = [p for p in NPROBES if p <= nlist] + ([nlist] if nlist not in NPROBES
                                                        else [])
        settings = [(p, max(2 * p, 64) if hnsw else None) for p in nprobes]
        factors = RERANK_FACTORS
    else:
        # HNSW graphs: sweep efSearch; other kinds have no search-time knob but R
        efs = EF_SEARCHES if "HNSW" in meta["factory"] else (None,)
        settings = [(None, ef) for ef in efs]
        factors = (1,) if meta.get("exact") else RERANK_FACTORS
    best_ms = float("inf")  # fastest setting that reached the target so far
    for r in factors:
        with SearchService(paths, local=True, meta=meta, rerank_factor=r) as svc:
            last = -1.0
            for nprobe, ef in settings:  # ever slower and (mostly) better
                if nprobe is not None:
                    svc.nprobe = nprobe
                svc.efsearch = ef
                row = point(svc, nprobe=nprobe, rerank_factor=r, efsearch=ef)
                if row[key] >= target:
                    best_ms = min(best_ms, row["ms_per_query"])
                    break
                # saturated, or slower than a setting already on target: stop here
                if row[key] - last < 0.002 or row["ms_per_query"] > best_ms:
                    break
                last = row[key]
    best = _best(curve, key, target)
    chosen = {"nprobe": best["nprobe"], "efsearch": best["efsearch"],
              "rerank_factor": best["rerank_factor"]}
    return {"k": k, "holdout": len(q_rows), "target": target, "curve": curve,
            "search": chosen, "achieved": best[key], "exact_seconds": exact_seconds,
            "reached_target": bool(best[key] >= target)}


def _best(curve: list[dict], key: str, target: float) -> dict:
    """The fastest point of ``curve`` that reaches ``target``, else the best recall."""
    good = [c for c in curve if c[key] >= target]
    if good:
        return min(good, key=lambda c: c["ms_per_query"])
    best = max(curve, key=lambda c: (c[key], -c["ms_per_query"]))
    log.warning("no setting reached %s >= %.3f (best %.3f at nprobe=%s, efSearch=%s, "
                "rerank x%s)", key, target, best[key], best["nprobe"], best["efsearch"],
                best["rerank_factor"])
    return best


def _without_own(rows: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """``rows [B, k+1]`` without each query's own row (moved out, order kept): ``[B, k]``."""
    order = np.argsort(rows == own[:, None], axis=1, kind="stable")
    return np.take_along_axis(rows, order, 1)[:, :k]


def recall_plot(recall: dict, path: Path, title: str) -> Path | None:
    """Recall@k against ms per query, one line per re-rank factor."""
    from tasks.reporting.plots import pyplot, save_figure

    key = f"recall@{recall['k']}"
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    by_r: dict[Any, list[dict]] = {}
    for c in recall["curve"]:
        by_r.setdefault(c["rerank_factor"], []).append(c)
    for r, pts in sorted(by_r.items()):
        pts = sorted(pts, key=lambda c: c["ms_per_query"])
        ax.plot([c["ms_per_query"] for c in pts], [c[key] for c in pts], marker="o",
                label=f"re-rank x{r}")
        for c in pts:
            if c.get("nprobe"):
                ax.annotate(str(c["nprobe"]), (c["ms_per_query"], c[key]), fontsize=7,
                            textcoords="offset points", xytext=(3, -8))
    ax.axhline(recall["target"], color="grey", ls="--", lw=0.8, label="target")
    ax.set_xscale("log")
    ax.set_xlabel("ms per query (labels: nprobe)")
    ax.set_ylabel(f"{key} vs exact search")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=110)


# ---------------------------------------------------------------------------- driver


def build_index(paths: CorpusPaths, factory: str = "auto", *,
                memory_budget: str | int = DEFAULT_MEMORY_BUDGET, target_recall: float = 0.95,
                recall_k: int = 200, holdout: int = HOLDOUT_QUERIES,
                train_size: int | None = None, block_vectors: int = DEFAULT_BLOCK_VECTORS,
                store_dtype: str = "auto", rebuild: bool = False,
                ray_address: str | None = None, progress=None, seed: int = 0) -> dict:
    """Build or extend the index of an embedded corpus; returns a run summary and writes
    ``index.json`` (see the module docstring for the layout).

    ``progress(stage, row)`` is called on the driver for every finished block
    (``"block"``) and partition (``"partition"``).
    """
    from tasks.runtime.ray_runtime import ensure_ray

    t_start = time.perf_counter()
    if not 0 < target_recall <= 1:
        raise ValueError(f"target recall must be in (0, 1] (got {target_recall})")
    if block_vectors < 1:
        raise ValueError(f"block_vectors must be positive (got {block_vectors})")
    budget = fx.parse_size(memory_budget)
    manifest = paths.load_manifest()
    if manifest.get("status") != "complete":
        raise RuntimeError(f"corpus {paths.name!r} is not completely embedded; rerun embed")
    dim = int(manifest["dim"])
    shards = sorted((s for s in manifest["shards"] if s["n_rows"] > 0),
                    key=lambda s: s["file"])
    if not shards:
        raise ValueError(f"corpus {paths.name!r} has no embedded rows to index")
    factory = factory or "auto"
    if factory != "auto":
        fx.new_index(dim, factory)  # a bad factory string fails before any work
    d = _dirs(paths)
    previous = json.loads(d["plan"].read_text()) if d["plan"].is_file() else None
    if previous is None and paths.index_meta.is_file():
        previous = {"version": 1}  # the old one-index-per-shard layout
    why = None if previous is None else _compatible(previous, dim, factory, store_dtype)
    if rebuild or why:
        if why and previous is not None:
            log.warning("rebuilding the index of %r from scratch: %s", paths.name, why)
        shutil.rmtree(d["root"], ignore_errors=True)
        previous = None
    for key in ("blocks", "store", "partitions"):
        d[key].mkdir(parents=True, exist_ok=True)
    for folder in (d["root"], d["blocks"], d["store"], d["partitions"]):
        for tmp in folder.glob("*.tmp*"):
            tmp.unlink()
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink()
    n_before = sum(b["n"] for b in (previous or {}).get("blocks", []))
    plan = plan_index(shards, previous, dim=dim, factory=factory, memory_budget=budget,
                      store_dtype=store_dtype, block_vectors=block_vectors)
    write_json_atomic(d["plan"], plan)
    n_total = sum(b["n"] for b in plan["blocks"])
    if plan.get("planned_for") and n_total > 4 * plan["planned_for"]:
        log.warning("corpus %r grew from %d to %d vectors since the index structure was "
                    "chosen (%s); consider --rebuild", paths.name, plan["planned_for"],
                    n_total, plan["factory"])

    done_blocks = {int(p.stem.split("-")[1]) for p in d["blocks"].glob("block-*.json")}
    done_parts = {int(p.stem.split("-")[1]) for p in d["partitions"].glob("part-*.json")}
    current = _finished_meta(paths, plan, done_parts, n_total)
    if current is not None:
        # nothing new since the last build: no Ray, no training, no recall measurement
        log.info("index of %r is up to date (%d vectors)", paths.name, n_total)
        return _summary(paths, plan, current, n_new=0, built=0, merged=0, trained_on=0,
                        seconds={"seconds": time.perf_counter() - t_start})

    # train once: the trained empty index is the template of every block and partition
    t0 = time.perf_counter()
    template_index = fx.new_index(dim, plan["factory"])
    trained_on = 0
    if fx.needs_training(template_index):
        if paths.trained.is_file():
            template_index = fx.read_index(paths.trained)
        else:
            size = train_size or fx.train_size_for(plan["nlist"], n_total)
            sample = training_sample(paths, shards, dim, size, seed=seed)
            log.info("training %s on %d vectors sampled across %d shards", plan["factory"],
                     len(sample), len(shards))
            fx.train_index(template_index, sample)
            trained_on = len(sample)
            write_index(template_index, paths.trained)
            del sample
    train_seconds = time.perf_counter() - t0
    trainable = fx.needs_training(fx.new_index(dim, plan["factory"]))
    template = fx.serialize(template_index) if trainable else None

    resources = ensure_ray(address=ray_address)
    cpus = float(resources.get("CPU", 1))
    import ray

    template_ref = ray.put(template) if template is not None else None
    todo = [b for b in plan["blocks"] if b["block"] not in done_blocks]
    t0 = time.perf_counter()
    built = _run_ray(build_block, [(str(paths.root), b, dim, plan["kind"],
                                    plan["store_dtype"], template_ref, 1) for b in todo],
                     1.0 if cpus >= 2 else 0.5, progress, "block")
    add_seconds = time.perf_counter() - t0

    todo_parts = [p for p in plan["partitions"] if p["partition"] not in done_parts]
    t0 = time.perf_counter()
    merged = _run_ray(build_partition, [(str(paths.root), plan, p,
                                         template_ref, max(1, int(cpus)))
                                        for p in todo_parts],
                      1.0 if cpus >= 2 else 0.5, progress, "partition")
    merge_seconds = time.perf_counter() - t0
    # block indices are now inside their partitions' on-disk lists
    finished = {p["partition"] for p in plan["partitions"]}
    for p in plan["partitions"]:
        if p["partition"] in finished:
            for b in p["blocks"]:
                (d["blocks"] / f"block-{b:05d}.faiss").unlink(missing_ok=True)

    parts = [json.loads((d["partitions"] / f"part-{p['partition']:05d}.json").read_text())
             for p in plan["partitions"]]
    index_bytes = sum(p["bytes"] for p in parts)
    meta = {
        "version": INDEX_VERSION, "factory": plan["factory"],
        "factory_requested": plan["factory_requested"], "kind": plan["kind"],
        "nlist": plan["nlist"], "dim": dim, "metric": "inner_product", "ids": "row",
        "exact": plan["kind"] == "flat" and plan["store_dtype"] == "float32",
        "store_dtype": plan["store_dtype"], "n_vectors": n_total,
        "blocks": plan["blocks"], "partitions": parts, "memory_budget": budget,
        "index_bytes": index_bytes, "index_bytes_per_vector": index_bytes / n_total,
        "store_bytes_per_vector": dim * np.dtype(plan["store_dtype"]).itemsize + 8,
        "choice_reason": plan["choice_reason"], "gpus": fx.num_gpus(),
        "built_at": datetime.now(timezone.utc).isoformat(),
        "search": {"nprobe": None, "efsearch": None, "rerank_factor": 1},
    }
    t0 = time.perf_counter()
    recall = measure_recall(paths, meta, k=recall_k, target=target_recall, holdout=holdout,
                            seed=seed)
    recall_seconds = time.perf_counter() - t0
    meta["search"] = recall["search"]
    meta["recall"] = recall
    plot = recall_plot(recall, d["root"] / "recall.png",
                       f"{paths.name}: {plan['factory']}, {n_total:,} vectors, "
                       f"{len(parts)} partition(s)")
    meta["recall_plot"] = str(plot)
    write_json_atomic(paths.index_meta, meta)
    return _summary(paths, plan, meta, n_new=n_total - n_before, built=len(built),
                    merged=len(merged), trained_on=trained_on,
                    seconds={"train_seconds": train_seconds, "add_seconds": add_seconds,
                             "merge_seconds": merge_seconds, "recall_seconds": recall_seconds,
                             "seconds": time.perf_counter() - t_start})


def _finished_meta(paths: CorpusPaths, plan: dict, done_parts: set[int],
                   n_total: int) -> dict | None:
    """index.json when it already describes this plan completely (every partition built,
    the same vectors, recall measured), else None."""
    if not paths.index_meta.is_file():
        return None
    if any(p["partition"] not in done_parts for p in plan["partitions"]):
        return None
    meta = json.loads(paths.index_meta.read_text())
    same = (meta.get("version") == INDEX_VERSION and meta.get("n_vectors") == n_total
            and meta.get("factory") == plan["factory"] and "recall" in meta
            and len(meta.get("partitions", [])) == len(plan["partitions"]))
    return meta if same else None


def _summary(paths: CorpusPaths, plan: dict, meta: dict, *, n_new: int, built: int,
             merged: int, trained_on: int, seconds: dict) -> dict:
    """The run summary of a build (or of a build that found nothing to do)."""
    recall = meta["recall"]
    times = {k: seconds.get(k, 0.0) for k in ("train_seconds", "add_seconds",
                                              "merge_seconds", "recall_seconds", "seconds")}
    return {
        "corpus": paths.name, "factory": plan["factory"], "kind": plan["kind"],
        "factory_requested": plan["factory_requested"], "n_vectors": meta["n_vectors"],
        "new_vectors": n_new, "blocks_total": len(plan["blocks"]), "blocks_built": built,
        "blocks_skipped": len(plan["blocks"]) - built,
        "partitions_total": len(meta["partitions"]), "partitions_built": merged,
        "trained_on": trained_on, **times,
        "index_bytes_per_vector": meta["index_bytes_per_vector"],
        "store_dtype": plan["store_dtype"], "recall_k": recall["k"],
        "recall": recall["achieved"],
        "nprobe": recall["search"]["nprobe"], "rerank_factor":
            recall["search"]["rerank_factor"], "reached_target": recall["reached_target"],
        "gpus": meta["gpus"], "index_dir": str(paths.index),
        "recall_plot": meta.get("recall_plot", ""),
    }
