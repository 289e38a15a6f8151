"""The tasks of the `eval-budget` flow (flows/eval_budget.py): embeddings and (for the
uncertainty strategies) LM scores of the selection pools, each strategy's order and the
sets it chooses at each budget, the fine-tunes with their test losses, and the rows,
plot and Markdown artifact of a run.

Resume: the LM scores and every finished fine-tune are checkpointed in the run's
``partial/`` folder (:func:`checkpoints`) and reused by a rerun of the same run;
:func:`clear_checkpoints` removes the folder once the run has completed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from sift_ops.generation import SCORE_KEYS
from sift_ops.pool_strategies import LM_STRATEGIES, needs_lm
from sift_ops.uncertainty import UNCERTAINTY_KEYS
from tasks.evaluation import evaluate as ev
from tasks.reporting import artifacts
from tasks.reporting.eval_plots import budget_curves
from tasks.runtime.atomic import atomic_path
from tasks.runtime.progress import progress_bar
from tasks.storage import db

#: {seed: (selection-pool indices, test indices)} into the run's pool pairs
Splits = dict[int, tuple[list[int], list[int]]]


def pool_files(sample: str) -> tuple[Path, Path]:
    """The sample's ``pool.jsonl`` and ``pool_references.jsonl``; a missing one fails
    before the run is recorded, with a message that says what to pass."""
    folder = Path(sample)
    pool_file, refs_file = folder / "pool.jsonl", folder / "pool_references.jsonl"
    if not pool_file.is_file() or not refs_file.is_file():
        raise FileNotFoundError(f"{folder} lacks pool.jsonl / pool_references.jsonl: "
                                "pass --sample, a folder `sift-curate sample` wrote")
    return pool_file, refs_file


def checkpoints(out_dir: Path) -> Path:
    """``out_dir/partial``, created: the checkpoints of an unfinished attempt, which a
    rerun of the run resumes from (removed by :func:`clear_checkpoints` once the run
    completes, so a later rerun computes everything again)."""
    partial = out_dir / "partial"
    partial.mkdir(exist_ok=True)
    return partial


def clear_checkpoints(out_dir: Path) -> None:
    """After a completed run: keep the LM scores as ``out_dir/pool_uncertainty.jsonl``
    (when the pool was scored) and remove ``partial/``. Called last, so a failure anywhere
    before leaves the checkpoints for a rerun to resume from."""
    partial = out_dir / "partial"
    scores = partial / "pool_uncertainty.jsonl"
    if scores.is_file():
        scores.replace(out_dir / "pool_uncertainty.jsonl")
    shutil.rmtree(partial)


@task(name="embed-eval-pool-prompts", persist_result=False, cache_policy=NO_CACHE)
def embed_pool_prompts(pairs: list[ev.PoolPair], splits: Splits, encoder: str | None
                       ) -> np.ndarray:
    """Prompt embeddings ``[len(pairs), d]`` float32 of the items some seed uses (selection
    pool or test set), zeros elsewhere: the pool may be far larger than a run."""
    from sift_ops.embedding import TextEncoder

    used = sorted({i for sel, test in splits.values() for i in [*sel, *test]})
    used_emb = TextEncoder(encoder).encode([pairs[i].prompt for i in used])
    emb = np.zeros((len(pairs), used_emb.shape[1]), dtype=np.float32)
    emb[used] = used_emb
    return emb


@task(name="score-eval-pool-uncertainty", persist_result=False, cache_policy=NO_CACHE)
def score_pool_uncertainty(lm: str | None, cache_dir: str, prompts: list[str], *,
                           max_new_tokens: int, gen_batch_size: int, threads: int | None
                           ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Uncertainty of the base LM's greedy answer to each of ``prompts``.

    Returns ``[len(prompts)]`` arrays keyed by :data:`sift_ops.generation.SCORE_KEYS`
    (the five uncertainty metrics, NaN for an empty answer; ``gen_tokens``,
    ``prompt_tokens``) and stats (items, seconds, items/s). Prompts go through
    :func:`sift_ops.generation.greedy_scores` in length-sorted chunks so a progress bar
    can follow; the scores do not depend on the chunking beyond float rounding.
    """
    import torch

    from sift_ops.causal_lm import load_causal_lm
    from sift_ops.generation import greedy_scores
    from tasks.runtime.models import resolve_lm_path

    logger = get_run_logger()
    if threads:
        torch.set_num_threads(threads)
    model, tok = load_causal_lm(resolve_lm_path(lm, cache_dir))
    n = len(prompts)
    out = {k: np.full(n, np.nan) for k in SCORE_KEYS}
    order = np.argsort([len(p) for p in prompts], kind="stable")
    step = 4 * gen_batch_size
    t0 = time.perf_counter()
    with progress_bar("LM uncertainty", "item", n) as bar:
        for s in range(0, n, step):
            rows = order[s:s + step]
            part = greedy_scores(model, tok, [prompts[i] for i in rows],
                                 max_new_tokens=max_new_tokens, batch_size=gen_batch_size)
            for k in SCORE_KEYS:
                out[k][rows] = part[k]
            bar.update(len(rows))
    secs = time.perf_counter() - t0
    stats = {"items": n, "seconds": round(secs, 1), "items_per_s": n / secs if secs else 0.0,
             "max_new_tokens": max_new_tokens,
             "mean_gen_tokens": float(np.mean(out["gen_tokens"])) if n else 0.0}
    logger.info("LM uncertainty of %d pool prompts in %.1f s (%.2f items/s, max %d new "
                "tokens, %.1f on average)", n, secs, stats["items_per_s"], max_new_tokens,
                stats["mean_gen_tokens"])
    return out, stats




