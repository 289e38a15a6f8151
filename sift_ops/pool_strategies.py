"""Which pool items to annotate: the strategy dispatch, budgets and batches, as one pure
function (:func:`rank_items`) that flows and evaluations can call on arrays.

Strategies (:data:`STRATEGIES`); every one returns a per-pick ``score`` where HIGHER
means "more worth annotating" so annotators can sort by it:

==============================  =============================================================
``random``                      uniform random order (the baseline); score: the random key
``mean_entropy`` ...            one per uncertainty metric of the base LM's greedy answer,
``min_margin``                  most uncertain first; score: the uncertainty priority (the
                                metric itself, or ``1 - margin`` for the margins)
``k_center``                    k-center greedy (coreset) on prompt embeddings; score: the
                                covering radius of the selection after the pick
``facility_location``           lazy-greedy facility location on a faiss kNN graph;
                                score: the marginal gain
``uncertainty_facility_location`` facility location where an item's need to be covered is
                                weighted by its uncertainty; score: the marginal gain
``sift``                        SIFT toward target prompts (or toward the pool itself);
                                score: the mean posterior-variance reduction of the targets
``nn-f``                        nearest neighbours of the target prompts (mean similarity;
                                or of the pool's mean) skipping items whose cosine
                                similarity to an already chosen (or labelled) item is
                                ``>= sift_ops.sift.DEFAULT_DUP_THRESHOLD``; score: the
                                mean similarity to the targets
==============================  =============================================================

Budgets: the budget (in the units of ``costs``) is split across groups (``source``) with
:func:`sift_ops.budget.allocate_budget`; each group runs the strategy on its own items
and keeps picks in strategy order while they fit its allocation.  Already-labelled items
are never selected, but diversity strategies treat them as already chosen (k-center:
existing centres; facility location: already covering; SIFT: already observed).  The
selected items of all groups are interleaved (each group's best first) and cut into
annotation batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sift_ops.budget import (
    allocate_budget,
    annotation_batches,
    fill_in_rank_order,
    interleave_groups,
    max_affordable,
)
from sift_ops.diversity import EXACT_GRAPH_MAX_N, facility_location, k_center_greedy
from sift_ops.pool_sift import pool_sift, target_gram
from sift_ops.uncertainty import UNCERTAINTY_KEYS

__all__ = [
    "DIVERSITY_STRATEGIES",
    "LM_STRATEGIES",
    "STRATEGIES",
    "PoolRanking",
    "needs_embeddings",
    "needs_lm",
    "rank_items",
    "uncertainty_priority",
]

DIVERSITY_STRATEGIES = ("k_center", "facility_location", "uncertainty_facility_location", "sift",
                        "nn-f")
STRATEGIES = ("random", *UNCERTAINTY_KEYS, *DIVERSITY_STRATEGIES)
LM_STRATEGIES = (*UNCERTAINTY_KEYS, "uncertainty_facility_location")
_LOW_IS_UNCERTAIN = ("mean_margin", "min_margin")
#: floor of the uncertainty weights in weighted facility location: a confident item still
#: counts a little, so the objective never ignores a region entirely
WEIGHT_FLOOR = 0.05


def needs_lm(strategies: list[str] | tuple[str, ...], allocation: str = "proportional") -> bool:
    """Whether LM uncertainty scores are needed for these strategies / this allocation."""
    return allocation == "uncertainty" or any(s in LM_STRATEGIES for s in strategies)


def needs_embeddings(strategies: list[str] | tuple[str, ...]) -> bool:
    """Whether prompt embeddings are needed."""
    return any(s in DIVERSITY_STRATEGIES for s in strategies)


def uncertainty_priority(metric: str, values: np.ndarray) -> np.ndarray:
    """``[n]`` float64 where higher = less confident; NaN (no response) stays NaN.

    Entropies and least confidence are already "high = uncertain"; margins are in [0, 1]
    with low = uncertain, so they become ``1 - margin``.
    """
    if metric not in UNCERTAINTY_KEYS:
        raise ValueError(f"unknown uncertainty metric {metric!r}; one of {UNCERTAINTY_KEYS}")
    v = np.asarray(values, dtype=np.float64)
    return 1.0 - v if metric in _LOW_IS_UNCERTAIN else v.copy()


def _unit_weights(prio: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] over the finite values; NaN -> 0."""
    fin = np.isfinite(prio)
    out = np.zeros(len(prio))
    if fin.any():
        lo, hi = prio[fin].min(), prio[fin].max()
        out[fin] = (prio[fin] - lo) / (hi - lo) if hi > lo else 1.0
    return out


