"""Index scale: one trained faiss index in partitions (tasks/index/build.py,
tasks/index/search_service.py)
at 1M, 3M and 10M synthetic 384-d vectors, against today's per-shard path at 1M.

Per size (JSON lines to stdout and ``--out``):

* ``data``: a synthetic embedded corpus (``synthetic.ClusteredStream``) written in the
  product's own format, the way ``tasks/corpus/embed.py`` writes it: 3,000-row Parquet shards
  ``part-00000-BBBBB.parquet`` (``shard_schema(384)``, zstd, stats in the Parquet
  metadata) and a complete ``manifest.json`` (``finalize_manifest``). The exact top-200
  of the held-out queries over the *original float32* vectors is computed while the
  corpus is written (``sift_ops.index.exact_topk``, one chunk in memory).
* ``build``: ``tasks.index.build.build_index(paths, "auto", memory_budget=...)`` in a
  subprocess under local Ray (2 CPUs): train / add / merge / recall seconds, index bytes
  per vector, partitions, the nprobe and re-rank factor it chose; peak memory of that
  process and all its descendants (Ray workers included), sampled from /proc every 0.2 s.
* ``search``: ``SearchService(paths)`` (one Ray actor per partition) in a subprocess:
  recall@50 / recall@200 of ``search_rows(q, 200)`` against the exact top-200;
  ``tasks.selection.select.select_block(..., k=200, n=50, lam=0.01, strategy="sift")`` over blocks
  of 256 prompts, the first block discarded (warm-up): prompts/s; open files and mapped
  files of the driver and the actors before and after the timed blocks; peak memory of
  the select phase (anonymous and file-backed pages separately).
* at ``--baseline-sizes`` (1M): ``baseline`` (the per-shard path of ``6f296c6``, the
  commit before the partitioned index, re-implemented below from that code: one
  ``IDMap2(IndexFlatIP)`` per shard on disk, searched one after another in the driver,
  candidates fetched from the Parquet shards by ``tasks.corpus.lookup.CorpusReader.fetch``,
  ``sift_select``), ``flat`` (the new path with an exact ``Flat`` index and float32
  store), ``agreement`` (their picks, prompt by
  prompt) and ``float16`` (SIFT on the same candidates with float32 vectors from the
  original shards vs the float16 store).

    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_index_scale.py --sizes 100000 \\
        --baseline-sizes 100000 --out /tmp/smoke.jsonl              # smoke, ~3 min
    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_index_scale.py   # 1M, 3M, 10M
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DIM = 384
SHARD_ROWS = 3000
OUT_FILE = None


def emit(kind: str, **kw) -> None:
    if "kind" in kw:  # build_index's summary has its own "kind" (flat / ivf)
        kw["index_kind"] = kw.pop("kind")
    line = json.dumps({"kind": kind, **kw}, default=_json_default)
    print(line, flush=True)
    if OUT_FILE is not None:
        with open(OUT_FILE, "a") as fh:
            fh.write(line + "\n")


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def corpus_name(n: int) -> str:
    return f"synth{n}"


def workspace_for(work: Path, n: int) -> Path:
    return work / f"ws-{n}"


# ---------------------------------------------------------------------------- memory


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem", "VmHWM", "VmRSS"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class TreeMonitor:
    """Samples RssAnon / RssFile / RssShmem of a process and all its descendants.

    ``app`` = the process itself plus Ray worker processes (``ray::...``: tasks and
    actors, idle workers included); ``all`` adds Ray's own daemons (raylet, GCS, agents).
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self.psutil = psutil
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._names: dict[int, str] = {}

    def start(self) -> TreeMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _kind(self, pid: int) -> str:
        if pid == self.pid:
            return "app"
        # a Ray worker renames itself (ray::IDLE, ray::PartitionSearcher) only once it
        # runs: read the name again until it has one
        if not self._names.get(pid, "").startswith("ray::"):
            self._names[pid] = _cmdline(pid)
        return "app" if self._names[pid].startswith("ray::") else "ray_daemon"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = self.psutil.Process(self.pid)
                pids = [self.pid] + [c.pid for c in root.children(recursive=True)]
            except self.psutil.Error:
                break
            tot = {f"{g}_{k}": 0 for g in ("app", "all")
                   for k in ("anon", "file", "shmem")}
            driver = {}
            for pid in pids:
                st = _status(pid)
                if not st:
                    continue
                kind = self._kind(pid)
                for k, key in (("anon", "RssAnon"), ("file", "RssFile"),
                               ("shmem", "RssShmem")):
                    tot[f"all_{k}"] += st.get(key, 0)
                    if kind == "app":
                        tot[f"app_{k}"] += st.get(key, 0)
                if pid == self.pid:
                    driver = st
            tot["driver_anon"] = driver.get("RssAnon", 0)
            tot["driver_file"] = driver.get("RssFile", 0)
            tot["driver_hwm"] = driver.get("VmHWM", 0)
            tot["n_procs"] = len(pids)
            self.samples.append((time.time(), tot))
            self._stop.wait(self.interval)

    def peaks(self, t0: float | None = None, t1: float | None = None) -> dict:
        sel = [s for t, s in self.samples if (t0 is None or t >= t0) and
               (t1 is None or t <= t1)]
        if not sel:
            return {}
        mb = 1 << 20
        out = {f"peak_{k}_mb": max(s[k] for s in sel) / mb for k in sel[0]
               if k != "n_procs"}
        out["peak_app_anon_plus_shmem_mb"] = max(s["app_anon"] + s["app_shmem"]
                                                 for s in sel) / mb
        out["max_procs"] = max(s["n_procs"] for s in sel)
        out["samples"] = len(sel)
        return out


