"""Embedding throughput: the embed pipeline vs a bare transformers loop, same chunks, same run.

Measured in one process, one after another, on the same chunks (the pipeline's output shards
are read back for the baselines), so the ratios are the pipeline's overhead on this machine
whatever else runs on it:

1. ``tokenise``: the CPU stage alone (read + decompress + parse + cut into token windows,
   :func:`tasks.corpus.embed.read_file_shards`), one process: chunks/s per core it can feed.
2. ``pipeline``: :func:`tasks.corpus.embed.run_embedding`, the embed flow's task body (Ray Data:
   read/tokenise tasks -> encoder actor -> Parquet). Its *marginal* throughput is the chunks
   of every shard after the first over the time between the first and the last shard's
   arrival at the driver; the fixed start-up (Ray Data planning, actor start, model load,
   first shard) is reported separately.
3. ``bare_sorted``: plain transformers on the chunk texts: tokenise, forward, mean-pool,
   normalise, length-sorted batches of ``--batch-size`` texts (the baseline of issue 16).
4. ``encoder_ids``: ``TextEncoder.encode_ids`` on the chunks' ids (token-budget batches),
   no Ray: the encoder without the pipeline.
5. ``encoder_ids_bf16`` (``--bf16``): the same in bfloat16 on CPU, with the min cosine to
   float32 (the check CUDA runs).

Load averages are printed before each step. Prints JSON lines.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_embed.py [--n-docs 400]
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


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bare_loop(texts: list[str], model_path: str, batch_size: int, max_length: int) -> float:
    """Plain transformers: tokenise, forward, mean-pool, normalise, length-sorted batches
    of ``batch_size`` texts. Returns seconds (model load excluded)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    items = sorted(texts, key=len)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(items), batch_size):
            enc = tok(items[s : s + batch_size], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            emb = (hidden * mask).sum(1) / mask.sum(1)
            torch.nn.functional.normalize(emb, dim=-1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-docs", type=int, default=400, help="sample documents to embed")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--batch-size", type=int, default=64, help="bare loop rows per batch")
    ap.add_argument("--shard-docs", type=int, default=25,
                    help="lines per shard (small: many arrivals for the marginal rate)")
    ap.add_argument("--token-budget", type=int, default=None, help="pipeline token budget")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 encode_ids on CPU")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    from flows.settings import configure

    configure(work)
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from sift_ops.embedding import TextEncoder, default_encoder_path
    from tasks.corpus.embed import EmbedConfig, discover_inputs, read_file_shards, run_embedding
    from tasks.runtime.ray_runtime import ensure_ray
    from tasks.runtime.workspace import CorpusPaths
    from tasks.sample.bundled import build_sample

    torch.set_num_threads(args.threads)
    sample = build_sample(work / "sample", n_docs=args.n_docs, n_queries=4, pool_size=20)
    pile = sample["paths"]["pile_dir"]
    files = [str(p) for p in discover_inputs(pile)]

    # 1. the CPU stage alone, in this process (tokenizer loaded first: a worker loads it once)
    from tasks.corpus.embed import _chunker

    _chunker(None, None, False)
    emit(bench="embed", step="tokenise", load=load())
    t0 = time.perf_counter()
    seqs: list = []  # the chunks' token ids, exactly what the pipeline's encoder gets
    for i, f in enumerate(files):
        for row in read_file_shards(i, f, args.shard_docs, 32_000_000, {}):
            inner = row.column("chunk_ids")[0].values
            off = np.asarray(inner.offsets) - inner.offsets[0].as_py()
            flat = np.asarray(inner.flatten())
            seqs.extend(flat[a:b] for a, b in zip(off[:-1], off[1:], strict=True))
    tok_s = time.perf_counter() - t0
    n_tok_chunks = len(seqs)

    # 2. the pipeline, arrivals timed on the driver
    ensure_ray(address="local")
    emit(bench="embed", step="pipeline", load=load())
    arrivals: list[tuple[float, int]] = []
    cfg = EmbedConfig(shard_docs=args.shard_docs, token_budget=args.token_budget)
    paths = CorpusPaths(work, "bench")
    t0 = time.perf_counter()
    summary = run_embedding(pile, paths, cfg,
                            lambda row: arrivals.append((time.perf_counter(), row["n_chunks"])))
    pipe_wall = time.perf_counter() - t0
    import ray

    ray.shutdown()  # free the actor's cores for the baselines
    n = summary["chunks_written"]
    first_t = arrivals[0][0]
    marginal_chunks = sum(c for _, c in arrivals[1:])
    marginal_s = arrivals[-1][0] - first_t
    pipe_marginal = marginal_chunks / marginal_s
    startup_s = (first_t - t0) - arrivals[0][1] / pipe_marginal

    table = pq.read_table([str(p) for p in paths.shard_files()], columns=["text", "n_tokens"])
    texts = table["text"].to_pylist()
    chars_per_token = sum(map(len, texts)) / max(1, int(np.sum(table["n_tokens"].to_numpy())))
    model = default_encoder_path()

    emit(bench="embed", step="bare_sorted", load=load())
    bare_s = bare_loop(texts, model, args.batch_size, 256)

    emit(bench="embed", step="encoder_ids", load=load())
    enc = TextEncoder(threads=args.threads, token_budget=args.token_budget)
    t0 = time.perf_counter()
    ref = enc.encode_ids(seqs)
    ids_s = time.perf_counter() - t0
    bf16 = None
    if args.bf16:
        emit(bench="embed", step="encoder_ids_bf16", load=load())
        half = TextEncoder(threads=args.threads, token_budget=args.token_budget,
                           dtype="bfloat16")
        t0 = time.perf_counter()
        got = half.encode_ids(seqs)
        bf16 = {"seconds": time.perf_counter() - t0,
                "min_cosine": float((ref * got).sum(1).min()),
                "probe_min_cosine": half.precision["min_cosine"]}
    n_tokens = int(sum(len(s) for s in seqs))

    emit(bench="embed", method="tokenise_stage", chunks=n_tok_chunks, seconds=tok_s,
         chunks_per_s=n_tok_chunks / tok_s,
         note="read + zstd + JSON + tokenise + window, one process (one core)")
    emit(bench="embed", method="pipeline", chunks=n, seconds=pipe_wall, chunks_per_s=n / pipe_wall,
         marginal_chunks_per_s=pipe_marginal, startup_s=startup_s, shards=len(arrivals),
         token_budget=args.token_budget,
         note="run_embedding (embed flow's task): Ray Data read/tokenise -> encoder actor -> "
              "Parquet; marginal = shards 2..n over first-to-last arrival")
    emit(bench="embed", method="bare_transformers_sorted", chunks=len(texts), seconds=bare_s,
         chunks_per_s=len(texts) / bare_s, batch_size=args.batch_size,
         note="tokenise chunk texts + forward + pool, length-sorted fixed batches, no I/O")
    emit(bench="embed", method="encoder_encode_ids", chunks=len(seqs), seconds=ids_s,
         chunks_per_s=len(seqs) / ids_s, tokens=n_tokens, tokens_per_s=n_tokens / ids_s,
         token_budget=enc.token_budget, note="TextEncoder.encode_ids, no Ray, no I/O")
    if bf16:
        emit(bench="embed", method="encoder_encode_ids_bf16_cpu", chunks=len(seqs),
             seconds=bf16["seconds"], chunks_per_s=len(seqs) / bf16["seconds"],
             min_cosine_vs_fp32=bf16["min_cosine"], probe_min_cosine=bf16["probe_min_cosine"])
    emit(bench="embed", summary=True, chunks=n, cpus=os.cpu_count(), threads=args.threads,
         mean_tokens_per_chunk=n_tokens / max(len(seqs), 1), chars_per_token=chars_per_token,
         docs=args.n_docs,
         marginal_over_bare_sorted=pipe_marginal / (len(texts) / bare_s),
         wall_over_bare_sorted=(n / pipe_wall) / (len(texts) / bare_s),
         encode_ids_over_bare_sorted=(len(seqs) / ids_s) / (len(texts) / bare_s),
         tokenise_chunks_per_s_per_core=n_tok_chunks / tok_s,
         bf16_over_fp32=(ids_s / bf16["seconds"]) if bf16 else None,
         load_end=load())


if __name__ == "__main__":
    main()
