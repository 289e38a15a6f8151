"""Rank benchmarks, printed as JSON lines.

1. LM scoring throughput: the flow's scoring stage (tasks.pool.lm_scoring.score_pool: a Ray Data
   actor stage doing greedy generation + uncertainty scores) against a bare HF ``generate``
   loop on the same prompts (same model, chat template, left padding, batch size,
   max_new_tokens, greedy, 2 torch threads) in the same run.  Reported: items/s of each and
   ``ratio = stage / bare`` twice: on wall time (the stage's Ray start-up, actor start and
   model load included) and on the actor's busy time (generation + scoring only: the
   marginal rate), with the start-up (wall - busy) reported on its own.  ``--score-check``
   also measures how much the scores move: the stage's scores against ``greedy_scores`` in
   the old fixed batches (same dtype: must be equal up to float noise) and against bf16
   on CPU (the dtype CUDA runs): max |delta| per score and the share of identical
   response lengths.
2. Selection time per strategy (sift_ops.pool_strategies.rank_items) on synthetic
   clustered 384-d unit embeddings and random uncertainty scores, 2 groups, at 10k and
   100k items, with the same budget in items.

    python benchmarks/bench_rank.py                      # ~5-10 min on 2 busy cores
    python benchmarks/bench_rank.py --skip-lm --sizes 10000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def emit(**kw) -> None:
    print(json.dumps(kw, default=float), flush=True)


def bench_lm(args: argparse.Namespace, work: Path) -> None:
    import pyarrow.parquet as pq
    import torch

    from sift_ops.causal_lm import load_causal_lm
    from sift_ops.generation import build_prompts, prompt_text
    from tasks.pool.items import ingest_pool_files, pool_dir
    from tasks.pool.lm_scoring import score_pool
    from tasks.runtime.models import resolve_lm_path
    from tasks.sample.bundled import build_sample

    sample = build_sample(work / "sample", n_docs=40, n_queries=2, pool_size=args.items)
    parquet = ingest_pool_files(sample["paths"]["pool"],
                                pool_dir(work / "ws", "bench")).items_path
    lm_path = resolve_lm_path(args.lm, args.models)
    items = pq.read_table(parquet, columns=["item_id", "instruction", "input"])
    texts = [prompt_text(a, b) for a, b in zip(items.column("instruction").to_pylist(),
                                               items.column("input").to_pylist(), strict=True)]

    from tasks.runtime.ray_runtime import ensure_ray

    ensure_ray(address="local")  # our own Ray, never another process's instance
    # the flow's stage: Ray Data, one actor holding the LM
    emit(bench="lm_scoring", step="stage", load=[round(x, 2) for x in os.getloadavg()])
    table, stats = score_pool(parquet, lm_path, max_new_tokens=args.max_new_tokens,
                              gen_batch_size=args.batch, rows_per_call=args.batch * 4,
                              threads=args.threads, token_budget=args.token_budget)
    import ray

    ray.shutdown()  # free the actor's cores before the bare loop

    # the bare loop: same prompts, same batches, plain generate, no scores
    torch.set_num_threads(args.threads)
    t_load = time.perf_counter()
    model, tok = load_causal_lm(lm_path)
    load_s = time.perf_counter() - t_load
    prompts = build_prompts(tok, texts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # as the stage does
    emit(bench="lm_scoring", step="bare", load=[round(x, 2) for x in os.getloadavg()])
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), args.batch):
            enc = tok([prompts[i] for i in order[s:s + args.batch]], return_tensors="pt",
                      padding=True, add_special_tokens=False, truncation=True, max_length=1024)
            model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id, temperature=None, top_p=None,
                           top_k=None)
    bare_s = time.perf_counter() - t0
    n = len(texts)
    bare = n / bare_s
    if args.score_check:
        score_check(args, model, tok, texts, items.column("item_id").to_pylist(), table)
    emit(bench="lm_scoring", model=os.path.basename(lm_path), items=n,
         max_new_tokens=args.max_new_tokens, batch=args.batch, threads=args.threads,
         stage_items_per_s_wall=stats["items_per_s"],
         stage_items_per_s_busy=stats["compute_items_per_s"],
         bare_items_per_s=bare, bare_load_s=load_s,
         ratio_wall=stats["items_per_s"] / bare,
         ratio_busy=stats["compute_items_per_s"] / bare,
         stage_startup_s=stats["seconds"] - stats["actor_seconds"],
         token_budget=args.token_budget, load_end=[round(x, 2) for x in os.getloadavg()],
         mean_gen_tokens=float(table.column("gen_tokens").to_numpy().mean()))


def score_check(args: argparse.Namespace, model, tok, texts: list[str], ids: list[str],
                table) -> None:
    """How far the stage's scores are from the old fixed batches (float32) and from bf16."""
    import copy

    import numpy as np
    import torch

    from sift_ops.generation import SCORE_KEYS, greedy_scores

    pos = {i: r for r, i in enumerate(table.column("item_id").to_pylist())}
    rows = np.array([pos[i] for i in ids])  # the stage's rows in the order of ``texts``
    stage = {k: table.column(k).to_numpy()[rows] for k in SCORE_KEYS}
    for name, m, kwargs in (
            ("fixed_batches_fp32", model, {"batch_size": args.batch}),
            ("bf16_cpu", copy.deepcopy(model).to(torch.bfloat16),
             {"batch_size": args.batch, "token_budget": args.token_budget})):
        t0 = time.perf_counter()
        ref = greedy_scores(m, tok, texts, max_new_tokens=args.max_new_tokens, **kwargs)
        secs = time.perf_counter() - t0
        same = ref["gen_tokens"] == stage["gen_tokens"]
        emit(bench="lm_scoring", score_check=name, items=len(texts), seconds=secs,
             items_per_s=len(texts) / secs, same_gen_tokens=float(same.mean()),
             **{f"max_abs_delta_{k}": float(np.nanmax(np.abs(ref[k] - stage[k])))
                for k in SCORE_KEYS[:5]},
             **{f"max_abs_delta_{k}_same_length": float(np.nanmax(
                 np.abs(ref[k][same] - stage[k][same])) if same.any() else np.nan)
                for k in SCORE_KEYS[:5]})