def run_stage(stage: str, args: argparse.Namespace, n: int, **extra) -> dict:
    """Run ``--stage`` in a fresh subprocess, sampling its process tree's memory."""
    work = Path(args.work)
    result = work / f"result-{stage}-{n}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--stage", stage, "--size", str(n),
           "--work", str(work), "--memory-budget", args.memory_budget,
           "--queries", str(args.queries), "--block", str(args.block),
           "--blocks", str(args.blocks), "--baseline-blocks", str(args.baseline_blocks),
           "--sweep-queries", str(args.sweep_queries), "--k", str(args.k), "--n", str(args.n),
           "--lam", str(args.lam),
           "--result", str(result)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    mon = TreeMonitor(proc.pid).start()
    rc = proc.wait()
    mon.stop()
    if rc != 0:
        raise RuntimeError(f"stage {stage} at {n} failed with exit code {rc}")
    out = json.loads(result.read_text())
    out["stage_wall_seconds"] = time.time() - t0
    out["memory"] = mon.peaks()
    for phase, (p0, p1) in out.pop("phases", {}).items():
        out[f"memory_{phase}"] = mon.peaks(p0, p1)
    return out


# ---------------------------------------------------------------------------- data


def write_corpus(args: argparse.Namespace, n: int) -> dict:
    """The synthetic embedded corpus of ``n`` rows + held-out queries + exact top-k."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from synthetic import ClusteredStream

    from sift_ops import index as fx
    from tasks.corpus.embed import SHARD_META_KEY, finalize_manifest, shard_schema
    from tasks.corpus.lookup import pack_doc_ids
    from tasks.runtime.atomic import write_json_atomic
    from tasks.runtime.workspace import CorpusPaths

    work = Path(args.work)
    ws = workspace_for(work, n)
    shutil.rmtree(ws, ignore_errors=True)
    paths = CorpusPaths(ws, corpus_name(n))
    paths.embeddings.mkdir(parents=True)
    paths.quarantine.mkdir(parents=True)
    stream = ClusteredStream(DIM, seed=args.seed, chunk_rows=10 * SHARD_ROWS)
    n_prompts = max(args.queries, args.block * (1 + max(args.blocks, args.baseline_blocks)))
    prompts = stream.queries(n_prompts)
    np.save(ws / "prompts.npy", prompts)
    queries = prompts[: args.queries]
    src = f"synthetic://clustered?seed={args.seed}&n={n}"
    now = datetime.now(timezone.utc).isoformat()
    manifest = {
        "name": paths.name, "corpus": src, "model": "synthetic", "dim": DIM,
        "pooling": "mean", "normalized": True, "max_tokens": 256,
        "shard_docs": SHARD_ROWS // 2, "shard_chars": 32_000_000,
        "doc_id_layout": "file_id << 40 | line << 12 | chunk",
        "files": [{"file_id": 0, "path": src}], "shards": [], "status": "embedding",
        "created_at": now, "updated_at": now,
    }
    write_json_atomic(paths.manifest, manifest)
    schema = shard_schema(DIM)
    t = {"generate": 0.0, "write": 0.0, "exact": 0.0}

    def chunks():
        it = stream.iter_chunks(n)
        while True:
            t0 = time.perf_counter()
            try:
                x, first = next(it)
            except StopIteration:
                return
            t["generate"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for s in range(0, len(x), SHARD_ROWS):
                _write_shard(paths, pa, pq, schema, SHARD_META_KEY, pack_doc_ids,
                             x[s : s + SHARD_ROWS], first + s)
            t["write"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            yield x, first
            t["exact"] += time.perf_counter() - t0

    t_all = time.perf_counter()
    gt_scores, gt_rows = fx.exact_topk(queries, chunks(), args.k)
    manifest = finalize_manifest(paths, manifest)
    np.save(ws / "gt_rows.npy", gt_rows)
    np.save(ws / "gt_scores.npy", gt_scores)
    size = sum(f.stat().st_size for f in paths.embeddings.glob("*.parquet"))
    return {"n": n, "shards": len(manifest["shards"]), "parquet_bytes": size,
            "queries": len(queries), "prompts": n_prompts,
            "seconds": time.perf_counter() - t_all,
            "generate_seconds": t["generate"], "write_seconds": t["write"],
            "exact_topk_seconds": t["exact"],
            "query_top1_mean": float(gt_scores[:, 0].mean()),
            "query_top50_mean": float(gt_scores[:, 49].mean()),
            "query_top200_mean": float(gt_scores[:, -1].mean())}


def _write_shard(paths, pa, pq, schema, meta_key, pack_doc_ids, x: np.ndarray,
                 first_row: int) -> None:
    """One embedding shard as ShardEmbedder._embed_shard writes it (1,500 two-chunk
    documents of one input file)."""
    rows = np.arange(first_row, first_row + len(x), dtype=np.int64)
    lines, chunk = rows // 2 + 1, rows % 2
    doc_ids = pack_doc_ids(0, lines, chunk)
    block = first_row // SHARD_ROWS
    shard = f"part-00000-{block:05d}"
    table = pa.table({
        "doc_id": pa.array(doc_ids, pa.int64()),
        "source": pa.array(["synthetic"] * len(x), pa.string()),
        "text": pa.array([f"doc {r}" for r in rows.tolist()], pa.string()),
        "n_tokens": pa.array(np.full(len(x), 64, dtype=np.int32), pa.int32()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM),
    }, schema=schema)
    n_lines = int(lines.max() - lines.min() + 1)
    stats = {
        "shard": shard, "file": "synthetic", "file_id": 0,
        "line_start": int(lines.min()), "line_end": int(lines.max()), "n_lines": n_lines,
        "n_docs": n_lines, "n_bad": 0, "n_chunks": len(x), "n_truncated": 0,
        "n_rows": len(x), "doc_id_min": int(doc_ids.min()), "doc_id_max": int(doc_ids.max()),
        "model": "synthetic", "dim": DIM,
    }
    table = table.replace_schema_metadata({meta_key: json.dumps(stats).encode()})
    tmp = paths.embeddings / f".{shard}.parquet.tmp"
    pq.write_table(table, tmp, compression="zstd", row_group_size=8192)
    os.replace(tmp, paths.embeddings / f"{shard}.parquet")


# ---------------------------------------------------------------------------- stages


def _paths(args, n: int, flat: bool = False):
    from tasks.runtime.workspace import CorpusPaths

    return CorpusPaths(workspace_for(Path(args.work), n),
                       corpus_name(n) + ("-flat" if flat else ""))


def stage_build(args) -> dict:
    from tasks.index.build import build_index
    from tasks.runtime.ray_runtime import ensure_ray

    ensure_ray(num_cpus=2)
    paths = _paths(args, args.size, flat=args.flat)
    factory = "auto"
    if args.flat:  # the same shards under a second corpus name: its own index folder
        src = _paths(args, args.size)
        shutil.rmtree(paths.root, ignore_errors=True)
        paths.root.mkdir(parents=True)
        os.symlink(src.embeddings, paths.embeddings)
        man = json.loads(src.manifest.read_text())
        man["name"] = paths.name
        paths.manifest.write_text(json.dumps(man))
        factory = "Flat"
    t0 = time.time()
    summary = build_index(paths, factory, memory_budget=args.memory_budget,
                          target_recall=0.95, recall_k=200)
    summary["index_kind"] = summary.pop("kind")  # flat / ivf
    meta = json.loads(paths.index_meta.read_text())
    trained = paths.trained.stat().st_size if paths.trained.is_file() else 0
    store = sum(f.stat().st_size for f in (paths.index / "store").glob("vectors-*.npy"))
    curve = meta["recall"]["curve"]
    return {**summary, "phases": {"build": (t0, time.time())},
            "nlist": meta.get("nlist"), "partitions": len(meta["partitions"]),
            "partition_vectors": [p["ntotal"] for p in meta["partitions"]],
            "index_bytes": meta["index_bytes"], "trained_bytes": trained,
            "index_plus_quantizer_bytes_per_vector":
                (meta["index_bytes"] + trained) / meta["n_vectors"],
            "store_bytes": store, "store_bytes_per_vector": store / meta["n_vectors"],
            "build_recall_holdout": "in-corpus vectors (build_index's own measurement)",
            "build_curve_points": len(curve),
            "build_curve": [{k: c[k] for k in ("nprobe", "rerank_factor", "ms_per_query",
                                                "recall@50", "recall@200") if k in c}
                            for c in curve]}


def _proc_files(pids: list[int]) -> dict:
    import psutil

    fds = maps = 0
    mapped: set[str] = set()
    opened: set[str] = set()
    for pid in pids:
        try:
            p = psutil.Process(pid)
            fds += p.num_fds()
            opened |= {f.path for f in p.open_files()}
            for m in p.memory_maps(grouped=True):
                if m.path.startswith("/"):
                    mapped.add(m.path)
            maps += len(p.memory_maps(grouped=False))
        except psutil.Error:
            pass
    return {"fds": fds, "map_entries": maps, "open_files": opened, "mapped_files": mapped}


def _files_delta(before: dict, after: dict, blocks: int) -> dict:
    new_open = sorted(after["open_files"] - before["open_files"])
    new_maps = sorted(after["mapped_files"] - before["mapped_files"])
    return {"fds_before": before["fds"], "fds_after": after["fds"],
            "map_entries_before": before["map_entries"],
            "map_entries_after": after["map_entries"],
            "open_regular_files": len(after["open_files"]),
            "mapped_files": len(after["mapped_files"]),
            "new_open_files": len(new_open), "new_mapped_files": len(new_maps),
            "new_files_examples": (new_open + new_maps)[:5],
            "files_opened_per_block_upper_bound":
                (len(new_open) + len(new_maps) + max(0, after["fds"] - before["fds"]))
                / max(blocks, 1)}


def stage_search(args) -> dict:
    import torch

    from sift_ops import index as fx
    from tasks.index.search_service import SearchService
    from tasks.runtime.ray_runtime import ensure_ray
    from tasks.selection.select import select_block

    ensure_ray(num_cpus=2)
    ws = workspace_for(Path(args.work), args.size)
    paths = _paths(args, args.size, flat=args.flat)
    prompts = np.load(ws / "prompts.npy")
    gt_rows = np.load(ws / "gt_rows.npy")
    q = prompts[: args.queries]
    out: dict = {"n": args.size, "flat": bool(args.flat), "threads_driver":
                 torch.get_num_threads(), "phases": {}}
    t0 = time.time()
    svc = SearchService(paths)
    out["startup_seconds"] = time.time() - t0
    out["settings"] = svc.settings()
    out["phases"]["startup"] = (t0, time.time())
    # recall of the held-out queries against the exact top-200 of the float32 corpus
    t0 = time.time()
    tt = time.perf_counter()
    _, rows = svc.search_rows(q, args.k)
    out["recall_search_ms_per_query"] = 1000 * (time.perf_counter() - tt) / len(q)
    out["recall@50"] = fx.recall_at(rows, gt_rows, 50)
    out["recall@200"] = fx.recall_at(rows, gt_rows, 200)
    out["recall@10"] = fx.recall_at(rows, gt_rows, 10)
    out["phases"]["recall"] = (t0, time.time())

    B = args.block
    nb = 1 + args.blocks
    blocks = [prompts[i * B : (i + 1) * B] for i in range(nb)]
    pids = [os.getpid()] + [p["pid"] for p in svc.placement]
    picks, times = [], []
    t_sel0 = time.time()
    res = select_block(svc, blocks[0], k=args.k, n=args.n, lam=args.lam, strategy="sift")
    picks.append(res["picks"])
    warm = time.perf_counter()
    warm_s = None
    before = _proc_files(pids)
    t_timed0 = time.time()
    for blk in blocks[1:]:
        tt = time.perf_counter()
        if warm_s is None:
            warm_s = tt - warm
        res = select_block(svc, blk, k=args.k, n=args.n, lam=args.lam, strategy="sift")
        times.append(time.perf_counter() - tt)
        picks.append(res["picks"])
    t_timed1 = time.time()
    after = _proc_files(pids)
    out["phases"]["select_timed"] = (t_timed0, t_timed1)
    out["phases"]["select"] = (t_sel0, t_timed1)
    n_timed = sum(len(b) for b in blocks[1:])
    out["select"] = {"block": B, "timed_blocks": len(times), "timed_prompts": n_timed,
                     "block_seconds": times, "prompts_per_s": n_timed / sum(times),
                     "k": args.k, "n": args.n, "lam": args.lam}
    out["files"] = _files_delta(before, after, len(times))
    # where the time goes (same blocks again, now warm): search / fetch / SIFT
    from sift_ops import sift as sift_ops

    ts = tf = tsift = 0.0
    for blk in blocks[1:]:
        tt = time.perf_counter()
        sc, rr = svc.search_rows(blk, args.k)
        ts += time.perf_counter() - tt
        tt = time.perf_counter()
        vec, _ = svc.fetch(rr)
        tf += time.perf_counter() - tt
        tt = time.perf_counter()
        sift_ops.sift_select(torch.from_numpy(blk), torch.from_numpy(vec), args.n, args.lam,
                             valid=torch.from_numpy(rr >= 0))
        tsift += time.perf_counter() - tt
    out["split_ms_per_prompt"] = {"search_rows": 1000 * ts / n_timed,
                                  "fetch": 1000 * tf / n_timed,
                                  "sift": 1000 * tsift / n_timed}
    np.save(ws / f"picks-{'flat' if args.flat else 'ivf'}.npy", np.concatenate(picks))
    if not args.flat and svc.quantizer is not None:
        out["heldout_sweep"], tuned = rerank_sweep(args, svc, q, gt_rows)
        out["phases"]["sweep"] = (out["phases"]["select"][1], time.time())
        if out["recall@200"] < 0.95 and tuned is not None:
            # the cheapest swept setting reaching the target, timed like the default
            svc.nprobe, svc.rerank_factor = tuned["nprobe"], tuned["rerank_factor"]
            t0 = time.time()
            select_block(svc, blocks[0], k=args.k, n=args.n, lam=args.lam, strategy="sift")
            tt = time.perf_counter()
            for blk in blocks[1:]:
                select_block(svc, blk, k=args.k, n=args.n, lam=args.lam, strategy="sift")
            secs = time.perf_counter() - tt
            out["tuned_select"] = {**tuned, "timed_prompts": n_timed,
                                   "prompts_per_s": n_timed / secs}
            out["phases"]["select_tuned"] = (t0, time.time())
            svc.nprobe, svc.rerank_factor = out["settings"]["nprobe"], \
                out["settings"]["rerank_factor"]
    if args.fp16:
        out["float16"] = float16_effect(args, svc, paths, blocks)
    svc.close()
    return out


def rerank_sweep(args, svc, q, gt_rows) -> tuple[list[dict], dict | None]:
    """Held-out recall beyond the build's sweep (re-rank factors 16 and 32, up to 2x the
    chosen nprobe, on the first ``--sweep-queries`` queries): what the recall@200 target
    costs on queries not in the corpus."""
    from sift_ops import index as fx

    nlist = int(svc.meta["nlist"])
    base_np, base_r = svc.nprobe, svc.rerank_factor
    probes = sorted({min(nlist, base_np * m) for m in (1, 2)})
    q, gt_rows = q[: args.sweep_queries], gt_rows[: args.sweep_queries]
    rows_out = []
    for r in sorted({base_r, 16, 32}):
        for nprobe in probes:
            svc.nprobe, svc.rerank_factor = nprobe, r
            tt = time.perf_counter()
            _, rows = svc.search_rows(q, args.k)
            ms = 1000 * (time.perf_counter() - tt) / len(q)
            rows_out.append({"nprobe": nprobe, "rerank_factor": r, "ms_per_query": ms,
                             "recall@50": fx.recall_at(rows, gt_rows, 50),
                             "recall@200": fx.recall_at(rows, gt_rows, 200)})
    svc.nprobe, svc.rerank_factor = base_np, base_r
    good = [x for x in rows_out if x["recall@200"] >= 0.95]
    return rows_out, (min(good, key=lambda x: x["ms_per_query"]) if good else None)


def float16_effect(args, svc, paths, blocks) -> dict:
    """SIFT on the same candidate rows: float32 vectors read from the original embedding
    shards vs the vector store's float16 vectors (exactly what select uses)."""
    import torch

    from sift_ops import sift as sift_ops
    from tasks.corpus.lookup import embedding_matrix
    from tasks.index.vector_store import VectorStore, read_rows

    store = VectorStore(paths.index / "store", svc.meta["blocks"], svc.dim)
    same_seq = same_set = total = 0
    dvar, rvar, max_err = [], [], 0.0
    for blk in blocks:
        _, rows = svc.search_rows(blk, args.k)
        v16, _ = svc.fetch(rows)
        flat = rows.ravel()
        v32 = np.zeros((flat.size, svc.dim), dtype=np.float32)
        ok = np.nonzero(flat >= 0)[0]
        for file, sel, in_shard in store.shard_rows(flat[ok]):
            t = read_rows(paths.embeddings / file, in_shard, ["embedding"])
            v32[ok[sel]] = embedding_matrix(t["embedding"], svc.dim)
        v32 = v32.reshape(v16.shape)
        max_err = max(max_err, float(np.abs(v32 - v16).max()))
        valid = torch.from_numpy(rows >= 0)
        q = torch.from_numpy(blk)
        a = sift_ops.sift_select(q, torch.from_numpy(v32), args.n, args.lam, valid=valid)
        b = sift_ops.sift_select(q, torch.from_numpy(v16), args.n, args.lam, valid=valid)
        ia, ib = a.indices.numpy(), b.indices.numpy()
        same_seq += int((ia == ib).all(axis=1).sum())
        same_set += sum(set(x) == set(y) for x, y in zip(ia.tolist(), ib.tolist(), strict=True))
        total += len(ia)
        va, vb = a.variances.double().numpy()[:, -1], b.variances.double().numpy()[:, -1]
        dvar.append(np.abs(va - vb))
        rvar.append(np.abs(va - vb) / np.maximum(va, 1e-12))
    dvar, rvar = np.concatenate(dvar), np.concatenate(rvar)
    return {"prompts": total, "identical_pick_sequences": same_seq / total,
            "identical_pick_sets": same_set / total,
            "mean_abs_delta_final_posterior_variance": float(dvar.mean()),
            "max_abs_delta_final_posterior_variance": float(dvar.max()),
            "mean_rel_delta_final_posterior_variance": float(rvar.mean()),
            "max_abs_vector_error": max_err}


