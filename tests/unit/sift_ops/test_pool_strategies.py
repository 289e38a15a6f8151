"""Every pool strategy on a tiny pool: real MiniLM embeddings, scores from the tiny random LM
(greedy generation with left padding), budgets in items and in tokens, labelled items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sift_ops.generation import greedy_scores, prompt_text
from sift_ops.pool_sift import pool_sift, target_gram
from sift_ops.pool_strategies import STRATEGIES, needs_lm, rank_items, uncertainty_priority
from sift_ops.sift import posterior_variance, sift_select
from sift_ops.uncertainty import UNCERTAINTY_KEYS

TOPICS = ["the stock market fell", "a football match ended", "parliament passed a law",
          "a new phone was released", "def add(a, b): return a + b",
          "class Stack: push and pop", "for line in open(path): print(line)"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from sift_ops.causal_lm import load_causal_lm
    from sift_ops.embedding import TextEncoder
    from tests.tiny_lm import build_tiny_lm

    folder = build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))
    model, tok = load_causal_lm(str(folder))
    n = 28
    instr = [f"Summarise item {i}: {TOPICS[i % len(TOPICS)]}" for i in range(n)]
    inputs = ["" if i % 3 else f"extra context {i} " * (1 + i % 4) for i in range(n)]
    texts = [prompt_text(a, b) for a, b in zip(instr, inputs, strict=True)]
    scores = greedy_scores(model, tok, texts, max_new_tokens=6, batch_size=5)
    emb = TextEncoder(batch_size=32).encode(texts)
    groups = np.array(["code" if i % len(TOPICS) >= 4 else "news" for i in range(n)])
    return {"texts": texts, "scores": scores, "emb": emb, "groups": groups, "n": n}


def test_tiny_lm_scores_are_complete(pool):
    s = pool["scores"]
    for k in UNCERTAINTY_KEYS:
        assert np.isfinite(s[k]).all(), k
    assert (s["gen_tokens"] >= 0).all() and (s["gen_tokens"] <= 6).all()
    assert (s["prompt_tokens"] > 0).all()
    # least confidence and margins are probabilities-derived: inside [0, 1]
    assert ((s["least_confidence"] >= 0) & (s["least_confidence"] <= 1)).all()
    assert ((s["min_margin"] >= 0) & (s["min_margin"] <= s["mean_margin"] + 1e-9)).all()


def test_batched_generation_matches_one_by_one(tmp_path):
    """Left padding must not change any row's answer or scores."""
    from sift_ops.causal_lm import load_causal_lm
    from tests.tiny_lm import build_tiny_lm

    model, tok = load_causal_lm(str(build_tiny_lm(tmp_path / "lm", seed=3)))
    texts = ["a", "a much longer prompt with many characters", "mid length"]
    batched = greedy_scores(model, tok, texts, max_new_tokens=5, batch_size=3)
    single = greedy_scores(model, tok, texts, max_new_tokens=5, batch_size=1)
    for k in batched:
        np.testing.assert_allclose(batched[k], single[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("allocation", ["proportional", "equal", "uncertainty"])
def test_every_strategy_respects_the_item_budget(pool, strategy, allocation):
    n = pool["n"]
    labeled = np.zeros(n, dtype=bool)
    labeled[[0, 5]] = True
    r = rank_items(strategy, pool["emb"], pool["scores"], None, pool["groups"], 11,
                   allocation=allocation, labeled=labeled, batch_size=4, seed=1)
    assert len(r.index) == 11 == r.allocated.sum() == r.spent.sum()
    assert len(set(r.index.tolist())) == 11, "an item selected twice"
    assert not labeled[r.index].any(), "a labelled item was selected"
    assert np.all(r.spent <= r.allocated)
    assert r.rank.tolist() == list(range(1, 12))
    assert r.batch.tolist() == [1] * 4 + [2] * 4 + [3] * 3
    for g, name in enumerate(r.group_names):
        assert (pool["groups"][r.index[r.group == g]] == name).all()
        assert r.n_selected[g] == r.allocated[g]


def test_uncertainty_strategy_takes_the_least_confident(pool):
    r = rank_items("min_margin", None, pool["scores"], None, None, 5)
    prio = uncertainty_priority("min_margin", pool["scores"]["min_margin"])
    assert sorted(r.index.tolist()) == sorted(np.argsort(-prio, kind="stable")[:5].tolist())
    assert np.all(np.diff(r.score) <= 0)


def test_token_budget_is_never_exceeded(pool):
    s = pool["scores"]
    cost = s["prompt_tokens"] + s["gen_tokens"]
    budget = float(cost.sum() // 3)
    for strategy in STRATEGIES:
        r = rank_items(strategy, pool["emb"], s, cost, pool["groups"], budget,
                       allocation="equal")
        assert cost[r.index].sum() <= budget, strategy
        assert r.allocated.sum() == budget
        # nothing that still fits was left behind in a group
        for g in range(len(r.group_names)):
            rest = np.setdiff1d(np.flatnonzero(pool["groups"] == r.group_names[g]), r.index)
            if len(rest):
                assert cost[rest].min() > r.allocated[g] - r.spent[g], strategy


def test_random_depends_on_the_seed_only(pool):
    a = rank_items("random", None, None, None, pool["groups"], 8, seed=3)
    b = rank_items("random", None, None, None, pool["groups"], 8, seed=3)
    c = rank_items("random", None, None, None, pool["groups"], 8, seed=4)
    assert a.index.tolist() == b.index.tolist() != c.index.tolist()


def test_empty_group_and_missing_inputs(pool):
    labeled = pool["groups"] == "code"  # every code item already labelled
    r = rank_items("k_center", pool["emb"], None, None, pool["groups"], 6, labeled=labeled)
    code = r.group_names.index("code")
    assert r.allocated[code] == 0 and r.n_selected[code] == 0 and r.n_items[code] == 0
    assert len(r.index) == 6
    with pytest.raises(ValueError, match="needs prompt embeddings"):
        rank_items("sift", None, pool["scores"], None, None, 3)
    with pytest.raises(ValueError, match="uncertainty scores"):
        rank_items("mean_entropy", pool["emb"], None, None, None, 3)
    with pytest.raises(ValueError, match="unknown strategy"):
        rank_items("best", pool["emb"], None, None, None, 3)
    assert needs_lm(["k_center"], "uncertainty") and not needs_lm(["sift", "random"])


def test_pool_sift_matches_sift_select_and_closed_form():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(200, 12)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q = rng.normal(size=(4, 12)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    order, gains = pool_sift(c, 10, gram=target_gram(q), lam=0.1)
    ref = sift_select(torch.from_numpy(q)[None], torch.from_numpy(c)[None], 10, 0.1,
                      dtype=torch.float64)
    assert order.tolist() == ref.indices[0].tolist()  # distinct here, so identical picks
    var = posterior_variance(torch.from_numpy(q)[None], torch.from_numpy(c[order])[None], 0.1)
    assert float(var[0]) / 4 == pytest.approx(1.0 - gains.sum(), abs=1e-5)


def test_facility_location_prefers_coverage_over_random(pool):
    from sift_ops.diversity import facility_location_objective, knn_graph

    graph = knn_graph(pool["emb"], 16)
    fl = rank_items("facility_location", pool["emb"], None, None, None, 6, knn=16)
    rnd = [rank_items("random", None, None, np.ones(pool["n"]), None, 6, seed=s).index
           for s in range(5)]
    f_fl = facility_location_objective(graph, fl.index)
    assert all(f_fl >= facility_location_objective(graph, r) for r in rnd)


def test_large_groups_use_the_ivf_graph():
    from sift_ops.diversity import knn_graph

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 32)).astype(np.float32)
    x = centres[rng.integers(0, 20, 4000)] + 0.5 * rng.normal(size=(4000, 32)).astype(
        np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact, exact_sim = knn_graph(x, 10)
    approx, sim = knn_graph(x, 10, method="ivf", nprobe=8)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.9, recall
    assert np.all(np.diff(sim, axis=1) <= 1e-6)  # most similar first
    r = rank_items("facility_location", x, None, None, None, 50, knn=10, exact_knn_max=1000)
    ref = rank_items("facility_location", x, None, None, None, 50, knn=10)
    assert len(set(r.index.tolist())) == 50
    # near-identical objective to the exact graph's greedy
    from sift_ops.diversity import facility_location_objective

    g = (exact, exact_sim)
    assert facility_location_objective(g, r.index) >= 0.97 * facility_location_objective(
        g, ref.index)


def test_nn_f_ranks_by_target_similarity_and_skips_near_duplicates():
    from sift_ops.sift import DEFAULT_DUP_THRESHOLD

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16))
    x[20:30] = x[:10] + 1e-4 * rng.normal(size=(10, 16))  # near copies of items 0-9
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    t = x[:3].mean(axis=0, keepdims=True)
    r = rank_items("nn-f", x, None, None, None, 15, targets=t)
    picks = r.index.tolist()
    assert len(picks) == 15
    sims = x[picks] @ x[picks].T
    assert (sims[~np.eye(15, dtype=bool)] < DEFAULT_DUP_THRESHOLD).all()
    assert not ({0, 1, 2} <= set(picks) and {20, 21, 22} & set(picks))
    assert np.all(np.diff(r.score) <= 1e-12)  # most similar to the targets first
    # labelled items count as chosen: their copies are skipped too
    lab = np.zeros(40, dtype=bool)
    lab[:10] = True
    r2 = rank_items("nn-f", x, None, None, None, 15, targets=t, labeled=lab)
    assert not set(r2.index.tolist()) & (set(range(10)) | set(range(20, 30)))
