"""tasks.evaluate helpers: document splits, held-out splits, pool ranking, budgets."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import evaluate as ev


def test_split_document_cuts_at_whitespace_and_keeps_order():
    text = " ".join(f"word{i}" for i in range(400))
    prompt, cont = ev.split_document(text, 300, 200)
    assert text.startswith(prompt + cont)
    assert 150 <= len(prompt) <= 300 and 100 <= len(cont) <= 200
    assert cont.startswith(" ") and not prompt.endswith(" ")  # the cut is at a space
    assert ev.split_document("too short", 300, 200) is None


def test_choose_docs_dev_and_test_are_disjoint_and_balanced():
    cands = [ev.HeldOutDoc(f"{src}:{i}", src, "p", "c") for src in ("a", "b")
             for i in range(60)]
    dev = {d.key for seed in range(5) for d in ev.choose_docs(cands, 6, seed, "dev")}
    test = {d.key for seed in range(5) for d in ev.choose_docs(cands, 6, seed, "test")}
    assert dev and test and not dev & test
    one = ev.choose_docs(cands, 6, 0, "test")
    assert sorted(d.source for d in one) == ["a"] * 3 + ["b"] * 3
    assert one == ev.choose_docs(cands, 6, 0, "test")  # deterministic per seed
    with pytest.raises(ValueError):
        ev.choose_docs(cands, 6, 0, "train")


def test_budget_sizes():
    assert ev.budget_sizes(120, [0.05, 0.1, 0.25, 0.5, 1.0]) == [6, 12, 30, 60, 120]
    assert ev.budget_sizes(10, [0.01, 1.0]) == [1, 10]


@pytest.mark.parametrize("strategy", ["random", "k_center", "facility_location", "sift"])
def test_rank_pool_gives_distinct_items(strategy):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    order = ev.rank_pool(strategy, emb, emb[:5], 20, seed=1)
    assert len(order) == 20 == len(set(order))
    assert all(0 <= i < 50 for i in order)


def test_rank_pool_sift_starts_at_the_target_and_random_depends_on_seed():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert ev.rank_pool("sift", emb, emb[[7]], 5, seed=0)[0] == 7
    assert ev.rank_pool("random", emb, emb[:2], 10, seed=0) != \
        ev.rank_pool("random", emb, emb[:2], 10, seed=1)
    with pytest.raises(ValueError):
        ev.rank_pool("nope", emb, emb[:2], 5, seed=0)


def test_pool_strategies_module_is_used_when_present():
    ranker = ev._external_ranker()
    assert ranker is not None  # sift_ops.pool_strategies (pool-ranking issue) is installed
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(30, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    order = ranker("k_center", emb, 10, targets=emb[:3], seed=0, lam=0.1)
    assert len(order) == 10 == len(set(order.tolist()))
    assert ev.rank_pool("k_center", emb, emb[:3], 10, seed=0) == order.tolist()


def test_uncertainty_strategies_fail_clearly_without_lm_scores():
    emb = np.eye(6, dtype=np.float32)
    with pytest.raises(ValueError, match="uncertainty scores"):
        ev.rank_pool("mean_entropy", emb, emb[:2], 3, seed=0)
