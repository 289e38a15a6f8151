"""The tasks of the `eval-ttt` flow (flows/eval_ttt.py): held-out documents, the chunks
each strategy selects for their prompts, test-time fine-tuning and scoring, and the rows,
files, plot and Markdown artifact of a run.

The evaluation itself (document cuts, one Adam step per chunk, bits per byte, restored
weights) is :func:`tasks.evaluation.evaluate.ttt_rows_for_doc`; this module runs it over a
run's documents and stores what it measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.evaluation import evaluate as ev
from tasks.reporting import artifacts
from tasks.reporting.eval_plots import strategy_points
from tasks.runtime.atomic import atomic_path
from tasks.runtime.progress import progress_bar
from tasks.runtime.workspace import CorpusPaths
from tasks.selection.select import DEFAULT_ALPHA, DEFAULT_DUP_THRESHOLD
from tasks.storage import db


def check_inputs(workspace: str, name: str, sample: str) -> Path:
    """The sample's ``pile/`` folder (held-out documents are checked against it), after
    making sure it and corpus ``name``'s manifest exist: a missing input fails before the
    run is recorded, with a message that says what to pass."""
    pile_dir = Path(sample) / "pile"
    if not pile_dir.is_dir():
        raise FileNotFoundError(f"{pile_dir} not found: pass --sample, the folder "
                                "`sift-curate sample` wrote for this corpus")
    CorpusPaths(workspace, name).load_manifest()
    return pile_dir


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
    with progress_bar("ttt documents", "doc", total) as bar:
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




def strategy_table(records: list[dict[str, Any]], per_seed: dict[str, list[float]]
                   ) -> list[dict[str, Any]]:
    """One row per strategy for the run summary and the artifact: bits per byte and its
    difference to the base model (mean and std over seeds), and the means over seeds of
    the other metrics (None where a strategy has none)."""
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
    return table


def store_results(db_file: Path, run_id: str, out_dir: Path, rows: list[dict[str, Any]],
                  n: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Write a run's ``evaluations`` rows (replacing the run's earlier ones) and its
    per-document rows (``out_dir/ttt_documents.jsonl``). Returns bpb per seed by strategy
    (for the plot) and the summary's ``table`` and ``documents`` (distinct documents)."""
    records, per_seed = summarize(rows, n)
    db.replace_run_rows(db_file, "evaluations", run_id,
                        ev.evaluation_rows(run_id, "ttt", records))
    with atomic_path(out_dir / "ttt_documents.jsonl") as tmp, \
            open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return per_seed, {"table": strategy_table(records, per_seed),
                      "documents": len({r["doc"] for r in rows})}


def report(run_id: str, out_dir: Path, per_seed: dict[str, list[float]],
           table: list[dict[str, Any]], params: Mapping[str, Any]) -> Path:
    """The run's plot (``out_dir/ttt_bpb.png``, bpb per seed by strategy) and Markdown
    artifact; ``params`` is the run's key (flows.params.EvalTTTParams.run_key)."""
    p = params
    plot = strategy_points(
        per_seed, out_dir / "ttt_bpb.png",
        f"Test-time fine-tuning, {p['n_docs']} docs x {len(p['seeds'])} seeds; N={p['n']}, "
        f"K={p['k']}, lr={p['lr']:g}, lam={p['lam']:g}",
        "bits per byte of the continuation (lower is better)")
    get_run_logger().info("eval-ttt %s: %s; plot %s", run_id, table, plot)
    artifacts.markdown(
        f"eval-ttt-{p['name']}",
        f"# Test-time fine-tuning `{run_id}`\n\nCorpus `{p['name']}`, {p['n_docs']} held-out "
        f"documents per seed (split `{p['split']}`), seeds {p['seeds']}; N={p['n']} chunks "
        f"of K={p['k']} candidates, lam={p['lam']}, one Adam step per chunk at "
        f"lr={p['lr']}, at most {p['max_train_tokens']} tokens per chunk.\n\nBits per byte "
        f"of the continuation (mean over documents, then mean +- std over seeds; lower is "
        f"better):\n\n" + artifacts.md_table(table) +
        f"\n\nPlot: `{plot}`\n\nPer-document rows: `{out_dir / 'ttt_documents.jsonl'}`\n\n"
        f"```sql\nSELECT strategy, metric, avg(value), stddev_samp(value) FROM evaluations "
        f"WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY metric, strategy;\n```",
        description=f"eval-ttt run {run_id}",
    )
    return plot
