"""Smoke runs of the eval-ttt and eval-budget flows: a tiny sample embedded with real Ray,
indexed with real faiss, a real Prefect API, a real DuckDB file, and the tiny random
Llama (tests/tiny_lm.py) standing in for SmolLM2 so each flow takes seconds.

The numbers mean nothing here (random model); the tests check the contract: rows per
strategy and seed, finite metrics, restored weights, shared 100 % point, idempotent
reruns, plots and reports on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.runtime.workspace import db_path
from tasks.sample.bundled import build_sample
from tasks.storage import db
from tests.tiny_lm import build_tiny_lm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ws(tmp_path_factory, prefect_harness, local_ray):
    from flows.embed import embed_flow
    from flows.index import index_flow

    root = tmp_path_factory.mktemp("evalws")
    sample = build_sample(root / "sample", n_docs=40, n_queries=2, pool_size=40)
    embed_flow(corpus=sample["paths"]["pile_dir"], name="tiny", workspace=str(root))
    index_flow(name="tiny", workspace=str(root))
    lm = build_tiny_lm(root / "tiny-lm")
    return SimpleNamespace(ws=str(root), sample=sample["out"], lm=str(lm))


def _rows(ws: str, rid: str) -> list[tuple]:
    return db.query(db_path(ws), "SELECT strategy, budget, seed, metric, value FROM "
                    "evaluations WHERE run_id = ? ORDER BY ALL", [rid])


def test_eval_ttt_smoke(ws):
    from flows.eval_ttt import eval_ttt_flow

    kwargs = dict(name="tiny", workspace=ws.ws, sample=ws.sample, n_docs=2, n=3, k=6,
                  lr=1e-3, seeds=[0, 1], lm=ws.lm, max_train_tokens=48, prompt_chars=200,
                  continuation_chars=120, strategies=["sift", "nn", "random"])
    # (nn-f and adaptive-sift, also in the default list, have their own integration test)
    out = eval_ttt_flow(**kwargs)
    rows = _rows(ws.ws, out["run_id"])
    bpb = {(s, seed): v for s, _b, seed, m, v in rows if m == "bpb"}
    assert set(bpb) == {(s, seed) for s in ("base", "sift", "nn", "random") for seed in (0, 1)}
    assert all(math.isfinite(v) and v > 0 for v in bpb.values())
    # fine-tuning really changed the model between base and the strategies
    assert any(abs(bpb[(s, 0)] - bpb[("base", 0)]) > 1e-6 for s in ("sift", "nn", "random"))
    budgets = {(s, b) for s, b, _seed, m, _v in rows if m == "bpb"}
    assert ("base", 0.0) in budgets and ("sift", 3.0) in budgets
    distinct = {(s, seed): v for s, _b, seed, m, v in rows if m == "distinct_chunks"}
    assert all(1 <= v <= 3 for v in distinct.values())
    assert all(v == 3 for (s, _), v in distinct.items() if s == "nn")  # NN never repeats
    overlap = {(s, seed): v for s, _b, seed, m, v in rows if m == "overlap_nn"}
    assert set(overlap) == {(s, seed) for s in ("sift", "random") for seed in (0, 1)}
    assert all(0 <= v <= 1 for v in overlap.values())
    report = Path(ws.ws) / "reports" / out["run_id"]
    docs = [json.loads(x) for x in (report / "ttt_documents.jsonl").read_text().splitlines()]
    assert len(docs) == 2 * 2 * 4  # seeds x documents x (base + 3 strategies)
    assert (report / "ttt_bpb.png").stat().st_size > 5_000
    status = db.query(db_path(ws.ws), "SELECT status FROM runs WHERE run_id = ?",
                      [out["run_id"]])
    assert status == [("completed",)]
    # a rerun of the same job replaces its rows (and, being deterministic, reproduces them)
    again = eval_ttt_flow(**kwargs)
    assert again["run_id"] == out["run_id"]
    rerun = _rows(ws.ws, out["run_id"])
    assert [r[:4] for r in rerun] == [r[:4] for r in rows]
    assert [r[4] for r in rerun] == pytest.approx([r[4] for r in rows], rel=1e-4)


def test_eval_ttt_nn_f_and_adaptive_sift(ws):
    from flows.eval_ttt import eval_ttt_flow

    out = eval_ttt_flow(name="tiny", workspace=ws.ws, sample=ws.sample, n_docs=2, n=4, k=8,
                        lr=1e-3, seeds=[0], lm=ws.lm, max_train_tokens=32,
                        prompt_chars=200, continuation_chars=120,
                        strategies=["sift", "nn-f", "adaptive-sift"], alpha=0.4)
    rows = {(s, m): v for s, _b, _seed, m, v in _rows(ws.ws, out["run_id"])}
    assert 1 <= rows[("adaptive-sift", "steps")] < 4 == rows[("sift", "steps")]
    for s in ("sift", "nn-f", "adaptive-sift"):
        assert math.isfinite(rows[(s, "bpb_equal_compute_minus_base")])
        assert 0 <= rows[(s, "dup_near")] <= 1
    report = Path(ws.ws) / "reports" / out["run_id"]
    docs = [json.loads(x) for x in (report / "ttt_documents.jsonl").read_text().splitlines()]
    for d in (d for d in docs if d["strategy"] == "adaptive-sift"):
        assert d["trained_with"] == "sift"  # scored part-way through SIFT's run
        assert d["bpb"] == d["bpb_equal_compute"]


def test_eval_budget_smoke(ws):
    from flows.eval_budget import eval_budget_flow

    out = eval_budget_flow(workspace=ws.ws, sample=ws.sample, n_select=12, n_test=4,
                           budgets=[0.25, 0.5], seeds=[0, 1], lm=ws.lm, lr=1e-3,
                           batch_size=4, max_prompt_tokens=48, max_response_tokens=16)
    rows = _rows(ws.ws, out["run_id"])
    loss = {(s, b, seed): v for s, b, seed, m, v in rows if m == "test_loss"}
    strategies = ("random", "k_center", "facility_location", "sift")
    for seed in (0, 1):
        assert ("base", 0.0, seed) in loss
        for s in strategies:
            for b in (0.25, 0.5, 1.0):
                assert math.isfinite(loss[(s, b, seed)])
            # all strategies share the random-at-100 % run
            assert loss[(s, 1.0, seed)] == loss[("random", 1.0, seed)]
    items = {(s, b, seed): v for s, b, seed, m, v in rows if m == "train_items"}
    assert items[("sift", 0.25, 0)] == 3 and items[("k_center", 0.5, 1)] == 6
    assert items[("random", 1.0, 0)] == 12
    # training on more data moved the test loss away from the base model's
    assert loss[("random", 1.0, 0)] != loss[("base", 0.0, 0)]
    assert set(out["reached"]) == set(strategies)
    assert out["reached"]["random"] is not None  # random reaches itself, at 100 % at worst
    assert Path(out["plot"]).stat().st_size > 5_000


def test_eval_budget_uncertainty_strategies(ws):
    from flows.eval_budget import eval_budget_flow

    strategies = ["random", "k_center", "mean_entropy", "min_margin",
                  "uncertainty_facility_location"]
    out = eval_budget_flow(workspace=ws.ws, sample=ws.sample, n_select=12, n_test=4,
                           budgets=[0.25, 0.5], strategies=strategies, seeds=[3], lm=ws.lm,
                           lr=1e-3, batch_size=4, max_prompt_tokens=48,
                           max_response_tokens=16, max_new_tokens=6, gen_batch_size=4)
    rows = _rows(ws.ws, out["run_id"])
    loss = {(s, b): v for s, b, _seed, m, v in rows if m == "test_loss"}
    for s in strategies:
        assert all(math.isfinite(loss[(s, b)]) for b in (0.25, 0.5, 1.0))
        assert loss[(s, 1.0)] == loss[("random", 1.0)]
    # the selection pool was scored once: one line per selectable item, finite scores
    report = Path(ws.ws) / "reports" / out["run_id"]
    scored = [json.loads(x) for x in
              (report / "pool_uncertainty.jsonl").read_text().splitlines()]
    assert len(scored) == 12 == len({r["item_id"] for r in scored})
    assert all(math.isfinite(r["mean_entropy"]) and 1 <= r["gen_tokens"] <= 6
               for r in scored)
    assert out["lm_scoring"]["items"] == 12
    # mean_entropy takes the most uncertain items: the top of the scores, at every budget
    ent = {(s, b): v for s, b, _seed, m, v in rows if m == "selected_mean_entropy"}
    top = sorted((r["mean_entropy"] for r in scored), reverse=True)
    assert ent[("mean_entropy", 0.25)] == pytest.approx(sum(top[:3]) / 3)
    assert ent[("mean_entropy", 0.5)] >= ent[("random", 0.5)]
    assert ent[("k_center", 1.0)] == pytest.approx(sum(top) / 12)
    assert Path(out["plot"]).stat().st_size > 5_000
    assert set(out["finetune_seconds"]) == {"base", *strategies}
    assert not (report / "partial").exists()  # checkpoints go once the run completes

    # a rerun that finds an earlier attempt's LM scores reuses them and still completes
    # (this once failed at the very end, in the artifact's text)
    (report / "partial").mkdir()
    (report / "partial" / "pool_uncertainty.jsonl").write_text(
        (report / "pool_uncertainty.jsonl").read_text())
    again = eval_budget_flow(workspace=ws.ws, sample=ws.sample, n_select=12, n_test=4,
                             budgets=[0.25, 0.5], strategies=strategies, seeds=[3],
                             lm=ws.lm, lr=1e-3, batch_size=4, max_prompt_tokens=48,
                             max_response_tokens=16, max_new_tokens=6, gen_batch_size=4)
    assert again["run_id"] == out["run_id"]
    assert "reused" in again["lm_scoring"] and "seconds" not in again["lm_scoring"]
    assert _rows(ws.ws, out["run_id"]) == rows
    assert not (report / "partial").exists()


def test_finetune_on_budgets_computes_each_set_once_and_resumes(ws, tmp_path):
    from tasks.evaluation import evaluate as ev
    from tasks.evaluation.budget import finetune_on_budgets

    pairs = ev.load_pool_pairs(Path(ws.sample) / "pool.jsonl",
                               Path(ws.sample) / "pool_references.jsonl")
    plan = {0: {"test": [0, 1], "sets": {("a", 0.5): [2, 3, 4], ("b", 0.5): [4, 2, 3],
                                         ("b", 1.0): [2, 3, 4, 5]}}}
    kwargs = dict(lr=1e-3, epochs=1, batch_size=2, max_prompt_tokens=32,
                  max_response_tokens=8, threads=None)
    results = tmp_path / "results.jsonl"
    rows = finetune_on_budgets.fn(ws.lm, str(Path(ws.ws) / "models"), pairs, plan,
                                  results_file=results, **kwargs)
    by = {(r["strategy"], r["budget"]): r for r in rows}
    assert by[("b", 0.5)]["test_loss"] == by[("a", 0.5)]["test_loss"]
    assert by[("b", 0.5)]["reused"] == "same set" and by[("a", 0.5)]["reused"] is None
    assert by[("b", 1.0)]["reused"] is None
    assert by[("b", 1.0)]["test_loss"] != by[("a", 0.5)]["test_loss"]
    assert by[("base", 0.0)]["steps"] == 0 and by[("b", 1.0)]["steps"] == 2
    assert len(results.read_text().splitlines()) == 3  # base, {2,3,4}, {2,3,4,5}
    # a second attempt (as after a kill) reuses every finished result, a torn line is
    # ignored, and a changed setting is computed afresh
    with open(results, "a") as fh:
        fh.write('{"key": "torn')
    again = finetune_on_budgets.fn(ws.lm, str(Path(ws.ws) / "models"), pairs, plan,
                                   results_file=results, **kwargs)
    assert [r["test_loss"] for r in again] == [r["test_loss"] for r in rows]
    assert [r["reused"] for r in again] == ["earlier attempt"] * 4
    other = finetune_on_budgets.fn(ws.lm, str(Path(ws.ws) / "models"), pairs, plan,
                                   results_file=results, **{**kwargs, "lr": 2e-3})
    assert other[1]["reused"] is None and other[1]["test_loss"] != rows[1]["test_loss"]

