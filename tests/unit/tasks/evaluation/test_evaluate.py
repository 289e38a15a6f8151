"""tasks.evaluation.evaluate helpers: document splits, held-out splits, pool ranking, budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.evaluation import evaluate as ev


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


def test_pick_overlap_counts_distinct_shared_chunks():
    picks = np.array([[1, 2, 2, 3], [7, 8, 9, -1], [-1, -1, -1, -1]])
    nn = np.array([[3, 4, 5, 6], [9, 8, 7, 6], [1, 2, 3, 4]])
    got = ev.pick_overlap(picks, nn)
    assert got[0] == pytest.approx(1 / 3)  # {1, 2, 3} vs nn: only 3 shared; the repeat once
    assert got[1] == 1.0 and np.isnan(got[2])  # order does not matter; no picks -> NaN
    assert ev.pick_overlap(nn, nn).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="prompts"):
        ev.pick_overlap(picks, nn[:2])


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


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    emb = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_rank_pool_is_rank_items_pick_order():
    from sift_ops.pool_strategies import rank_items

    emb = _unit_rows(30, 8, 1)
    for strategy in ("k_center", "facility_location", "sift"):
        direct = rank_items(strategy, emb, None, None, None, 10.0, targets=emb[:3], seed=0)
        assert ev.rank_pool(strategy, emb, emb[:3], 10, seed=0) == direct.index.tolist()


@pytest.mark.parametrize("strategy", ["random", "k_center", "facility_location", "sift",
                                      "mean_entropy", "uncertainty_facility_location"])
def test_rank_pool_prefixes_are_the_smaller_budgets(strategy):
    emb = _unit_rows(40, 8, 2)
    scores = _scores(40, 3)
    full = ev.rank_pool(strategy, emb, emb[:4], 20, seed=5, scores=scores)
    for b in (1, 4, 10):
        assert ev.rank_pool(strategy, emb, emb[:4], b, seed=5, scores=scores) == full[:b]


def _scores(n: int, seed: int) -> dict[str, np.ndarray]:
    from sift_ops.uncertainty import UNCERTAINTY_KEYS

    rng = np.random.default_rng(seed)
    return {k: rng.uniform(0.05, 0.95, n) for k in UNCERTAINTY_KEYS}


def test_rank_pool_uncertainty_strategies_use_the_scores():
    emb = _unit_rows(25, 8, 4)
    scores = _scores(25, 0)
    scores["mean_entropy"][7] = np.nan  # no answer to judge: ranked last
    order = ev.rank_pool("mean_entropy", emb, emb[:2], 25, seed=0, scores=scores)
    ent = scores["mean_entropy"][order[:-1]]
    assert order[-1] == 7 and np.all(np.diff(ent) <= 0)  # most uncertain first
    # margins: LOW margin = uncertain, so the smallest margin comes first
    order = ev.rank_pool("min_margin", emb, emb[:2], 5, seed=0, scores=scores)
    assert order == np.argsort(scores["min_margin"], kind="stable")[:5].tolist()
    order = ev.rank_pool("uncertainty_facility_location", emb, emb[:2], 12, seed=0,
                         scores=scores)
    assert len(order) == 12 == len(set(order))


def test_uncertainty_strategies_fail_clearly_without_lm_scores():
    emb = np.eye(6, dtype=np.float32)
    for strategy in ("mean_entropy", "uncertainty_facility_location"):
        with pytest.raises(ValueError, match="uncertainty scores"):
            ev.rank_pool(strategy, emb, emb[:2], 3, seed=0)


def test_load_pool_pairs_builds_the_rank_prompt(tmp_path):
    import json

    from sift_ops.generation import prompt_text

    pool = tmp_path / "pool.jsonl"
    refs = tmp_path / "refs.jsonl"
    rows = [{"item_id": "a", "instruction": "Summarise.", "input": "Some text."},
            {"item_id": "b", "instruction": "Say hi.", "input": "  "},
            {"item_id": "c", "instruction": "Count.", "source": "code"}]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    refs.write_text("".join(json.dumps({"item_id": r["item_id"], "response": "ok"}) + "\n"
                            for r in rows))
    pairs = ev.load_pool_pairs(pool, refs)
    assert [p.prompt for p in pairs] == [prompt_text(r["instruction"], r.get("input"))
                                         for r in rows]
    assert pairs[1].prompt == "Say hi." and pairs[2].source == "code"
    refs.write_text(json.dumps({"item_id": "a", "response": "ok"}) + "\n")
    with pytest.raises(ValueError, match="no reference response"):
        ev.load_pool_pairs(pool, refs)


def test_duplicate_stats_counts_exact_and_near_copies():
    from tasks.evaluation.evaluate import duplicate_stats

    a = " ".join(f"word{i}" for i in range(60))
    near = "Boilerplate header line\n\n" + a.replace("word30", "changed")
    other = " ".join(f"other{i}" for i in range(60))
    st = duplicate_stats([a, other, a, near])
    assert st["dup_exact"] == 0.25  # the second `a`
    assert st["dup_near"] == 0.5  # ... and the edited copy
    assert st["distinct"] == 3 and st["distinct_near"] == 2
    assert duplicate_stats([a, other])["dup_near"] == 0.0
    assert math.isnan(duplicate_stats([])["dup_near"])
