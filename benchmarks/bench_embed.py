"""Embedding throughput: the Ray Data embed flow vs a bare transformers forward loop.

Both embed the *same chunks* (the flow's output shards are read back for the bare loop) on
the same machine in the same run, so the ratio is the pipeline's overhead (reading,
decompressing, chunking, Parquet writing, Ray scheduling, Prefect). Prints JSON lines.

    .venv/bin/python benchmarks/bench_embed.py [--n-docs 600] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def emit(**row) -> None:
    print(json.dumps(row, default=float), flush=True)


def bare_loop(texts: list[str], model_path: str, batch_size: int, sort: bool) -> float:
    """Plain transformers: tokenise, forward, mean-pool, normalise. Returns seconds."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if sort else range(len(texts))
    items = [texts[i] for i in order]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(items), batch_size):
            enc = tok(items[s : s + batch_size], padding=True, truncation=True, max_length=256,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            emb = (hidden * mask).sum(1) / mask.sum(1)
            torch.nn.functional.normalize(emb, dim=-1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-docs", type=int, default=600, help="sample documents to embed")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (bare loop)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    from flows.settings import configure

    configure(work)
    import pyarrow.parquet as pq
    import torch

    from sift_ops.embedding import default_encoder_path
    from tasks.sample import build_sample
    from tasks.workspace import CorpusPaths

    torch.set_num_threads(args.threads)
    sample = build_sample(work / "sample", n_docs=args.n_docs, n_queries=4, pool_size=20)
    from flows.embed import embed_flow

    t0 = time.perf_counter()
    result = embed_flow(corpus=sample["paths"]["pile_dir"], name="bench", workspace=str(work),
                        batch_size=args.batch_size, shard_docs=200)
    flow_wall = time.perf_counter() - t0
    paths = CorpusPaths(work, "bench")
    texts = pq.read_table([str(p) for p in paths.shard_files()], columns=["text"])
    texts = texts["text"].to_pylist()
    n = len(texts)
    model = default_encoder_path()
    sorted_s = bare_loop(texts, model, args.batch_size, sort=True)
    unsorted_s = bare_loop(texts, model, args.batch_size, sort=False)
    pipeline_s = result["seconds"]
    emit(bench="embed", method="embed_flow_pipeline", chunks=n, seconds=pipeline_s,
         chunks_per_s=n / pipeline_s,
         note="Ray Data execution: read+decompress+chunk+embed+write, after Ray start")
    emit(bench="embed", method="embed_flow_end_to_end", chunks=n, seconds=flow_wall,
         chunks_per_s=n / flow_wall,
         note="whole Prefect flow incl. temporary Prefect server, Ray start, model loads")
    emit(bench="embed", method="bare_transformers_sorted", chunks=n, seconds=sorted_s,
         chunks_per_s=n / sorted_s, note="forward loop only, batches sorted by length")
    emit(bench="embed", method="bare_transformers_unsorted", chunks=n, seconds=unsorted_s,
         chunks_per_s=n / unsorted_s, note="forward loop only, input order")
    emit(bench="embed", summary=True, chunks=n, cpus=os.cpu_count(),
         pipeline_over_bare_sorted=(n / pipeline_s) / (n / sorted_s),
         pipeline_over_bare_unsorted=(n / pipeline_s) / (n / unsorted_s),
         end_to_end_over_bare_sorted=(n / flow_wall) / (n / sorted_s))


if __name__ == "__main__":
    main()