@dataclass
class PoolRanking:
    """Result of :func:`rank_items`.  Per selected item, in annotation order (length k):

    ``index`` pool positions, ``rank`` 1..k, ``score`` (strategy priority, higher first),
    ``group`` group position into ``group_names``, ``cost``, ``batch`` (1-based).
    Per group (length G): ``group_names``, ``n_items`` (selectable items),
    ``available`` (their total cost), ``allocated``, ``spent``, ``n_selected``.
    """

    strategy: str
    index: np.ndarray
    rank: np.ndarray
    score: np.ndarray
    group: np.ndarray
    cost: np.ndarray
    batch: np.ndarray
    group_names: list[str]
    n_items: np.ndarray
    available: np.ndarray
    allocated: np.ndarray
    spent: np.ndarray
    n_selected: np.ndarray
    budget: float

    def group_table(self) -> list[dict[str, Any]]:
        """One dict per group (for tables, artifacts and the ``budgets`` rows)."""
        return [
            {"grp": g, "n_items": int(self.n_items[i]), "available": float(self.available[i]),
             "allocated": float(self.allocated[i]), "spent": float(self.spent[i]),
             "n_selected": int(self.n_selected[i])}
            for i, g in enumerate(self.group_names)
        ]


def _order_in_group(strategy: str, items: np.ndarray, k: int, *, emb: np.ndarray | None,
                    prio: np.ndarray | None, weights: np.ndarray | None,
                    labeled_emb: np.ndarray | None, gram: np.ndarray | None,
                    rng: np.random.Generator, knn: int, lam: float,
                    exact_knn_max: int = EXACT_GRAPH_MAX_N,
                    center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pick order (positions into ``items``) and scores for one group, at most k picks."""
    n = len(items)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if strategy == "random":
        key = rng.random(n)
        order = np.argsort(-key, kind="stable")[:k]
        return order, key[order]
    if strategy in UNCERTAINTY_KEYS:
        p = prio[items]
        # most uncertain first, NaN (no response to judge) last, ties by pool order
        order = np.argsort(-np.where(np.isfinite(p), p, -np.inf), kind="stable")[:k]
        return order, p[order]
    x = emb[items]
    n_lab = 0 if labeled_emb is None else len(labeled_emb)
    if strategy == "sift":
        order, gains = pool_sift(x, k, gram=gram, lam=lam, labeled=labeled_emb)
        return order, gains
    if strategy == "nn-f":
        return _nn_filtered(x, k, center, labeled_emb)
    # k-center / facility location: labelled items join as already-selected rows
    if n_lab:
        x = np.concatenate([x, labeled_emb])
        sel = np.arange(n, n + n_lab)
    else:
        sel = None
    if strategy == "k_center":
        order, radii = k_center_greedy(x, k, selected=sel, return_radii=True)
        return order.numpy().astype(np.int64), radii.numpy().astype(np.float64)
    w = None
    if strategy == "uncertainty_facility_location":
        w = weights[items]
        if n_lab:
            w = np.concatenate([w, np.full(n_lab, WEIGHT_FLOOR)])
    # the exact graph is O(n^2 d): large groups use faiss IVF (sift_ops.diversity.knn_graph)
    method = "ivf" if len(x) > exact_knn_max else "exact"
    order, gains = facility_location(x, k, knn=min(knn, len(x)), weights=w, selected=sel,
                                     graph_method=method)
    return order.numpy().astype(np.int64), gains.numpy()


def _nn_filtered(x: np.ndarray, k: int, center: np.ndarray, labeled: np.ndarray | None,
                 chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """NN-F over a pool group: items by similarity to ``center`` ``[d]``, skipping those
    whose cosine similarity to an already chosen or labelled item is >= the threshold.
    When fewer than ``k`` items survive, the skipped ones follow in similarity order (so
    the budget is spent, non-duplicates first).

    Candidates are screened ``chunk`` at a time against all picks with one matmul; only
    the decisions inside a chunk are sequential. Returns (positions, similarity scores).
    """
    from sift_ops.sift import DEFAULT_DUP_THRESHOLD as thr

    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    score = x.astype(np.float64) @ center
    order = np.argsort(-score, kind="stable")
    fixed = [] if labeled is None else [labeled / np.maximum(
        np.linalg.norm(labeled, axis=1, keepdims=True), 1e-12)]
    picked: list[int] = []
    for s in range(0, len(order), chunk):
        idx = order[s:s + chunk]
        xc = xn[idx]
        prev = fixed + ([xn[picked]] if picked else [])
        blocked = np.zeros(len(idx), dtype=bool)
        if prev:
            blocked |= (xc @ np.concatenate(prev).T).max(axis=1) >= thr
        within = xc @ xc.T
        for j in range(len(idx)):
            if blocked[j]:
                continue
            picked.append(int(idx[j]))
            if len(picked) == k:
                sel = np.asarray(picked, dtype=np.int64)
                return sel, score[sel]
            blocked |= within[j] >= thr
    # fewer non-duplicates than the budget asks for: the skipped items follow, in order
    chosen = set(picked)
    picked += [int(i) for i in order if int(i) not in chosen][:k - len(picked)]
    sel = np.asarray(picked, dtype=np.int64)
    return sel, score[sel]


def rank_items(
    strategy: str,
    emb: np.ndarray | None,
    scores: Mapping[str, np.ndarray] | None,
    costs: np.ndarray | None,
    groups: np.ndarray | list | None,
    budget: float,
    *,
    allocation: str = "proportional",
    labeled: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    uncertainty_metric: str = "mean_entropy",
    batch_size: int | None = None,
    seed: int = 0,
    knn: int = 64,
    lam: float = 0.1,
    integral: bool = True,
    exact_knn_max: int = EXACT_GRAPH_MAX_N,
) -> PoolRanking:
    """Choose pool items to annotate under a budget.

    Args:
        strategy: one of :data:`STRATEGIES`.
        emb: ``[n, d]`` L2-normalised prompt embeddings (float32); needed by
            :data:`DIVERSITY_STRATEGIES`, may be None otherwise.
        scores: per-item arrays ``[n]`` keyed by uncertainty metric name (``mean_entropy``
            ...; NaN = not scored); needed by the uncertainty strategies,
            ``uncertainty_facility_location`` and ``allocation="uncertainty"``.
        costs: ``[n]`` non-negative cost of annotating each item in budget units
            (tokens, or a cost column); None = 1 per item (a budget in items).
        groups: ``[n]`` group label per item (e.g. ``source``); None = one group "all".
        budget: total budget in cost units; never exceeded, overall or per group.
        allocation: ``proportional`` | ``equal`` | ``uncertainty`` (see
            :mod:`sift_ops.budget`).
        labeled: ``[n]`` bool, True for items that already have a label: never selected,
            but diversity strategies count them as already chosen.
        targets: ``[m, d]`` target prompt embeddings for ``sift``; None = the pool itself.
        uncertainty_metric: the metric behind ``uncertainty_facility_location`` and the
            ``uncertainty`` allocation.
        batch_size: items per annotation batch (None: one batch).
        seed: seed of ``random``.
        knn: neighbours per item in the facility-location kNN graph.
        lam: SIFT noise parameter (> 0).
        integral: allocate whole cost units (True for items and tokens).
        exact_knn_max: groups larger than this build the facility-location kNN graph
            with the cell-blocked IVF search (``sift_ops.diversity.knn_graph(method="ivf")``),
            not exactly; default :data:`sift_ops.diversity.EXACT_GRAPH_MAX_N`.

    Returns:
        :class:`PoolRanking`.  Deterministic for fixed inputs and seed.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    sizes = [len(a) for a in (emb, costs, groups, labeled) if a is not None]
    sizes += [len(v) for v in (scores or {}).values()]
    if not sizes:
        raise ValueError("rank_items needs at least one per-item array to know the pool size")
    n = sizes[0]
    if any(s != n for s in sizes):
        raise ValueError(f"per-item arrays disagree on the pool size: {sorted(set(sizes))}")
    if strategy in DIVERSITY_STRATEGIES and emb is None:
        raise ValueError(f"strategy {strategy!r} needs prompt embeddings")
    def priority(metric: str) -> np.ndarray:
        if not scores or metric not in scores:
            raise ValueError(f"strategy {strategy!r} / allocation {allocation!r} needs LM "
                             f"uncertainty scores ({metric!r})")
        return uncertainty_priority(metric, scores[metric])

    # ranking by the strategy's own metric; weights (allocation, weighted facility
    # location) by uncertainty_metric, so every strategy gets the same allocation
    prio = priority(strategy) if strategy in UNCERTAINTY_KEYS else None
    unit_w = None
    if strategy == "uncertainty_facility_location" or allocation == "uncertainty":
        unit_w = _unit_weights(priority(uncertainty_metric))
    cost = np.ones(n) if costs is None else np.asarray(costs, dtype=np.float64)
    lab = np.zeros(n, dtype=bool) if labeled is None else np.asarray(labeled, dtype=bool)
    if groups is None:
        names, gid = np.array(["all"]), np.zeros(n, dtype=np.int64)
    else:
        names, gid = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    G = len(names)
    sel_mask = ~lab
    n_items = np.bincount(gid[sel_mask], minlength=G)
    available = np.bincount(gid[sel_mask], weights=cost[sel_mask], minlength=G)
    group_w = None
    if allocation == "uncertainty":
        group_w = np.bincount(gid[sel_mask], weights=unit_w[sel_mask], minlength=G)
    alloc = allocate_budget(budget, available, allocation, group_w, integral=integral)

    x = None if emb is None else np.ascontiguousarray(emb, dtype=np.float32)
    labeled_emb = x[lab] if (x is not None and lab.any()) else None
    gram = center = None
    if strategy == "sift":
        gram = target_gram(targets if targets is not None else x)
    if strategy == "nn-f":  # mean similarity to the targets == similarity to their mean
        center = np.asarray(targets if targets is not None else x, np.float64).mean(axis=0)
    fl_w = None
    if strategy == "uncertainty_facility_location":
        fl_w = WEIGHT_FLOOR + (1.0 - WEIGHT_FLOOR) * unit_w
    rng = np.random.default_rng(seed)

    picked, pscore, pgroup, ppos = [], [], [], []
    spent = np.zeros(G)
    for g in range(G):  # a loop over groups (a handful), each step vectorised
        items = np.flatnonzero(sel_mask & (gid == g))
        if alloc[g] <= 0 or len(items) == 0:
            continue
        # Orders are cheap for random/uncertainty: rank the whole group.  Greedy diversity
        # orders start with as many picks as could fit (cheapest first) and double while
        # budget is left that an unranked item could use (greedy prefixes do not change).
        cheap = strategy == "random" or strategy in UNCERTAINTY_KEYS
        k = len(items) if cheap else max(1, max_affordable(cost[items], alloc[g]))
        state = rng.bit_generator.state
        while True:
            rng.bit_generator.state = state  # same random keys however often we rank
            order, sc = _order_in_group(strategy, items, k, emb=x, prio=prio, weights=fl_w,
                                        labeled_emb=labeled_emb, gram=gram, rng=rng,
                                        knn=knn, lam=lam, exact_knn_max=exact_knn_max,
                                        center=center)
            take = fill_in_rank_order(cost[items[order]], np.zeros(len(order), np.int64),
                                      alloc[g:g + 1])
            left = alloc[g] - cost[items[order[take]]].sum()
            unranked = np.setdiff1d(np.arange(len(items)), order, assume_unique=True)
            if k >= len(items) or not (cost[items[unranked]] <= left + 1e-9).any():
                break
            k = min(len(items), 2 * k)
        chosen = items[order[take]]
        picked.append(chosen)
        pscore.append(np.asarray(sc, dtype=np.float64)[take])
        pgroup.append(np.full(len(chosen), g, dtype=np.int64))
        ppos.append(np.arange(len(chosen)))
        spent[g] = cost[chosen].sum()
    if picked:
        index, score = np.concatenate(picked), np.concatenate(pscore)
        group, pos = np.concatenate(pgroup), np.concatenate(ppos)
    else:
        index, score = np.zeros(0, np.int64), np.zeros(0)
        group, pos = np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_sel = np.bincount(group, minlength=G)
    perm = interleave_groups(group, pos, n_sel)
    index, score, group = index[perm], score[perm], group[perm]
    return PoolRanking(
        strategy=strategy, index=index, rank=np.arange(1, len(index) + 1), score=score,
        group=group, cost=cost[index], batch=annotation_batches(len(index), batch_size),
        group_names=[str(s) for s in names], n_items=n_items, available=available,
        allocated=alloc, spent=spent, n_selected=n_sel, budget=float(budget),
    )
