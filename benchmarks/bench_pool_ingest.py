"""Pool ingest at scale: rows/s and peak memory of the streaming ingest, printed as JSON lines.

For each size a synthetic JSONL pool is generated in a temporary folder (instructions
with inputs of ~300-700 characters from 4 sources; ~1 % bad rows: malformed JSON, empty
instructions, wrong types, negative costs; ~5 % exact duplicates of an earlier row, a
fifth of them carrying an output; a third of the rows with an explicit item_id). Each
size is ingested in its own fresh subprocess, so that its peak RSS (``ru_maxrss``) is its
own, in the rank flow's three steps:

1. ``ingest_pool_files``: stream, validate, dedupe -> items.parquet + quarantine.parquet
2. ``store_pool``: DuckDB loads pool_items and quarantine from those files
3. ``read_item_columns``: what the flow then keeps (item_id, source, cost, labeled)

Reported per size: seconds and rows/s of each step, the peak RSS after each step and the
RSS right after imports (``base``). The summary line compares the largest size with the
smallest: ``rss_growth`` (peak over peak) and ``increment_growth`` (peak minus base, over
the same), against ``data_growth`` (pool bytes over pool bytes); their ratio is how much
of the data's growth shows up in memory (1.0 = memory grows like the data).

With ``--compare-rev REV`` the reader of that git revision (``tasks/pool.py`` at REV,
which read the whole pool into Python lists) runs too, at ``--compare-sizes``.

    python benchmarks/bench_pool_ingest.py                         # 100k and 1M rows
    python benchmarks/bench_pool_ingest.py --sizes 20000 200000    # quicker
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = ["news", "code", "science", "chat"]
WORDS = ("the of and to in is was for on that with as by at from this are be or an it not "
         "which have has were but been their its one all new more also other than two into "
         "after first can about when time only most over such some these may any they "
         "model data pool label answer question summary article function value return "
         "list string number file line table query result method system process").split()


def emit(**kw) -> None:
    print(json.dumps(kw, default=float), flush=True)


def _rss_mb() -> float:
    """Current resident set (VmRSS) in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def write_pool(path: Path, n: int, seed: int = 0) -> dict:
    """A synthetic JSONL pool of ``n`` rows (see the module docstring); returns counts."""
    rng = random.Random(seed)
    sentences = [" ".join(rng.choices(WORDS, k=rng.randint(8, 20))).capitalize() + "."
                 for _ in range(4000)]
    kept: list[str] = []  # a bounded sample of earlier lines to duplicate
    n_bad = n_dup = 0
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            u = rng.random()
            if u < 0.01:
                n_bad += 1
                line = rng.choice([
                    '{"instruction": "truncated',
                    json.dumps({"instruction": "  ", "source": "news"}),
                    json.dumps({"instruction": 17}),
                    json.dumps({"instruction": f"Price {i}", "cost": -1}),
                ])
            elif u < 0.06 and kept:
                n_dup += 1
                line = rng.choice(kept)
                if rng.random() < 0.2:  # a later copy that carries the label
                    obj = json.loads(line)
                    obj["output"] = "an annotated answer " + " ".join(rng.choices(WORDS, k=12))
                    line = json.dumps(obj)
            else:
                obj = {"instruction": f"Task {i}: " + rng.choice(sentences),
                       "input": " ".join(rng.choices(sentences, k=rng.randint(3, 7))),
                       "source": rng.choice(SOURCES)}
                if rng.random() < 0.33:
                    obj["item_id"] = f"item-{i}"
                line = json.dumps(obj)
                if len(kept) < 10000:
                    kept.append(line)
                else:
                    kept[rng.randrange(10000)] = line
            fh.write(line + "\n")
    return {"rows": n, "bad": n_bad, "duplicates": n_dup, "bytes": path.stat().st_size}


