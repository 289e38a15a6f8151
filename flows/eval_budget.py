"""Flow `eval-budget`: label efficiency of pool strategies vs random sampling.

For each seed the sample's instruction pool is split at random into a selection pool
(``n_select`` items) and a test set (``n_test`` items). Each strategy of
:mod:`sift_ops.pool_strategies` orders the selection pool once, without looking at any
label: the diversity strategies from the prompts' embeddings, the uncertainty strategies
(opt-in, see :class:`flows.params.EvalBudgetParams`) from the base LM's greedy answer to
every prompt of the selection pools, scored once per run with
:func:`sift_ops.generation.greedy_scores` (the scorer of the `rank` flow's LM stage). A
budget of ``f`` keeps the first ``ceil(f * n_select)`` items. Those items are "annotated"
by joining the sample's reference responses (pool_references.jsonl), the LM is fine-tuned
on them (Adam, ``epochs`` passes, responses only in the loss), and the mean loss in nats
per response token on the test set is measured; the weights are restored before the next
(strategy, budget). Training sees the chosen items in a seed-fixed order that does not
depend on the strategy, so two strategies that choose the same set at a budget get the
same result, which is computed once. At 100 % every strategy has the whole pool: all share
one 100 % run, "random at 100 %", the reference every strategy is measured against.

A run killed midway resumes when started again with the same parameters (or run id):
the LM scores and every finished fine-tune are checkpointed in
``reports/<run_id>/partial/`` and reused; that folder is removed when the run completes.

Output: ``evaluations`` rows (kind 'budget', budget = fraction of the pool, metrics
'test_loss', 'train_items', 'train_steps' per seed, and 'selected_mean_entropy' when the
pool was scored; strategy 'base' at budget 0 is the model before fine-tuning), a PNG of
loss vs budget, ``reports/<run_id>/pool_uncertainty.jsonl`` (the per-item scores, when
computed), and a Markdown artifact that names the budget at which each strategy first
reaches random-at-100 %'s mean loss.

The tasks are in tasks/evaluation/budget.py; the parameters are
:class:`flows.params.EvalBudgetParams`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows.params import EvalBudgetParams
from tasks.evaluation import budget
from tasks.evaluation import evaluate as ev
from tasks.runtime.workspace import db_path, reports_dir, workspace_root
from tasks.storage.runs import make_run_id, tracked_run

_D = EvalBudgetParams.default


@flow(name="eval-budget", log_prints=True)
def eval_budget_flow(
    workspace: str | None = None,
    sample: str | None = _D("sample"),
    n_select: int = _D("n_select"),
    n_test: int = _D("n_test"),
    budgets: list[float] | None = None,
    strategies: list[str] | None = None,
    seeds: list[int] | None = None,
    lr: float = _D("lr"),
    epochs: int = _D("epochs"),
    batch_size: int = _D("batch_size"),
    lam: float = _D("lam"),
    lm: str | None = _D("lm"),
    encoder: str | None = _D("encoder"),
    max_prompt_tokens: int = _D("max_prompt_tokens"),
    max_response_tokens: int = _D("max_response_tokens"),
    max_new_tokens: int = _D("max_new_tokens"),
    gen_batch_size: int = _D("gen_batch_size"),
    threads: int | None = _D("threads"),
    run_id: str | None = None,
) -> dict[str, Any]:
    """Label-efficiency evaluation on the sample's pool (see the module docstring).

    ``max_new_tokens`` / ``gen_batch_size`` only matter when a strategy needs LM
    uncertainty scores (the greedy answer's length cap in tokens, prompts per
    ``generate`` call). The parameters are :class:`flows.params.EvalBudgetParams` (a list
    left None: its default).
    """
    p = EvalBudgetParams.of(locals())
    ws = str(workspace_root(workspace))
    p = p.in_workspace(ws)
    pool_file, refs_file = budget.pool_files(p.sample)
    rid = make_run_id("eval-budget", p.run_key(), run_id)
    dbf, models, out_dir = db_path(ws), str(Path(ws) / "models"), reports_dir(ws, rid)
    partial = budget.checkpoints(out_dir)
    t_start = time.perf_counter()
    with tracked_run(dbf, rid, "eval-budget", p.run_key()) as rec:
        pairs = ev.load_pool_pairs(pool_file, refs_file)
        splits = {seed: ev.split_pool(pairs, p.n_select, p.n_test, seed) for seed in p.seeds}
        emb = budget.embed_pool_prompts(pairs, splits, p.encoder)
        scores, lm_stats = budget.pool_uncertainty(
            pairs, splits, partial, strategies=p.strategies, lm=p.lm, cache_dir=models,
            max_new_tokens=p.max_new_tokens, gen_batch_size=p.gen_batch_size,
            threads=p.threads)
        plan = budget.plan_sets(splits, emb, scores, strategies=p.strategies,
                                budgets=p.budgets, n_select=p.n_select, lam=p.lam)
        rows = budget.finetune_on_budgets(
            p.lm, models, pairs, plan, lr=p.lr, epochs=p.epochs, batch_size=p.batch_size,
            max_prompt_tokens=p.max_prompt_tokens, max_response_tokens=p.max_response_tokens,
            threads=p.threads, results_file=partial / "finetune_results.jsonl")
        curves, summary = budget.store_results(dbf, rid, rows, plan, scores,
                                               strategies=p.strategies, budgets=p.budgets)
        rec.summary = {**summary, "lm_scoring": lm_stats,
                       "wall_seconds": round(time.perf_counter() - t_start, 1)}
    plot = budget.report(rid, out_dir, curves, summary, lm_stats, p.run_key())
    budget.clear_checkpoints(out_dir)
    return {"run_id": rid, "plot": str(plot), **rec.summary}