def pool_uncertainty(pairs: list[ev.PoolPair], splits: Splits, partial: Path, *,
                     strategies: list[str], lm: str | None, cache_dir: str,
                     max_new_tokens: int, gen_batch_size: int, threads: int | None
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """LM uncertainty, once per run, of every item some seed may select (test items are
    never ranked): ``[len(pairs)]`` arrays keyed by :data:`SCORE_KEYS`, NaN where not
    scored, and the scoring stats (or ``reused``: the checkpoint of an earlier attempt
    of the run in ``partial`` was read instead). Empty when no strategy needs the LM."""
    if not needs_lm(strategies):
        return {}, {}
    selectable = sorted({i for sel, _ in splits.values() for i in sel})
    scores_file = partial / "pool_uncertainty.jsonl"
    scorer = {"lm": lm, "max_new_tokens": max_new_tokens, "gen_batch_size": gen_batch_size}
    part = _read_scores(scores_file, [pairs[i].item_id for i in selectable], scorer)
    if part is None:
        part, lm_stats = score_pool_uncertainty(
            lm, cache_dir, [pairs[i].prompt for i in selectable],
            max_new_tokens=max_new_tokens, gen_batch_size=gen_batch_size, threads=threads)
        _write_scores(scores_file, [pairs[i] for i in selectable], part, scorer)
    else:
        lm_stats = {"items": len(selectable), "reused": str(scores_file)}
        get_run_logger().info("LM uncertainty of %d pool prompts reused from %s (an "
                              "earlier attempt of this run)", len(selectable), scores_file)
    scores: dict[str, np.ndarray] = {}
    for k in SCORE_KEYS:
        scores[k] = np.full(len(pairs), np.nan)
        scores[k][selectable] = part[k]
    return scores, lm_stats


@task(name="rank-pool", persist_result=False, cache_policy=NO_CACHE)
def rank(strategy: str, emb: np.ndarray, targets: np.ndarray, n: int, seed: int,
         lam: float, scores: dict[str, np.ndarray] | None) -> list[int]:
    return ev.rank_pool(strategy, emb, targets, n, seed=seed, lam=lam, scores=scores)




def plan_sets(splits: Splits, emb: np.ndarray, scores: dict[str, np.ndarray], *,
              strategies: list[str], budgets: list[float], n_select: int, lam: float
              ) -> dict[int, dict[str, Any]]:
    """What :func:`finetune_on_budgets` trains: per seed, ``test`` (pool indices) and
    ``sets`` {(strategy, budget): pool indices in the strategy's order}, the first
    ``ceil(budget * n_select)`` items of its ranking of the seed's selection pool. Only
    random has a 1.0 set: at 100 % every strategy has the whole pool, trained the same way.
    ``emb`` ``[n_pool, d]``; ``scores`` as :func:`pool_uncertainty` (empty: no LM)."""
    plan: dict[int, dict[str, Any]] = {}
    sizes = ev.budget_sizes(n_select, budgets)
    for seed, (sel_idx, test_idx) in splits.items():
        seed_scores = {k: scores[k][sel_idx] for k in UNCERTAINTY_KEYS} if scores else None
        sets: dict[tuple[str, float], list[int]] = {}
        for strategy in strategies:
            order = rank(strategy, emb[sel_idx], emb[test_idx], n_select, seed, lam,
                         seed_scores)
            for frac, size in zip(budgets, sizes, strict=True):
                if frac == 1.0 and strategy != "random":
                    continue  # identical to random at 100 % (same set, same order)
                sets[(strategy, frac)] = [sel_idx[j] for j in order[:size]]
        plan[seed] = {"test": test_idx, "sets": sets}
    return plan


def _result_key(seed: int, test: list[str], train: list[str], setup: dict[str, Any]) -> str:
    """Content key of one fine-tune + test loss: the seed, the test and training item ids
    (order-free) and everything else that shapes the result (``setup``)."""
    blob = json.dumps([seed, sorted(test), sorted(train), setup], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_results(path: Path | None) -> dict[str, dict[str, Any]]:
    """Results of earlier attempts from ``path`` (JSON lines with ``key``); a torn last
    line (the process died mid-write) is ignored."""
    out: dict[str, dict[str, Any]] = {}
    if path is None or not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[r["key"]] = r
    return out


@task(name="finetune-on-budgets", persist_result=False, cache_policy=NO_CACHE)
def finetune_on_budgets(lm: str | None, cache_dir: str, pairs: list[ev.PoolPair],
                        plan: dict[int, dict[str, Any]], *, lr: float, epochs: int,
                        batch_size: int, max_prompt_tokens: int, max_response_tokens: int,
                        threads: int | None, results_file: Path | None = None
                        ) -> list[dict[str, Any]]:
    """Run every (seed, strategy, budget) fine-tune + test loss. ``plan[seed]`` holds
    ``test`` (pool indices) and ``sets`` {(strategy, fraction): pool indices}.

    Training does not depend on which strategy chose a set (canonical order, seed-only
    shuffle, weights restored in between), so each result is keyed by its content
    (:func:`_result_key`) and computed once: a set two strategies both chose, or one a
    killed earlier attempt of the run already finished (read from and appended to
    ``results_file``, one JSON line per result), is reused; such rows have ``reused``
    'same set' or 'earlier attempt' (else None). ``seconds`` is the time of the
    computation, wherever it happened."""
    import torch

    from sift_ops import finetune as ft
    from sift_ops.causal_lm import load_causal_lm
    from tasks.runtime.models import resolve_lm_path

    if threads:
        torch.set_num_threads(threads)
    model, tok = load_causal_lm(resolve_lm_path(lm, cache_dir))
    base = ft.snapshot(model)
    pad = tok.pad_token_id
    setup = {"lm": lm, "lr": lr, "epochs": epochs, "batch_size": batch_size,
             "max_prompt_tokens": max_prompt_tokens, "max_response_tokens": max_response_tokens}
    results = _read_results(results_file)
    earlier = set(results)
    enc = {i: ft.encode_pair(tok, pairs[i].prompt, pairs[i].response,
                             max_prompt_tokens=max_prompt_tokens,
                             max_response_tokens=max_response_tokens)
           for p in plan.values() for i in [*p["test"], *{j for s in p["sets"].values()
                                                           for j in s}]}
    n_train = sum(len(s) for p in plan.values() for s in p["sets"].values()) * epochs
    n_eval = sum((len(p["sets"]) + 1) * len(p["test"]) for p in plan.values())
    rows: list[dict[str, Any]] = []
    checkpoint = (open(results_file, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
                  if results_file else nullcontext())
    with progress_bar("sft + test loss", "example", n_train + n_eval) as bar, checkpoint as out:
        for seed, p in plan.items():
            test_ids = [pairs[i].item_id for i in p["test"]]
            test = [enc[i] for i in p["test"]]
            for (strategy, frac), items in [(("base", 0.0), []), *p["sets"].items()]:
                key = _result_key(seed, test_ids, [pairs[i].item_id for i in items], setup)
                row = {"seed": seed, "strategy": strategy, "budget": frac,
                       "items": len(items)}
                if key in results:
                    r = results[key]
                    rows.append({**row, **{k: r[k] for k in ("steps", "test_loss",
                                                             "test_tokens", "seconds")},
                                 "reused": "earlier attempt" if key in earlier
                                 else "same set"})
                    bar.update(len(items) * epochs + len(test))
                    continue
                t0 = time.perf_counter()
                # canonical order, then a seed-only shuffle inside sft_train: the same set
                # of items trains the same way whichever strategy chose it
                train = [enc[i] for i in sorted(items)]
                gen = torch.Generator().manual_seed(1000 + seed)
                try:
                    losses = ft.sft_train(model, train, pad, lr=lr, epochs=epochs,
                                          batch_size=batch_size, generator=gen,
                                          progress=bar.update)
                    nll, count = ft.pairs_nll(model, test, pad, progress=bar.update)
                finally:
                    ft.restore(model, base)
                res = {"key": key, "steps": len(losses), "test_loss": nll / count,
                       "test_tokens": count, "seconds": round(time.perf_counter() - t0, 2)}
                results[key] = res
                if out is not None:
                    out.write(json.dumps(res) + "\n")
                    out.flush()
                rows.append({**row, **{k: v for k, v in res.items() if k != "key"},
                             "reused": None})
                bar.set_postfix({"seed": seed, strategy: f"{frac:g}:{nll / count:.3f}"})
        if not ft.same_weights(model, base):
            raise RuntimeError("model weights differ from the base after the evaluation")
    return rows


def reach_budget(curves: dict[str, dict[float, list[float]]], reference: float
                 ) -> dict[str, float | None]:
    """Smallest budget whose mean loss over seeds is <= ``reference`` (None: never)."""
    out: dict[str, float | None] = {}
    for s, by_b in curves.items():
        hit = [b for b in sorted(by_b) if float(np.mean(by_b[b])) <= reference + 1e-12]
        out[s] = hit[0] if hit else None
    return out


def _read_scores(path: Path, item_ids: list[str], scorer: dict[str, Any]
                 ) -> dict[str, np.ndarray] | None:
    """Scores of ``item_ids`` (in that order) from an earlier attempt's ``path``, or None
    unless every item is there, scored with the same ``scorer`` settings."""
    if not path.is_file():
        return None
    by_id: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            return None
        by_id[r["item_id"]] = r
    if any(i not in by_id or by_id[i].get("scorer") != scorer for i in item_ids):
        return None
    return {k: np.array([by_id[i][k] for i in item_ids], dtype=np.float64)
            for k in SCORE_KEYS}


def _write_scores(path: Path, pairs: list[ev.PoolPair], scores: dict[str, np.ndarray],
                  scorer: dict[str, Any]) -> None:
    """One JSON line per scored item (item_id, source, :data:`SCORE_KEYS`, scorer
    settings), written atomically (never half a file)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for j, p in enumerate(pairs):
            fh.write(json.dumps({"item_id": p.item_id, "source": p.source,
                                 **{k: float(scores[k][j]) for k in SCORE_KEYS},
                                 "scorer": scorer}) + "\n")


def _panels(strategies: list[str]) -> dict[str, list[str]] | None:
    """Plot panels: random + diversity strategies | random + uncertainty strategies
    (None, one panel, when only one kind was run)."""
    lm = [s for s in strategies if s in LM_STRATEGIES]
    other = [s for s in strategies if s not in LM_STRATEGIES and s != "random"]
    if not lm or not other:
        return None
    return {"diversity (prompt embeddings)": ["random", *other],
            "LM uncertainty of the base model's answer": ["random", *lm]}



def store_results(db_file: Path, run_id: str, rows: list[dict[str, Any]],
                  plan: dict[int, dict[str, Any]], scores: dict[str, np.ndarray], *,
                  strategies: list[str], budgets: list[float]
                  ) -> tuple[dict[str, dict[float, list[float]]], dict[str, Any]]:
    """Write a run's ``evaluations`` rows (replacing its earlier ones) from the rows of
    :func:`finetune_on_budgets`: every strategy's 100 % point is the shared random-at-100 %
    run, and with LM scores each row also gets ``selected_mean_entropy`` (do the
    uncertainty strategies pick what the LM is unsure about?).

    Returns the test losses ``{strategy: {budget: [loss per seed]}}`` (for the plot) and
    the summary: table, reference_loss (random at 100 %), base_loss, reached (budget at
    which each strategy first reaches the reference, None: never), finetune_seconds,
    results_computed and results_reused.
    """
    rows = list(rows)
    for r in [r for r in rows if r["strategy"] == "random" and r["budget"] == 1.0]:
        rows += [{**r, "strategy": s} for s in strategies if s != "random"]
    metrics = [("test_loss", "test_loss"), ("train_items", "items"), ("train_steps", "steps")]
    if scores:
        for r in rows:
            if r["strategy"] != "base":
                key = ("random" if r["budget"] == 1.0 else r["strategy"], r["budget"])
                r["selected_mean_entropy"] = float(np.nanmean(
                    scores["mean_entropy"][plan[r["seed"]]["sets"][key]]))
        metrics.append(("selected_mean_entropy", "selected_mean_entropy"))
    records = [{"strategy": r["strategy"], "budget": r["budget"], "seed": r["seed"],
                "metric": m, "value": r[v]}
               for r in rows for m, v in metrics if v in r]
    db.replace_run_rows(db_file, "evaluations", run_id,
                        ev.evaluation_rows(run_id, "budget", records))
    curves: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        if r["strategy"] != "base":
            curves.setdefault(r["strategy"], {}).setdefault(r["budget"], []).append(
                r["test_loss"])
    reference = float(np.mean(curves["random"][1.0]))
    base_loss = float(np.mean([r["test_loss"] for r in rows if r["strategy"] == "base"]))
    reached = reach_budget(curves, reference)
    table = []
    for s, by_b in curves.items():
        row: dict[str, Any] = {"strategy": s}
        for b in budgets:
            m, sd = ev.mean_std(by_b[b])
            row[f"{b:.0%}"] = f"{m:.4f} +- {sd:.4f}"
        row["reaches random@100%"] = f"{reached[s]:.0%}" if reached[s] else "never"
        table.append(row)
    # fine-tuning seconds per strategy: its own computations (not the sets another
    # strategy chose first, not the shared 100 % run), in this or an earlier attempt
    own = [r for r in rows if r["reused"] != "same set"
           and not (r["strategy"] != "random" and r["budget"] == 1.0)]
    seconds = {s: round(sum(r["seconds"] for r in own if r["strategy"] == s), 1)
               for s in ["base", *strategies]}
    return curves, {"table": table, "reference_loss": reference, "base_loss": base_loss,
                    "reached": reached, "finetune_seconds": seconds,
                    "results_computed": sum(r["reused"] is None for r in rows),
                    "results_reused": {k: sum(r["reused"] == k for r in rows)
                                       for k in ("same set", "earlier attempt")}}


def report(run_id: str, out_dir: Path, curves: dict[str, dict[float, list[float]]],
           summary: Mapping[str, Any], lm_stats: Mapping[str, Any],
           params: Mapping[str, Any]) -> Path:
    """The run's plot (``out_dir/budget_loss.png``, loss vs budget per strategy, one panel
    per kind of strategy when both ran) and Markdown artifact; ``summary`` as
    :func:`store_results`, ``params`` the run's key (flows.params.EvalBudgetParams)."""
    p = params
    reference, base_loss = summary["reference_loss"], summary["base_loss"]
    plot = budget_curves(
        curves, out_dir / "budget_loss.png",
        f"Label efficiency: pool {p['n_select']}, test {p['n_test']}, {len(p['seeds'])} "
        f"seeds, lr={p['lr']:g}, {p['epochs']} epoch(s)", "test loss (nats per response token)",
        reference=reference, base=base_loss, panels=_panels(p["strategies"]))
    get_run_logger().info("eval-budget %s: reference %.4f, base %.4f, reached %s; plot %s",
                          run_id, reference, base_loss, summary["reached"], plot)
    if "seconds" in lm_stats:
        lm_line = (f"LM uncertainty of {lm_stats['items']} selection-pool prompts (greedy "
                   f"answers of at most {p['max_new_tokens']} tokens) in "
                   f"{lm_stats['seconds']} s, {lm_stats['items_per_s']:.2f} items/s.\n\n")
    elif lm_stats:  # resumed: the scores came from an earlier attempt's checkpoint
        lm_line = (f"LM uncertainty of {lm_stats['items']} selection-pool prompts reused "
                   "from an earlier attempt of this run.\n\n")
    else:
        lm_line = ""
    artifacts.markdown(
        "eval-budget",
        f"# Label efficiency `{run_id}`\n\nSelection pool {p['n_select']} items, test "
        f"{p['n_test']} items, seeds {p['seeds']}; Adam lr={p['lr']}, {p['epochs']} "
        f"epoch(s), batch {p['batch_size']}.\n\n" + lm_line +
        f"Test loss (nats per response token, mean +- std over seeds). Base model "
        f"{base_loss:.4f}; random at 100 % {reference:.4f}.\n\n" +
        artifacts.md_table(summary["table"]) + f"\n\nPlot: `{plot}`\n\n```sql\nSELECT "
        f"strategy, budget, avg(value), stddev_samp(value) FROM evaluations WHERE run_id = "
        f"'{run_id}' AND metric = 'test_loss' GROUP BY ALL ORDER BY strategy, budget;\n```",
        description=f"eval-budget run {run_id}",
    )
    return plot
