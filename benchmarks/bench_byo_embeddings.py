"""Bring your own embeddings, end to end through the real CLI, with recall against exact.

1. writes a folder of Parquet files (``doc_id`` int64 ids, ``embedding``
   fixed_size_list<float32>[384], ``text``) of synthetic clustered unit vectors
   (benchmarks/synthetic.py ``ClusteredStream``) plus 1,000 held-out query vectors (.npy);
2. ``sift-curate import-embeddings``, ``sift-curate index`` (``--factory auto``) and
   ``sift-curate select --query-embeddings`` (nn with N = K = 200, so the picks are the
   retrieved top-200, and sift with K=200, N=50), each a real Prefect flow on local Ray;
3. recall@50 / recall@200 of the nn run's rows in DuckDB against the exact top-200 over
   the generated float32 vectors (streamed, one chunk in memory).

Prints one JSON line per step.

    python benchmarks/bench_byo_embeddings.py --n 1000000 --work /work/bench/byo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def emit(row: dict) -> None:
    print(json.dumps(row, default=str), flush=True)


def cli(*args: str, env: dict) -> tuple[dict, float]:
    exe = Path(sys.executable).with_name("sift-curate")
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"sift-curate {' '.join(args)} failed:\n{res.stderr[-4000:]}")
    # _show prints the flow's summary as JSON on stderr, after the logs
    text = "\n" + res.stderr
    start = text.rfind("\n{\n")
    obj, _ = json.JSONDecoder().raw_decode(text[start + 1:])
    return obj, secs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="corpus vectors")
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--files", type=int, default=10, help="Parquet files in the folder")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--work", default="/tmp/bench-byo", help="scratch folder (deleted first)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = p.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.synthetic import ClusteredStream
    from sift_ops import index as fx
    from tasks.storage import db

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "vectors").mkdir(parents=True)
    gen = ClusteredStream(d=args.d, seed=7)
    t0 = time.perf_counter()
    per_file = -(-args.n // args.files)
    writers: dict[int, pq.ParquetWriter] = {}
    for x, first in gen.iter_chunks(args.n):
        rows = np.arange(first, first + len(x), dtype=np.int64)
        for f in np.unique(rows // per_file):
            sel = rows // per_file == f
            table = pa.table({
                # ids that are not row numbers: a bijection of the row onto int64
                "doc_id": rows[sel] * 1_000_003 + 17,
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[sel].ravel()),
                                                               args.d),
                "text": pa.array([f"chunk {r}" for r in rows[sel]]),
            })
            if f not in writers:
                writers[f] = pq.ParquetWriter(work / "vectors" / f"emb-{f:03d}.parquet",
                                              table.schema)
            writers[f].write_table(table)
    for w in writers.values():
        w.close()
    q = gen.queries(args.queries)
    np.save(work / "queries.npy", q)
    emit({"step": "generate", "n": args.n, "d": args.d, "files": len(writers),
          "bytes": sum(f.stat().st_size for f in (work / "vectors").iterdir()),
          "seconds": time.perf_counter() - t0})

    t0 = time.perf_counter()
    _, truth = fx.exact_topk(q, gen.iter_chunks(args.n), 200)
    truth_ids = truth * 1_000_003 + 17
    emit({"step": "exact_top200", "seconds": time.perf_counter() - t0})

    ws = work / "ws"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SIFT_",
                                                                    "RAY_ADDRESS"))}
    env.update({"SIFT_WORKSPACE": str(ws), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    out, secs = cli("import-embeddings", "--name", "byo", "--from", str(work / "vectors"),
                    env=env)
    emit({"step": "import-embeddings", "seconds": secs, **{k: out.get(k) for k in (
        "rows_read", "rows_imported", "n_quarantined", "n_normalised", "shards", "dim")}})
    out, secs = cli("index", "--name", "byo", env=env)
    emit({"step": "index", "seconds": secs, **{k: v for k, v in out.items()
                                              if k not in ("index_dir", "recall_plot")}})
    nn, secs = cli("select", "--name", "byo", "--query-embeddings", str(work / "queries.npy"),
                   "--strategy", "nn", "--k", "200", "--n", "200", env=env)
    rows = db.query(ws / "curation.duckdb", "SELECT query_id::INT AS q, rank, doc_id FROM "
                    "test_time_selections WHERE run_id = ? ORDER BY q, rank", [nn["run_id"]])
    got = np.array([r[2] for r in rows], dtype=np.int64).reshape(args.queries, 200)
    emit({"step": "select nn (K=N=200)", "seconds": secs, "prompts": nn["prompts"],
          "recall@50": fx.recall_at(got, truth_ids, 50),
          "recall@200": fx.recall_at(got, truth_ids, 200),
          "nprobe": nn.get("search_nprobe"), "rerank_factor": nn.get("search_rerank_factor")})
    sift, secs = cli("select", "--name", "byo", "--query-embeddings",
                     str(work / "queries.npy"), "--strategy", "sift", "--k", "200", "--n",
                     "50", env=env)
    emit({"step": "select sift (K=200, N=50)", "seconds": secs, "prompts": sift["prompts"],
          "mean_prior_variance": sift["mean_prior_variance"],
          "mean_final_variance": sift["mean_final_variance"],
          "mean_distinct_picks": sift["mean_distinct_picks"]})
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
