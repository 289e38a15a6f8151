"""Flow `eval-budget`: label efficiency of pool strategies vs random sampling.

For each seed the sample's instruction pool is split at random into a selection pool
(``n_select`` items) and a test set (``n_test`` items). Each strategy orders the selection
pool once (from prompt embeddings only: no labels are looked at); a budget of ``f`` keeps
the first ``ceil(f * n_select)`` items. Those items are "annotated" by joining the
sample's reference responses (pool_references.jsonl), the LM is fine-tuned on them (Adam,
``epochs`` passes, responses only in the loss), and the mean loss in nats per response
token on the test set is measured; the weights are restored before the next
(strategy, budget). At 100 % every strategy has the whole pool; training then sees the
items in a seed-fixed order that does not depend on the strategy, so all strategies share
one 100 % run, "random at 100 %", the reference every strategy is measured against.

Output: ``evaluations`` rows (kind 'budget', budget = fraction of the pool, metric
'test_loss' per seed; strategy 'base' at budget 0 is the model before fine-tuning), a PNG
of loss vs budget, and a Markdown artifact that names the budget at which each strategy
first reaches random-at-100 %'s mean loss.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from tasks import artifacts, db
from tasks import evaluate as ev
from tasks.eval_plots import budget_curves
from tasks.runs import make_run_id, tracked_run
from tasks.workspace import db_path, reports_dir, workspace_root

BUDGET_STRATEGIES = ("random", "k_center", "facility_location", "sift")
DEFAULTS = {"n_select": 120, "n_test": 40, "budgets": (0.05, 0.1, 0.25, 0.5, 1.0),
            "seeds": (0, 1, 2), "lr": 1e-4, "epochs": 1, "batch_size": 8, "lam": 0.1,
            "max_prompt_tokens": 128, "max_response_tokens": 64}


@task(name="embed-pool-prompts", persist_result=False, cache_policy=NO_CACHE)
def embed_prompts(prompts: list[str], encoder: str | None) -> np.ndarray:
    from sift_ops.embedding import TextEncoder

    return TextEncoder(encoder).encode(prompts)


@task(name="rank-pool", persist_result=False, cache_policy=NO_CACHE)
def rank(strategy: str, emb: np.ndarray, targets: np.ndarray, n: int, seed: int,
         lam: float) -> list[int]:
    return ev.rank_pool(strategy, emb, targets, n, seed=seed, lam=lam)


@task(name="finetune-on-budgets", persist_result=False, cache_policy=NO_CACHE)
def finetune_on_budgets(lm: str | None, cache_dir: str, pairs: list[ev.PoolPair],
                        plan: dict[int, dict[str, Any]], *, lr: float, epochs: int,
                        batch_size: int, max_prompt_tokens: int, max_response_tokens: int,
                        threads: int | None) -> list[dict[str, Any]]:
    """Run every (seed, strategy, budget) fine-tune + test loss. ``plan[seed]`` holds
    ``test`` (pool indices) and ``sets`` {(strategy, fraction): pool indices}."""
    import torch

    from sift_ops import finetune as ft
    from sift_ops.causal_lm import load_causal_lm

    if threads:
        torch.set_num_threads(threads)
    model, tok = load_causal_lm(lm, cache_dir=cache_dir)
    base = ft.snapshot(model)
    pad = tok.pad_token_id
    enc = {i: ft.encode_pair(tok, pairs[i].prompt, pairs[i].response,
                             max_prompt_tokens=max_prompt_tokens,
                             max_response_tokens=max_response_tokens)
           for p in plan.values() for i in [*p["test"], *{j for s in p["sets"].values()
                                                           for j in s}]}
    n_train = sum(len(s) for p in plan.values() for s in p["sets"].values()) * epochs
    n_eval = sum((len(p["sets"]) + 1) * len(p["test"]) for p in plan.values())
    bar = tqdm(total=n_train + n_eval, desc="sft + test loss", unit="example",
               file=sys.stderr, dynamic_ncols=True)
    rows: list[dict[str, Any]] = []
    try:
        for seed, p in plan.items():
            test = [enc[i] for i in p["test"]]
            nll, count = ft.pairs_nll(model, test, pad, progress=bar.update)
            rows.append({"seed": seed, "strategy": "base", "budget": 0.0, "items": 0,
                         "steps": 0, "test_loss": nll / count, "test_tokens": count,
                         "seconds": 0.0})
            for (strategy, frac), items in p["sets"].items():
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
                rows.append({"seed": seed, "strategy": strategy, "budget": frac,
                             "items": len(items), "steps": len(losses),
                             "test_loss": nll / count, "test_tokens": count,
                             "seconds": round(time.perf_counter() - t0, 2)})
                bar.set_postfix({"seed": seed, strategy: f"{frac:g}:{nll / count:.3f}"})
        if not ft.same_weights(model, base):
            raise RuntimeError("model weights differ from the base after the evaluation")
    finally:
        bar.close()
    return rows


def reach_budget(curves: dict[str, dict[float, list[float]]], reference: float
                 ) -> dict[str, float | None]:
    """Smallest budget whose mean loss over seeds is <= ``reference`` (None: never)."""
    out: dict[str, float | None] = {}
    for s, by_b in curves.items():
        hit = [b for b in sorted(by_b) if float(np.mean(by_b[b])) <= reference + 1e-12]
        out[s] = hit[0] if hit else None
    return out


@flow(name="eval-budget", log_prints=True)
def eval_budget_flow(
    workspace: str | None = None,
    sample: str | None = None,
    n_select: int = DEFAULTS["n_select"],
    n_test: int = DEFAULTS["n_test"],
    budgets: list[float] | None = None,
    strategies: list[str] | None = None,
    seeds: list[int] | None = None,
    lr: float = DEFAULTS["lr"],
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    lam: float = DEFAULTS["lam"],
    lm: str | None = None,
    encoder: str | None = None,
    max_prompt_tokens: int = DEFAULTS["max_prompt_tokens"],
    max_response_tokens: int = DEFAULTS["max_response_tokens"],
    threads: int | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Label-efficiency evaluation on the sample's pool (see the module docstring)."""
    logger = get_run_logger()
    budgets = sorted(float(b) for b in (budgets or DEFAULTS["budgets"]))
    if budgets[-1] != 1.0:
        budgets.append(1.0)  # the reference, random at 100 %, is always measured
    if budgets[0] <= 0 or budgets[-1] > 1:
        raise ValueError(f"budgets are fractions in (0, 1] (got {budgets})")
    strategies = list(strategies or BUDGET_STRATEGIES)
    if "random" not in strategies:
        strategies.insert(0, "random")
    seeds = list(seeds if seeds is not None else DEFAULTS["seeds"])
    if n_select < 2 or n_test < 1 or lr <= 0 or epochs < 1 or not seeds:
        raise ValueError("need n_select >= 2, n_test >= 1, lr > 0, epochs >= 1, some seeds")
    ws = str(workspace_root(workspace))
    sample_dir = Path(sample or Path(ws) / "sample").expanduser().resolve()
    pool_file, refs_file = sample_dir / "pool.jsonl", sample_dir / "pool_references.jsonl"
    if not pool_file.is_file() or not refs_file.is_file():
        raise FileNotFoundError(f"{sample_dir} lacks pool.jsonl / pool_references.jsonl: "
                                "pass --sample, a folder `sift-curate sample` wrote")
    params = {"sample": str(sample_dir), "n_select": n_select, "n_test": n_test,
              "budgets": budgets, "strategies": strategies, "seeds": seeds, "lr": lr,
              "epochs": epochs, "batch_size": batch_size, "lam": lam, "lm": lm,
              "encoder": encoder, "max_prompt_tokens": max_prompt_tokens,
              "max_response_tokens": max_response_tokens}
    rid = make_run_id("eval-budget", params, run_id)
    dbf = db_path(ws)
    t_start = time.perf_counter()
    with tracked_run(dbf, rid, "eval-budget", params) as rec:
        pairs = ev.load_pool_pairs(pool_file, refs_file)
        splits = {seed: ev.split_pool(pairs, n_select, n_test, seed) for seed in seeds}
        # embed only the items some seed uses (the pool may be far larger than a run)
        used = sorted({i for sel, test in splits.values() for i in [*sel, *test]})
        used_emb = embed_prompts([pairs[i].prompt for i in used], encoder)
        emb = np.zeros((len(pairs), used_emb.shape[1]), dtype=np.float32)
        emb[used] = used_emb
        plan: dict[int, dict[str, Any]] = {}
        for seed in seeds:
            sel_idx, test_idx = splits[seed]
            sizes = ev.budget_sizes(n_select, budgets)
            sets: dict[tuple[str, float], list[int]] = {}
            for strategy in strategies:
                order = rank(strategy, emb[sel_idx], emb[test_idx], n_select, seed, lam)
                for frac, size in zip(budgets, sizes, strict=True):
                    if frac == 1.0 and strategy != "random":
                        continue  # identical to random at 100 % (same set, same order)
                    sets[(strategy, frac)] = [sel_idx[j] for j in order[:size]]
            plan[seed] = {"test": test_idx, "sets": sets}
        rows = finetune_on_budgets(lm, str(Path(ws) / "models"), pairs, plan, lr=lr,
                                   epochs=epochs, batch_size=batch_size,
                                   max_prompt_tokens=max_prompt_tokens,
                                   max_response_tokens=max_response_tokens, threads=threads)
        # every strategy's 100 % point is the shared random-at-100 % run
        for r in [r for r in rows if r["strategy"] == "random" and r["budget"] == 1.0]:
            rows += [{**r, "strategy": s} for s in strategies if s != "random"]
        records = [{"strategy": r["strategy"], "budget": r["budget"], "seed": r["seed"],
                    "metric": m, "value": r[v]}
                   for r in rows for m, v in (("test_loss", "test_loss"),
                                              ("train_items", "items"),
                                              ("train_steps", "steps"))]
        db.replace_run_rows(dbf, "evaluations", rid, ev.evaluation_rows(rid, "budget",
                                                                        records))
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
        rec.summary = {"table": table, "reference_loss": reference, "base_loss": base_loss,
                       "reached": reached,
                       "wall_seconds": round(time.perf_counter() - t_start, 1)}
    out_dir = reports_dir(ws, rid)
    plot = budget_curves(
        curves, out_dir / "budget_loss.png",
        f"Label efficiency: pool {n_select}, test {n_test}, {len(seeds)} seeds, "
        f"lr={lr:g}, {epochs} epoch(s)", "test loss (nats per response token)",
        reference=reference, base=base_loss)
    logger.info("eval-budget %s: reference %.4f, base %.4f, reached %s; plot %s", rid,
                reference, base_loss, reached, plot)
    artifacts.markdown(
        "eval-budget",
        f"# Label efficiency `{rid}`\n\nSelection pool {n_select} items, test {n_test} "
        f"items, seeds {seeds}; Adam lr={lr}, {epochs} epoch(s), batch {batch_size}.\n\n"
        f"Test loss (nats per response token, mean +- std over seeds). Base model "
        f"{base_loss:.4f}; random at 100 % {reference:.4f}.\n\n" +
        artifacts.md_table(table) + f"\n\nPlot: `{plot}`\n\n```sql\nSELECT strategy, budget, "
        f"avg(value), stddev_samp(value) FROM evaluations WHERE run_id = '{rid}' AND "
        f"metric = 'test_loss' GROUP BY ALL ORDER BY strategy, budget;\n```",
        description=f"eval-budget run {rid}",
    )
    return {"run_id": rid, "plot": str(plot), **rec.summary}