def child(args: argparse.Namespace) -> None:
    """One ingest in this fresh process; prints one JSON object."""
    import pyarrow.parquet as pq

    from tasks.pool.items import pool_dir

    if args.module:  # an older reader, loaded from a file
        import importlib.util

        spec = importlib.util.spec_from_file_location("old_pool", args.module)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["old_pool"] = mod  # its dataclasses look their module up
        spec.loader.exec_module(mod)
    else:
        from tasks.pool import items as mod
    base = _rss_mb()
    ws = Path(args.work) / "ws"
    dbf = ws / "curation.duckdb"
    out: dict = {"base_rss_mb": round(base, 1)}
    t0 = time.perf_counter()
    if args.module:  # the old path: everything in memory, then written
        p = mod.read_pool(args.pool)
        parquet = mod.write_pool_parquet(p, ws, "bench")
        t1 = time.perf_counter()
        out["peak_after_ingest_mb"] = _peak_mb()
        mod.store_pool(dbf, "bench", "bench", p)
        n_items = p.items.num_rows
        del p
    else:
        res = mod.ingest_pool_files(args.pool, pool_dir(ws, "bench"))
        parquet = res.items_path
        t1 = time.perf_counter()
        out["peak_after_ingest_mb"] = _peak_mb()
        mod.store_pool(dbf, "bench", "bench", res)
        n_items = res.n_items
        out.update(quarantined=res.n_quarantined, duplicates=res.n_duplicates,
                   labeled=res.n_labeled)
    t2 = time.perf_counter()
    out["peak_after_db_mb"] = _peak_mb()
    if args.module:
        cols = pq.read_table(parquet)  # the old flow kept the whole table, texts included
    else:
        cols = mod.read_item_columns(parquet)
    t3 = time.perf_counter()
    out.update(items=n_items, kept_columns=cols.num_columns, kept_mb=cols.nbytes / 2**20,
               ingest_s=t1 - t0, db_s=t2 - t1, read_back_s=t3 - t2, peak_rss_mb=_peak_mb())
    print(json.dumps(out))


def run_child(pool: Path, work: Path, module: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--pool", str(pool), "--work", str(work)]
    if module:
        cmd += ["--module", module]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--compare-rev", default=None,
                   help="also run tasks/pool/items.py of this git revision (the in-memory reader)")
    p.add_argument("--compare-sizes", type=int, nargs="+", default=[100_000])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pool", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--module", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    old_module = None
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        tmp = Path(tmp)
        if args.compare_rev:
            old_module = tmp / "old_pool.py"
            src = subprocess.run(["git", "show", f"{args.compare_rev}:tasks/pool.py"],
                                 check=True, capture_output=True, text=True, cwd=ROOT).stdout
            old_module.write_text(src)
        runs = []
        for n in sorted(set(args.sizes) | set(args.compare_sizes if old_module else [])):
            pool = tmp / f"pool-{n}.jsonl"
            t0 = time.perf_counter()
            gen = write_pool(pool, n)
            gen_s = time.perf_counter() - t0
            plans = [("streaming", None)] if n in args.sizes else []
            if old_module and n in args.compare_sizes:
                plans.append((f"in-memory@{args.compare_rev}", str(old_module)))
            for reader, module in plans:
                work = tmp / f"work-{n}-{len(runs)}"
                r = run_child(pool, work, module)
                row = {"bench": "pool_ingest", "reader": reader, **gen,
                       "pool_mb": round(gen["bytes"] / 2**20, 1), "generate_s": gen_s, **r,
                       "ingest_rows_per_s": n / r["ingest_s"],
                       "total_rows_per_s": n / (r["ingest_s"] + r["db_s"])}
                emit(**row)
                runs.append(row)
            pool.unlink()
        stream = [r for r in runs if r["reader"] == "streaming"]
        if len(stream) >= 2:
            lo, hi = stream[0], stream[-1]
            data_growth = hi["bytes"] / lo["bytes"]
            rss_growth = hi["peak_rss_mb"] / lo["peak_rss_mb"]
            inc_growth = ((hi["peak_rss_mb"] - hi["base_rss_mb"])
                          / (lo["peak_rss_mb"] - lo["base_rss_mb"]))
            emit(bench="pool_ingest_summary", sizes=[lo["rows"], hi["rows"]],
                 data_growth=data_growth, rss_growth=rss_growth,
                 rss_growth_over_data_growth=rss_growth / data_growth,
                 increment_growth=inc_growth,
                 increment_growth_over_data_growth=inc_growth / data_growth,
                 bytes_per_item_over_base=(hi["peak_rss_mb"] - hi["base_rss_mb"]) * 2**20
                 / hi["items"])


if __name__ == "__main__":
    main()
