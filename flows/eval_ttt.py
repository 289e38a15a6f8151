"""Flow `eval-ttt`: does test-time fine-tuning on SIFT-selected data help the LM?

For each seed, ``n_docs`` held-out documents (half news, half code, never in the corpus)
are cut into a prompt and a continuation. Each prompt is embedded with the corpus's
encoder, ``k`` candidate chunks are retrieved from the faiss index and ``n`` are chosen
with every strategy (sift, nn, nn-f, random, adaptive-sift: tasks/selection/select.py;
Adaptive SIFT may choose fewer). The causal LM takes one Adam step per chosen chunk, in
pick order, then the continuation's bits per byte is measured, and the original weights
are restored before the next (prompt, strategy). The base model without fine-tuning is
scored too. When adaptive-sift runs, every strategy is also scored after as many steps as
Adaptive SIFT took for that prompt (equal compute).

Output: ``evaluations`` rows (kind 'ttt', budget = n chunks, metric 'bpb' per seed = mean
over that seed's documents, plus 'bpb_minus_base', 'distinct_chunks', 'posterior_variance',
'steps' (Adam steps actually taken per prompt), 'dup_exact' / 'dup_near' (share of picks
repeating an earlier pick's text exactly / as a near copy), 'distinct_near', with
adaptive-sift 'bpb_equal_compute_minus_base' and, when nn ran, 'overlap_nn': the share of a
strategy's chunks nn picked too), per-document detail in
``reports/<run_id>/ttt_documents.jsonl``, a PNG, and a Markdown artifact.

The tasks are in tasks/evaluation/ttt.py; the parameters are
:class:`flows.params.EvalTTTParams`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows.params import EvalTTTParams
from tasks.evaluation import ttt
from tasks.runtime.workspace import db_path, reports_dir, workspace_root
from tasks.storage.runs import make_run_id, tracked_run

_D = EvalTTTParams.default


@flow(name="eval-ttt", log_prints=True)
def eval_ttt_flow(
    name: str = _D("name"),
    workspace: str | None = None,
    sample: str | None = _D("sample"),
    n_docs: int = _D("n_docs"),
    n: int = _D("n"),
    k: int = _D("k"),
    lam: float = _D("lam"),
    lr: float = _D("lr"),
    seeds: list[int] | None = None,
    strategies: list[str] | None = None,
    split: str = _D("split"),
    lm: str | None = _D("lm"),
    max_train_tokens: int = _D("max_train_tokens"),
    prompt_chars: int = _D("prompt_chars"),
    continuation_chars: int = _D("continuation_chars"),
    threads: int | None = _D("threads"),
    run_id: str | None = None,
    dup_threshold: float = _D("dup_threshold"),
    alpha: float = _D("alpha"),
) -> dict[str, Any]:
    """Test-time fine-tuning evaluation on corpus ``name`` (embedded and indexed).

    ``sample`` is the folder `sift-curate sample` wrote (default <workspace>/sample); its
    ``pile/`` must be the corpus's input, since held-out documents are checked against it.
    ``dup_threshold``: NN-F's filter; ``alpha``: Adaptive SIFT's compute-performance ratio.
    The parameters are :class:`flows.params.EvalTTTParams` (a list left None: its default).
    """
    p = EvalTTTParams.of(locals())
    ws = str(workspace_root(workspace))
    p = p.in_workspace(ws)
    pile_dir = ttt.check_inputs(ws, p.name, p.sample)
    rid = make_run_id("eval-ttt", p.run_key(), run_id)
    dbf, out_dir = db_path(ws), reports_dir(ws, rid)
    t_start = time.perf_counter()
    with tracked_run(dbf, rid, "eval-ttt", p.run_key()) as rec:
        docs = ttt.held_out_documents(str(pile_dir), p.n_docs, p.seeds, p.split,
                                      p.prompt_chars, p.continuation_chars)
        t_select = time.perf_counter()
        selections = {seed: ttt.select_chunks(ws, p.name, [d.prompt for d in docs[seed]],
                                              p.strategies, p.k, p.n, p.lam, seed,
                                              p.dup_threshold, p.alpha)
                      for seed in p.seeds}
        t_finetune = time.perf_counter()
        rows = ttt.finetune_and_score(p.lm, str(Path(ws) / "models"), docs, selections,
                                      p.lr, p.max_train_tokens, p.threads)
        t_end = time.perf_counter()
        per_seed, summary = ttt.store_results(dbf, rid, out_dir, rows, p.n)
        rec.summary = {**summary, "select_seconds": round(t_finetune - t_select, 1),
                       "finetune_seconds": round(t_end - t_finetune, 1),
                       "wall_seconds": round(time.perf_counter() - t_start, 1)}
    plot = ttt.report(rid, out_dir, per_seed, summary["table"], p.run_key())
    return {"run_id": rid, "plot": str(plot), **rec.summary}