# ---------------------------------------------------------------------------- baseline


def stage_baseline(args) -> dict:
    """The per-shard path of 6f296c6 (git show 6f296c6:sift_ops/index.py, tasks/index.py,
    tasks/select.py; tasks/corpus.py's CorpusReader, now tasks/corpus/lookup.py, is unchanged)."""
    import faiss
    import pyarrow.parquet as pq
    import torch

    from sift_ops import sift as sift_ops
    from tasks.corpus.lookup import CorpusReader, embedding_matrix

    ws = workspace_for(Path(args.work), args.size)
    paths = _paths(args, args.size)
    out: dict = {"n": args.size, "phases": {}}
    manifest = paths.load_manifest()
    shards = [s for s in manifest["shards"] if s["n_rows"] > 0]
    idx_dir = ws / "baseline-index"
    shutil.rmtree(idx_dir, ignore_errors=True)
    idx_dir.mkdir()
    # build: one IDMap2(IndexFlatIP) per shard, ids = doc_ids (6f296c6's build_shard_index)
    t0 = time.time()
    tt = time.perf_counter()
    files = []
    for s in shards:
        table = pq.read_table(paths.embeddings / s["file"], columns=["doc_id", "embedding"])
        emb = embedding_matrix(table["embedding"], DIM)
        index = faiss.IndexIDMap2(faiss.index_factory(DIM, "Flat", faiss.METRIC_INNER_PRODUCT))
        index.add_with_ids(np.ascontiguousarray(emb),
                           np.ascontiguousarray(table["doc_id"].to_numpy(), dtype=np.int64))
        f = idx_dir / (s["file"].removesuffix(".parquet").replace("part-", "shard-", 1)
                       + ".faiss")
        faiss.write_index(index, str(f))
        files.append(f)
    out["build_seconds"] = time.perf_counter() - tt
    out["index_bytes_per_vector"] = sum(f.stat().st_size for f in files) / args.size
    out["phases"]["build"] = (t0, time.time())

    reader = CorpusReader(paths.workspace, paths.name)
    prompts = np.load(ws / "prompts.npy")
    B = args.block
    nb = 1 + args.baseline_blocks
    picks = []
    t0 = time.time()
    per_block = []
    for i in range(nb):
        q = np.ascontiguousarray(prompts[i * B : (i + 1) * B])
        tt = time.perf_counter()
        # 6f296c6's search_shards: every shard index read from disk and searched in turn
        heap = faiss.ResultHeap(len(q), args.k, keep_max=True)
        for f in files:
            index = faiss.read_index(str(f))
            sc, ids = index.search(q, min(args.k, max(index.ntotal, 1)))
            heap.add_result(sc, ids)
            del index
        heap.finalize()
        ids = heap.I
        t_search = time.perf_counter() - tt
        tt = time.perf_counter()
        valid = ids >= 0
        safe = np.where(valid, ids, ids[:, :1])
        shards_read = len(np.unique(reader._locate(safe.ravel())))
        cand = reader.fetch(safe)["embedding"]
        t_fetch = time.perf_counter() - tt
        tt = time.perf_counter()
        sel = sift_ops.sift_select(torch.from_numpy(q), torch.from_numpy(cand), args.n,
                                   args.lam, valid=torch.from_numpy(valid))
        t_sift = time.perf_counter() - tt
        idx = sel.indices.numpy()
        has = idx >= 0
        at = np.arange(len(q))[:, None]
        picks.append(np.where(has, safe[at, np.where(has, idx, 0)], -1))
        per_block.append({"search_s": t_search, "fetch_s": t_fetch, "sift_s": t_sift,
                          "index_files_read": len(files), "parquet_shards_read": shards_read,
                          "seconds": t_search + t_fetch + t_sift})
        if i == 0:
            t_timed0 = time.time()
    out["phases"]["select_timed"] = (t_timed0, time.time())
    out["phases"]["select"] = (t0, time.time())
    timed = per_block[1:]
    n_timed = B * len(timed)
    out["select"] = {"block": B, "warmup_block": per_block[0], "timed_blocks": timed,
                     "timed_prompts": n_timed,
                     "prompts_per_s": n_timed / sum(b["seconds"] for b in timed)}
    out["files_opened_per_block"] = float(np.mean([b["index_files_read"] +
                                                   b["parquet_shards_read"] for b in timed]))
    np.save(ws / "picks-baseline.npy", np.concatenate(picks))
    shutil.rmtree(idx_dir, ignore_errors=True)
    return out


