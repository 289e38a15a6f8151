"""Flow `eval-ttt`: does test-time fine-tuning on SIFT-selected data help the LM?

For each seed, ``n_docs`` held-out documents (half news, half code, never in the corpus)
are cut into a prompt and a continuation. Each prompt is embedded with the corpus's
encoder, ``k`` candidate chunks are retrieved from the faiss index and ``n`` are chosen
with every strategy (sift, nn, nn-f, random, adaptive-sift: tasks/selection/select.py; Adaptive SIFT
may choose fewer). The causal LM takes one Adam step per chosen chunk, in pick order, then
the continuation's bits per byte is measured, and the original weights are restored before
the next (prompt, strategy). The base model without fine-tuning is scored too. When
adaptive-sift runs, every strategy is also scored after as many steps as Adaptive SIFT took
for that prompt (equal compute).

Output: ``evaluations`` rows (kind 'ttt', budget = n chunks, metric 'bpb' per seed = mean
over that seed's documents, plus 'bpb_minus_base', 'distinct_chunks', 'posterior_variance',
'steps' (Adam steps actually taken per prompt), 'dup_exact' / 'dup_near' (share of picks
repeating an earlier pick's text exactly / as a near copy), 'distinct_near', with
adaptive-sift 'bpb_equal_compute_minus_base' and, when nn ran, 'overlap_nn': the share of a
strategy's chunks nn picked too), per-document detail in
``reports/<run_id>/ttt_documents.jsonl``, a PNG, and a Markdown artifact.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from tasks.evaluation import evaluate as ev
from tasks.reporting import artifacts
from tasks.reporting.eval_plots import strategy_points
from tasks.runtime.workspace import CorpusPaths, db_path, reports_dir, workspace_root
from tasks.selection.select import DEFAULT_ALPHA, DEFAULT_DUP_THRESHOLD, strategy_params
from tasks.storage import db
from tasks.storage.runs import make_run_id, tracked_run

#: Defaults sized for about 30 minutes on 2 CPU cores with SmolLM2-135M: 8 docs x 3 seeds x
#: 3 strategies (sift, nn, random) x 8 steps = 576 Adam steps; named with --strategies,
#: nn-f adds up to 192 more (none where its picks equal NN's) and adaptive-sift none
#: (scored part-way through SIFT's run); measured here ~2.7 s per step (256 tokens,
#: forward 0.7 + backward 1.5 + Adam 0.5) with 2 threads and a lightly loaded machine, and
#: ~6 s with 1 thread while other jobs held the cores. On a machine shared with other
#: jobs use --threads 1: two OpenMP threads spinning at barriers were 3-4x slower.
DEFAULTS = {"n_docs": 8, "n": 8, "k": 200, "lam": 0.01, "lr": 1e-4, "seeds": (0, 1, 2),
            "max_train_tokens": 256, "prompt_chars": 800, "continuation_chars": 600}


@task(name="held-out-documents", persist_result=False, cache_policy=NO_CACHE)
def held_out_documents(pile_dir: str, n_docs: int, seeds: list[int], split: str,
                       prompt_chars: int, continuation_chars: int
                       ) -> dict[int, list[ev.HeldOutDoc]]:
    logger = get_run_logger()
    cands = ev.heldout_candidates(pile_dir, prompt_chars=prompt_chars,
                                  continuation_chars=continuation_chars)
    by_src: dict[str, int] = {}
    for d in cands:
        by_src[d.source] = by_src.get(d.source, 0) + 1
    logger.info("held-out candidates sharing no long line with the corpus: %s", by_src)
    return {s: ev.choose_docs(cands, n_docs, s, split) for s in seeds}


@task(name="select-for-prompts", persist_result=False, cache_policy=NO_CACHE)
def select_chunks(workspace: str, name: str, prompts: list[str], strategies: list[str],
                  k: int, n: int, lam: float, seed: int,
                  dup_threshold: float = DEFAULT_DUP_THRESHOLD,
                  alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    """Per strategy: chunk texts ``[B][<=n]`` in pick order, each prompt's final posterior
    variance and number of picks and, when nn ran too, the share of its distinct picks that
    nn also picked."""
    from sift_ops.embedding import TextEncoder
    from tasks.index.search_service import SearchService
    from tasks.selection.select import select_for_queries

    paths = CorpusPaths(workspace, name)
    manifest = paths.load_manifest()
    emb = TextEncoder(manifest["model"], max_tokens=manifest["max_tokens"]).encode(prompts)
    out: dict[str, Any] = {}
    picks: dict[str, np.ndarray] = {}
    with SearchService(paths) as service:
        for strategy in strategies:
            res = select_for_queries(service, emb, k=k, n=n, lam=lam, strategy=strategy,
                                     seed=seed, dup_threshold=dup_threshold, alpha=alpha)
            picks[strategy] = res["picks"]
            out[strategy] = {"texts": ev.fetch_texts(service, res["rows"]),
                             "final_variance": res["variances"][:, -1].tolist(),
                             "n_used": res["n_used"].tolist()}
    if "nn" in picks:
        for strategy, p in picks.items():
            out[strategy]["overlap_nn"] = ev.pick_overlap(p, picks["nn"]).tolist()
    return out


@task(name="finetune-and-score", persist_result=False, cache_policy=NO_CACHE)
def finetune_and_score(lm: str | None, cache_dir: str, docs_by_seed: dict[int, list],
                       selections: dict[int, dict[str, Any]], lr: float,
                       max_train_tokens: int, threads: int | None) -> list[dict[str, Any]]:
    import torch

    from sift_ops import finetune as ft
    from sift_ops.causal_lm import load_causal_lm
    from tasks.runtime.models import resolve_lm_path

    if threads:
        torch.set_num_threads(threads)
    model, tok = load_causal_lm(resolve_lm_path(lm, cache_dir))
    base = ft.snapshot(model)
    total = sum(len(d) for d in docs_by_seed.values())
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=total, desc="ttt documents", unit="doc", file=sys.stderr,
               dynamic_ncols=True)
    try:
        for seed, docs in docs_by_seed.items():
            for i, doc in enumerate(docs):
                selected = {s: sel["texts"][i] for s, sel in selections[seed].items()}
                adaptive = selections[seed].get("adaptive-sift")
                t0 = time.perf_counter()
                doc_rows = ev.ttt_rows_for_doc(
                    model, tok, base, doc, selected, lr=lr,
                    max_train_tokens=max_train_tokens,
                    equal_compute_steps=None if adaptive is None else adaptive["n_used"][i])
                for r in doc_rows:
                    r["seed"] = seed
                    r["seconds"] = round(time.perf_counter() - t0, 2)
                    if r["strategy"] != "base":
                        sel = selections[seed][r["strategy"]]
                        r["final_variance"] = sel["final_variance"][i]
                        if "overlap_nn" in sel:
                            r["overlap_nn"] = sel["overlap_nn"][i]
                rows += doc_rows
                bar.update(1)
                bar.set_postfix({r["strategy"]: f"{r['bpb']:.3f}" for r in doc_rows})
        if not ft.same_weights(model, base):  # every branch restored; prove it
            raise RuntimeError("model weights differ from the base after the evaluation")
    finally:
        bar.close()
    return rows


def summarize(rows: list[dict[str, Any]], n: int) -> tuple[list[dict], dict[str, list[float]]]:
    """Per (strategy, seed) records for the evaluations table, and bpb per seed by
    strategy (for the plot)."""
    records: list[dict[str, Any]] = []
    per_seed: dict[str, list[float]] = {}
    seeds = sorted({r["seed"] for r in rows})
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    for s in strategies:
        for seed in seeds:
            mine = [r for r in rows if r["strategy"] == s and r["seed"] == seed]
            base = {r["doc"]: r["bpb"] for r in rows
                    if r["strategy"] == "base" and r["seed"] == seed}
            bpb = float(np.mean([r["bpb"] for r in mine]))
            per_seed.setdefault(s, []).append(bpb)
            budget = 0 if s == "base" else n
            records.append({"strategy": s, "budget": budget, "seed": seed, "metric": "bpb",
                            "value": bpb})
            records.append({"strategy": s, "budget": budget, "seed": seed,
                            "metric": "bpb_minus_base",
                            "value": float(np.mean([r["bpb"] - base[r["doc"]] for r in mine]))})
            if s != "base":
                records.append({"strategy": s, "budget": budget, "seed": seed,
                                "metric": "distinct_chunks",
                                "value": float(np.mean([r["distinct"] for r in mine]))})
                for key in ("steps", "dup_exact", "dup_near", "distinct_near"):
                    records.append({"strategy": s, "budget": budget, "seed": seed,
                                    "metric": key,
                                    "value": float(np.nanmean([r[key] for r in mine]))})
                if all("bpb_equal_compute" in r for r in mine):
                    records.append({"strategy": s, "budget": budget, "seed": seed,
                                    "metric": "bpb_equal_compute_minus_base",
                                    "value": float(np.mean([r["bpb_equal_compute"]
                                                            - base[r["doc"]]
                                                            for r in mine]))})
                records.append({"strategy": s, "budget": budget, "seed": seed,
                                "metric": "posterior_variance",
                                "value": float(np.mean([r["final_variance"] for r in mine]))})
                if s != "nn" and all("overlap_nn" in r for r in mine):
                    records.append({"strategy": s, "budget": budget, "seed": seed,
                                    "metric": "overlap_nn",
                                    "value": float(np.nanmean([r["overlap_nn"]
                                                               for r in mine]))})
            for src in sorted({r["source"] for r in mine}):
                records.append({"strategy": s, "budget": budget, "seed": seed,
                                "metric": f"bpb[{src}]",
                                "value": float(np.mean([r["bpb"] for r in mine
                                                        if r["source"] == src]))})
    return records, per_seed


@flow(name="eval-ttt", log_prints=True)
def eval_ttt_flow(
    name: str = "mini-pile",
    workspace: str | None = None,
    sample: str | None = None,
    n_docs: int = DEFAULTS["n_docs"],
    n: int = DEFAULTS["n"],
    k: int = DEFAULTS["k"],
    lam: float = DEFAULTS["lam"],
    lr: float = DEFAULTS["lr"],
    seeds: list[int] | None = None,
    strategies: list[str] | None = None,
    split: str = "test",
    lm: str | None = None,
    max_train_tokens: int = DEFAULTS["max_train_tokens"],
    prompt_chars: int = DEFAULTS["prompt_chars"],
    continuation_chars: int = DEFAULTS["continuation_chars"],
    threads: int | None = None,
    run_id: str | None = None,
    dup_threshold: float = DEFAULT_DUP_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Test-time fine-tuning evaluation on corpus ``name`` (embedded and indexed).

    ``sample`` is the folder `sift-curate sample` wrote (default <workspace>/sample); its
    ``pile/`` must be the corpus's input, since held-out documents are checked against it.
    ``dup_threshold``: NN-F's filter; ``alpha``: Adaptive SIFT's compute-performance ratio.
    """
    logger = get_run_logger()
    seeds = list(seeds if seeds is not None else DEFAULTS["seeds"])
    strategies = list(strategies or ev.TTT_DEFAULT_STRATEGIES)
    bad = [s for s in strategies if s not in ev.TTT_STRATEGIES]
    if bad:
        raise ValueError(f"unknown strategies {bad}; choose from {ev.TTT_STRATEGIES}")
    if n_docs < 1 or n < 1 or k < n or lr <= 0 or lam <= 0 or not seeds:
        raise ValueError("need n_docs >= 1, 1 <= n <= k, lr > 0, lam > 0 and some seeds")
    ws = str(workspace_root(workspace))
    sample_dir = Path(sample or Path(ws) / "sample").expanduser().resolve()
    pile_dir = sample_dir / "pile"
    if not pile_dir.is_dir():
        raise FileNotFoundError(f"{pile_dir} not found: pass --sample, the folder "
                                "`sift-curate sample` wrote for this corpus")
    CorpusPaths(ws, name).load_manifest()  # fails early with a clear message if missing
    params = {"name": name, "sample": str(sample_dir), "n_docs": n_docs, "n": n, "k": k,
              "lam": lam, "lr": lr, "seeds": seeds, "strategies": strategies,
              "split": split, "lm": lm, "max_train_tokens": max_train_tokens,
              "prompt_chars": prompt_chars, "continuation_chars": continuation_chars}
    for s in strategies:  # only strategies that use them add them (old run ids stay)
        params.update(strategy_params(s, dup_threshold, alpha))
    rid = make_run_id("eval-ttt", params, run_id)
    dbf = db_path(ws)
    t_start = time.perf_counter()
    with tracked_run(dbf, rid, "eval-ttt", params) as rec:
        docs = held_out_documents(str(pile_dir), n_docs, seeds, split, prompt_chars,
                                  continuation_chars)
        t_sel = time.perf_counter()
        selections = {s: select_chunks(ws, name, [d.prompt for d in docs[s]], strategies,
                                       k, n, lam, s, dup_threshold, alpha) for s in seeds}
        select_s = time.perf_counter() - t_sel
        t_ft = time.perf_counter()
        rows = finetune_and_score(lm, str(Path(ws) / "models"), docs, selections, lr,
                                  max_train_tokens, threads)
        finetune_s = time.perf_counter() - t_ft
        records, per_seed = summarize(rows, n)
        db.replace_run_rows(dbf, "evaluations", rid, ev.evaluation_rows(rid, "ttt", records))
        out_dir = reports_dir(ws, rid)
        with open(out_dir / "ttt_documents.jsonl", "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        table = []
        for s, vals in per_seed.items():
            m, sd = ev.mean_std(vals)
            d_m, d_sd = ev.mean_std([r["value"] for r in records if r["strategy"] == s
                                     and r["metric"] == "bpb_minus_base"])
            def metric(key: str, s: str = s) -> float | None:
                v = [r["value"] for r in records if r["strategy"] == s and r["metric"] == key]
                return float(np.mean(v)) if v else None

            table.append({"strategy": s, "bpb_mean": m, "bpb_std": sd,
                          "minus_base_mean": d_m, "minus_base_std": d_sd,
                          "overlap_nn": metric("overlap_nn"), "steps": metric("steps"),
                          "dup_near": metric("dup_near"), "distinct": metric("distinct_chunks"),
                          "equal_compute_minus_base": metric("bpb_equal_compute_minus_base"),
                          "seeds": len(vals)})
        rec.summary = {"table": table, "documents": len({r["doc"] for r in rows}),
                       "select_seconds": round(select_s, 1),
                       "finetune_seconds": round(finetune_s, 1),
                       "wall_seconds": round(time.perf_counter() - t_start, 1)}
    plot = strategy_points(
        per_seed, out_dir / "ttt_bpb.png",
        f"Test-time fine-tuning, {n_docs} docs x {len(seeds)} seeds; N={n}, K={k}, "
        f"lr={lr:g}, lam={lam:g}", "bits per byte of the continuation (lower is better)")
    logger.info("eval-ttt %s: %s; plot %s", rid, table, plot)
    artifacts.markdown(
        f"eval-ttt-{name}",
        f"# Test-time fine-tuning `{rid}`\n\nCorpus `{name}`, {n_docs} held-out documents "
        f"per seed (split `{split}`), seeds {seeds}; N={n} chunks of K={k} candidates, "
        f"lam={lam}, one Adam step per chunk at lr={lr}, at most {max_train_tokens} tokens "
        f"per chunk.\n\nBits per byte of the continuation (mean over documents, then mean "
        f"+- std over seeds; lower is better):\n\n" + artifacts.md_table(table) +
        f"\n\nPlot: `{plot}`\n\nPer-document rows: `{out_dir / 'ttt_documents.jsonl'}`\n\n"
        f"```sql\nSELECT strategy, metric, avg(value), stddev_samp(value) FROM evaluations "
        f"WHERE run_id = '{rid}' GROUP BY ALL ORDER BY metric, strategy;\n```",
        description=f"eval-ttt run {rid}",
    )
    return {"run_id": rid, "plot": str(plot), **rec.summary}