def synthetic(n: int, d: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, d)).astype(np.float32)
    x = centres[rng.integers(0, 64, n)] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    scores = {k: rng.random(n) for k in ("mean_entropy", "max_entropy", "least_confidence",
                                         "mean_margin", "min_margin")}
    groups = np.where(rng.random(n) < 0.3, "news", "code")
    return x, scores, groups


def bench_selection(args: argparse.Namespace) -> None:
    import torch

    from sift_ops.pool_strategies import rank_items

    torch.set_num_threads(args.threads)
    for n in args.sizes:
        emb, scores, groups = synthetic(n, 384, args.seed)
        for strategy in args.strategies:
            t0 = time.perf_counter()
            r = rank_items(strategy, emb, scores, None, groups, args.budget,
                           allocation="proportional", seed=args.seed, knn=args.knn)
            secs = time.perf_counter() - t0
            emit(bench="selection", strategy=strategy, n=n, d=384, budget=args.budget,
                 knn=args.knn, seconds=secs, selected=int(len(r.index)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=48, help="pool items scored by the LM")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--token-budget", type=int, default=None,
                   help="stage's padded tokens per generate call (default: none on CPU)")
    p.add_argument("--score-check", action="store_true",
                   help="also compare scores with fixed fp32 batches and with bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lm", default=None, help="local HF folder (default: bundled SmolLM2)")
    p.add_argument("--models", default=str(Path.home() / ".cache" / "sift-curation"),
                   help="where the bundled GGUF is converted once")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=[10_000, 100_000])
    p.add_argument("--budget", type=int, default=500)
    p.add_argument("--knn", type=int, default=32)
    p.add_argument("--strategies", type=lambda s: s.split(","),
                   default=["random", "mean_entropy", "k_center", "facility_location",
                            "uncertainty_facility_location", "sift"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-lm", action="store_true")
    p.add_argument("--skip-selection", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench-rank-") as tmp:
        if not args.skip_lm:
            bench_lm(args, Path(tmp))
        if not args.skip_selection:
            bench_selection(args)


if __name__ == "__main__":
    main()