def agreement(ws: Path, a: str, b: str) -> dict:
    pa_, pb = np.load(ws / f"picks-{a}.npy"), np.load(ws / f"picks-{b}.npy")
    m = min(len(pa_), len(pb))
    pa_, pb = pa_[:m], pb[:m]
    seq = (pa_ == pb).all(axis=1)
    sets = np.array([set(x) == set(y) for x, y in zip(pa_.tolist(), pb.tolist(), strict=True)])
    overlap = np.mean([len(set(x) & set(y)) / max(len(set(y)), 1)
                       for x, y in zip(pa_.tolist(), pb.tolist(), strict=True)])
    return {"compare": f"{a} vs {b}", "prompts": m,
            "identical_pick_sequences": float(seq.mean()),
            "identical_pick_sets": float(sets.mean()), "mean_pick_overlap": float(overlap)}


# ---------------------------------------------------------------------------- driver


def machine_info() -> dict:
    import faiss
    import torch

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    return {"cores": os.cpu_count(), "cpu": cpu, "mem_gb": mem / 2**30,
            "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__,
            "numpy": np.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "load_avg_start": os.getloadavg(),
            "git": rev + ("+dirty" if dirty else ""),
            "started": datetime.now(timezone.utc).isoformat()}


def main() -> None:
    global OUT_FILE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000000,3000000,10000000")
    ap.add_argument("--baseline-sizes", default="1000000",
                    help="sizes at which to run today's per-shard path, the exact Flat "
                         "index and the float16 check")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=8, help="timed blocks after warm-up")
    ap.add_argument("--baseline-blocks", type=int, default=2)
    ap.add_argument("--sweep-queries", type=int, default=300)
    ap.add_argument("--memory-budget", default="300MB")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--lam", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/work/bench/index_scale")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/index_scale.jsonl"))
    ap.add_argument("--append", action="store_true", help="append to --out")
    ap.add_argument("--keep", action="store_true", help="keep each size's data")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse a kept size's corpus and index (skip data + build)")
    # internal: one stage in a subprocess
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--flat", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--fp16", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.stage:
        import logging

        logging.basicConfig(level=logging.WARNING)
        fn = {"build": stage_build, "search": stage_search,
              "baseline": stage_baseline}[args.stage]
        res = fn(args)
        Path(args.result).write_text(json.dumps(res, default=_json_default))
        return

    OUT_FILE = args.out
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not args.append:
        Path(args.out).write_text("")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    base_sizes = {int(s) for s in args.baseline_sizes.split(",") if s}
    emit(kind="machine", **machine_info(), args=vars(args))
    for n in sizes:
        ws = workspace_for(work, n)
        kept = work / f"result-data-{n}.json"
        if args.reuse and kept.is_file() and (work / f"result-build-{n}.json").is_file():
            emit(kind="data", reused=True, **json.loads(kept.read_text()))
            b = json.loads((work / f"result-build-{n}.json").read_text())
            b.pop("phases", None)
            b["index_kind"] = b.pop("kind", b.get("index_kind"))
            emit(kind="build", n=n, reused=True, **b)
        else:
            data = write_corpus(args, n)
            kept.write_text(json.dumps(data))
            emit(kind="data", **data, load_avg=os.getloadavg())
            b = run_stage("build", args, n)
            emit(kind="build", n=n, **b, load_avg=os.getloadavg())
        s = run_stage("search", args, n, fp16=int(n in base_sizes))
        fp16 = s.pop("float16", None)
        emit(kind="search", **s, load_avg=os.getloadavg())
        if fp16 is not None:
            emit(kind="float16", n=n, **fp16)
        if n in base_sizes:
            base = run_stage("baseline", args, n)
            emit(kind="baseline", **base, load_avg=os.getloadavg())
            fb = run_stage("build", args, n, flat=1)
            emit(kind="flat_build", n=n, **fb)
            fs = run_stage("search", args, n, flat=1)
            emit(kind="flat_search", **fs, load_avg=os.getloadavg())
            emit(kind="agreement", n=n, **agreement(ws, "flat", "baseline"),
                 picks_compared="doc_id sequences (rank order) and sets, per prompt")
            emit(kind="agreement", n=n, **agreement(ws, "ivf", "baseline"))
            emit(kind="speedup", n=n, new_prompts_per_s=s["select"]["prompts_per_s"],
                 baseline_prompts_per_s=base["select"]["prompts_per_s"],
                 ratio=s["select"]["prompts_per_s"] / base["select"]["prompts_per_s"],
                 flat_prompts_per_s=fs["select"]["prompts_per_s"],
                 flat_ratio=fs["select"]["prompts_per_s"] / base["select"]["prompts_per_s"])
        du = subprocess.run(["du", "-sb", str(ws)], capture_output=True, text=True).stdout
        emit(kind="disk", n=n, bytes=int(du.split()[0]) if du else None)
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    emit(kind="done", load_avg_end=os.getloadavg(),
         finished=datetime.now(timezone.utc).isoformat())


if __name__ == "__main__":
    main()
