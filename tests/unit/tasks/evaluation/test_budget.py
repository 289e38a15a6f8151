"""tasks.evaluation.budget without a model: the LM-score checkpoint, the summary and rows
a run stores from its fine-tune results (real DuckDB file), the checkpoint folder's end,
reach_budget and the plot panels. The fine-tunes themselves run in
tests/integration/test_eval.py."""

from __future__ import annotations

import numpy as np
import pytest

from sift_ops.generation import SCORE_KEYS
from tasks.evaluation import budget
from tasks.evaluation.evaluate import PoolPair
from tasks.storage import db


def test_lm_scores_checkpoint_round_trip(tmp_path):
    pairs = [PoolPair(f"i{j}", "s", "p", "r") for j in range(3)]
    scores = {k: np.array([0.5, np.nan, 2.0]) for k in SCORE_KEYS}
    path = tmp_path / "scores.jsonl"
    scorer = {"lm": None, "max_new_tokens": 8, "gen_batch_size": 4}
    budget._write_scores(path, pairs, scores, scorer)
    back = budget._read_scores(path, ["i2", "i0"], scorer)
    assert back is not None and back["mean_entropy"].tolist() == [2.0, 0.5]
    assert np.isnan(budget._read_scores(path, ["i1"], scorer)["min_margin"][0])
    assert budget._read_scores(path, ["i0", "i9"], scorer) is None  # an item never scored
    assert budget._read_scores(path, ["i0"], {**scorer, "max_new_tokens": 16}) is None
    assert budget._read_scores(tmp_path / "none.jsonl", ["i0"], scorer) is None


def _row(strategy, b, seed, loss, reused=None, seconds=1.0, items=0):
    return {"seed": seed, "strategy": strategy, "budget": b, "items": items, "steps": items,
            "test_loss": loss, "test_tokens": 10, "seconds": seconds, "reused": reused}


def test_store_results_shares_the_full_pool_run_and_finds_the_reaching_budget(tmp_path):
    dbf = tmp_path / "curation.duckdb"
    rows = []
    for seed in (0, 1):
        rows += [_row("base", 0.0, seed, 3.0), _row("random", 0.5, seed, 2.6, items=2),
                 _row("random", 1.0, seed, 2.0 + seed / 10, items=4, seconds=2.0),
                 _row("sift", 0.5, seed, 2.0, items=2, seconds=5.0)]
    rows.append(_row("k_center", 0.5, 0, 2.6, reused="same set", items=2, seconds=9.0))
    rows.append(_row("k_center", 0.5, 1, 2.7, items=2, seconds=3.0))
    plan = {s: {"test": [0], "sets": {}} for s in (0, 1)}
    curves, summary = budget.store_results(dbf, "r1", rows, plan, {},
                                           strategies=["random", "sift", "k_center"],
                                           budgets=[0.5, 1.0])
    assert summary["reference_loss"] == pytest.approx(2.05)
    assert summary["base_loss"] == 3.0
    assert curves["sift"][1.0] == curves["random"][1.0] == [2.0, 2.1]
    # sift's mean at 50 % (2.0) is below random at 100 % (2.05); k_center never gets there
    assert summary["reached"] == {"random": 1.0, "sift": 0.5, "k_center": 1.0}
    assert [r["strategy"] for r in summary["table"]] == ["random", "sift", "k_center"]
    assert summary["table"][1]["50%"] == "2.0000 +- 0.0000"
    # own computations only: not a set reused from another strategy, not the shared 100 %
    assert summary["finetune_seconds"] == {"base": 2.0, "random": 6.0, "sift": 10.0,
                                           "k_center": 3.0}
    assert summary["results_computed"] == 13 and summary["results_reused"] == {
        "same set": 1, "earlier attempt": 0}
    stored = db.query(dbf, "SELECT strategy, budget, seed, value FROM evaluations WHERE "
                      "run_id = 'r1' AND metric = 'test_loss' AND budget = 1 ORDER BY ALL")
    assert stored == [("k_center", 1.0, 0, 2.0), ("k_center", 1.0, 1, 2.1),
                      ("random", 1.0, 0, 2.0), ("random", 1.0, 1, 2.1),
                      ("sift", 1.0, 0, 2.0), ("sift", 1.0, 1, 2.1)]
    # a second store of the run replaces its rows
    budget.store_results(dbf, "r1", rows, plan, {}, strategies=["random", "sift", "k_center"],
                         budgets=[0.5, 1.0])
    n = db.query(dbf, "SELECT count(*) FROM evaluations WHERE run_id = 'r1'")[0][0]
    assert n == 3 * (len(rows) + 4)  # three metrics per row, four shared 100 % rows added


def test_checkpoints_are_cleared_keeping_the_lm_scores(tmp_path):
    partial = budget.checkpoints(tmp_path)
    (partial / "finetune_results.jsonl").write_text("{}\n")
    (partial / "pool_uncertainty.jsonl").write_text('{"item_id": "a"}\n')
    budget.clear_checkpoints(tmp_path)
    assert not partial.exists()
    assert (tmp_path / "pool_uncertainty.jsonl").read_text() == '{"item_id": "a"}\n'


def test_reach_budget_and_panels():
    curves = {"a": {0.1: [3.0, 1.0], 1.0: [1.0]}, "b": {0.1: [5.0], 1.0: [4.0]}}
    assert budget.reach_budget(curves, 2.0) == {"a": 0.1, "b": None}
    assert budget._panels(["random", "k_center"]) is None
    panels = budget._panels(["random", "sift", "mean_entropy"])
    assert list(panels.values()) == [["random", "sift"], ["random", "mean_entropy"]]
    assert budget.reach_budget({"a": {1.0: [2.0]}}, 2.0) == {"a": 1.0}  # equal reaches
