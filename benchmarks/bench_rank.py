"""Rank benchmarks, printed as JSON lines.

1. LM scoring throughput: the flow's scoring stage (tasks.pool.lm_scoring.score_pool: a Ray
   Data actor stage doing greedy generation + uncertainty scores) against a bare HF
   ``generate`` loop on the same prompts in the same batches (same model, chat template,
   left padding, length-sorted batches of ``--batch`` rows, max_new_tokens, greedy, 2 torch
   threads), in the same run. The machine is shared, so the two are interleaved:
   ``--rounds`` x (bare loop, ``greedy_scores`` in this process, the stage), then one more
   bare loop; each stage run is compared with the mean of the bare loops just before and
   after it. JSON lines: one per round, then a summary with the median ratios
   (``ratio_busy``: the actor's busy time, generation + scores, the marginal rate;
   ``ratio_wall``: Ray start-up, actor start and model load included; the start-up,
   wall - busy, on its own), and a breakdown: tokenising, prefill, ``generate``, stacking
   the logits + scores, padded vs real prompt and response positions, the Ray actor +
   Arrow overhead (stage busy - the same code in this process) and, for the bare loop, its
   padded prefill alone. ``--score-check`` compares the stage's scores with the scores
   before this change (``greedy_scores(prefill="batch")``: one padded prefill inside
   ``generate``, same fp32 and batches; float rounding only) and with bf16 on CPU (the
   dtype CUDA could run): max |delta| per score, share of identical response lengths.
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


def _loads() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bench_lm(args: argparse.Namespace, work: Path) -> None:
    import statistics

    import numpy as np
    import pyarrow.parquet as pq
    import ray
    import torch

    from sift_ops.causal_lm import load_causal_lm
    from sift_ops.embedding import budget_batches
    from sift_ops.generation import build_prompts, greedy_scores, prompt_text
    from tasks.pool.items import ingest_pool_files, pool_dir
    from tasks.pool.lm_scoring import score_pool
    from tasks.runtime.models import resolve_lm_path
    from tasks.runtime.ray_runtime import ensure_ray
    from tasks.sample.bundled import build_sample

    sample = build_sample(work / "sample", n_docs=40, n_queries=2, pool_size=args.items)
    parquet = ingest_pool_files(sample["paths"]["pool"],
                                pool_dir(work / "ws", "bench")).items_path
    lm_path = resolve_lm_path(args.lm, args.models)
    items = pq.read_table(parquet, columns=["item_id", "instruction", "input"])
    texts = [prompt_text(a, b) for a, b in zip(items.column("instruction").to_pylist(),
                                               items.column("input").to_pylist(), strict=True)]
    n = len(texts)
    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(lm_path)
    prompts = build_prompts(tok, texts)
    lengths = np.array([len(x) for x in tok(prompts, add_special_tokens=False)["input_ids"]])
    # the stage's batches: length-sorted, row cap, optional token budget
    batches = [[prompts[i] for i in rows] for rows in budget_batches(
        np.minimum(lengths, 1024) + args.max_new_tokens,
        args.token_budget or np.iinfo(np.int64).max, args.batch)]
    gen_kw = {"max_new_tokens": args.max_new_tokens, "do_sample": False,
              "pad_token_id": tok.pad_token_id, "temperature": None, "top_p": None,
              "top_k": None}

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False,
                          truncation=True, max_length=1024)
                model.generate(**enc, **gen_kw)
        return time.perf_counter() - t0

    def scores_here(**kw) -> tuple[float, dict, dict]:
        tm: dict = {}
        t0 = time.perf_counter()
        s = greedy_scores(model, tok, texts, max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch, token_budget=args.token_budget,
                          timings=tm, **kw)
        return time.perf_counter() - t0, tm, s

    bare_s = [bare()]
    rounds, timings, table = [], [], None
    for r in range(args.rounds):
        here_s, tm, _ = scores_here()
        timings.append(tm)
        load_start = _loads()
        cpu0 = time.process_time()  # the driver's own CPU while the stage runs
        ensure_ray(address="local")  # our own Ray, never another process's instance
        table, stats = score_pool(parquet, lm_path, max_new_tokens=args.max_new_tokens,
                                  gen_batch_size=args.batch, rows_per_call=args.batch * 4,
                                  threads=args.threads, token_budget=args.token_budget)
        driver_cpu = time.process_time() - cpu0
        ray.shutdown()  # free the actor's cores before the next bare loop
        bare_s.append(bare())
        ref = (bare_s[-2] + bare_s[-1]) / 2  # the bare loops either side of this stage run
        busy, wall = stats["actor_seconds"], stats["seconds"]
        rounds.append({"round": r, "bare_s": ref, "bare_before_s": bare_s[-2],
                       "bare_after_s": bare_s[-1], "in_process_s": here_s,
                       "stage_busy_s": busy, "stage_wall_s": wall,
                       "stage_startup_s": wall - busy, "stage_driver_cpu_s": driver_cpu,
                       "ratio_busy": ref / busy,
                       "ratio_wall": ref / wall, "ratio_in_process": ref / here_s,
                       "load_start": load_start, "load_end": _loads()})
        emit(bench="lm_scoring", step="round", items=n, **rounds[-1])

    def med(key: str) -> float:
        return statistics.median(x[key] for x in rounds)

    bare_rate = n / statistics.mean(bare_s)
    emit(bench="lm_scoring", step="summary", model=os.path.basename(lm_path), items=n,
         max_new_tokens=args.max_new_tokens, batch=args.batch, threads=args.threads,
         rounds=args.rounds, token_budget=args.token_budget,
         mean_gen_tokens=float(table.column("gen_tokens").to_numpy().mean()),
         stage_items_per_s_busy=n / med("stage_busy_s"),
         stage_items_per_s_wall=n / med("stage_wall_s"), bare_items_per_s=bare_rate,
         ratio_busy=med("ratio_busy"), ratio_wall=med("ratio_wall"),
         ratio_in_process=med("ratio_in_process"), stage_startup_s=med("stage_startup_s"),
         bare_s=bare_s, load_end=_loads())

    # where the time goes: greedy_scores' own clock (mean over the rounds), the Ray actor +
    # Arrow overhead, and the bare loop's padded prefill alone (its decode is the rest)
    mean_tm = {k: statistics.mean(t[k] for t in timings) for k in timings[0]}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False,
                      truncation=True, max_length=1024)
            model(**enc, logits_to_keep=1)
    bare_prefill_s = time.perf_counter() - t0
    emit(bench="lm_scoring", step="breakdown", items=n,
         **{f"stage_{k}": v for k, v in mean_tm.items()},
         prompt_padding=1 - mean_tm["prompt_tokens"] / mean_tm["prompt_slots"],
         response_padding=1 - mean_tm["response_tokens"] / mean_tm["response_slots"],
         ray_actor_arrow_overhead_s=med("stage_busy_s") - med("in_process_s"),
         bare_prefill_padded_s=bare_prefill_s,
         bare_decode_s=statistics.mean(bare_s) - bare_prefill_s, load=_loads())
    if args.score_check:
        score_check(args, model, tok, texts, items.column("item_id").to_pylist(), table,
                    scores_here)


def score_check(args: argparse.Namespace, model, tok, texts: list[str], ids: list[str],
                table, scores_here) -> None:
    """How far the stage's scores are from the scores before row prefill (one padded
    prefill inside ``generate``, float32, same batches) and from bf16 on CPU."""
    import copy

    import numpy as np
    import torch

    from sift_ops.generation import SCORE_KEYS, greedy_scores

    pos = {i: r for r, i in enumerate(table.column("item_id").to_pylist())}
    rows = np.array([pos[i] for i in ids])  # the stage's rows in the order of ``texts``
    stage = {k: table.column(k).to_numpy()[rows] for k in SCORE_KEYS}
    before_s, _, before = scores_here(prefill="batch")
    t0 = time.perf_counter()
    half = greedy_scores(copy.deepcopy(model).to(torch.bfloat16), tok, texts,
                         max_new_tokens=args.max_new_tokens, batch_size=args.batch,
                         token_budget=args.token_budget)
    half_s = time.perf_counter() - t0
    for name, ref, secs in (("before_padded_prefill_fp32", before, before_s),
                            ("bf16_cpu", half, half_s)):
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
                   help="also compare scores with the padded-prefill path and with bf16")
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved (bare, in-process, stage) rounds, then one more bare")
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
