"""Annotation budgets: item costs, allocation across groups, filling, annotation batches.

Pure numpy.  Units are whatever the caller's costs are in: 1 per item for a budget in
items, tokens (prompt tokens + expected response tokens) for a budget in tokens, or a
user-given cost column.  The invariants every function here keeps:

* an allocation never exceeds the total budget, nor a group's available cost (the sum of
  the costs of its selectable items), and it sums to ``min(total, sum(available))``
  (rounded down to whole units when ``integral``);
* a fill never spends more than a group's allocation;
* a group with no selectable items gets 0.

Allocation methods (``ALLOCATIONS``):

* ``proportional``: shares proportional to the group's available cost (its size);
* ``equal``: the same share for every non-empty group;
* ``uncertainty``: shares proportional to caller-given weights, e.g. the sum of the
  items' uncertainty (so a group the model is less sure about gets more budget).

Shares that exceed a group's available cost are capped and the excess is re-divided
among the other groups (water-filling), so budget is not stranded in a small group.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ALLOCATIONS",
    "allocate_budget",
    "annotation_batches",
    "fill_in_rank_order",
    "interleave_groups",
    "item_costs",
    "max_affordable",
]

ALLOCATIONS = ("proportional", "equal", "uncertainty")
_EPS = 1e-9


def item_costs(prompt_tokens: np.ndarray | None = None,
               response_tokens: np.ndarray | None = None,
               given: np.ndarray | None = None, *, n: int | None = None) -> np.ndarray:
    """Per-item annotation cost ``[n]`` float64.

    ``given`` (a user cost column; NaN = not given) wins where present, otherwise
    ``prompt_tokens + response_tokens``; with neither, every item costs 1 (a budget in
    items).  Costs must be finite and >= 0; a ValueError names the first bad position.
    """
    if prompt_tokens is None and given is None:
        if n is None:
            raise ValueError("item_costs needs token counts, a cost column or n")
        return np.ones(n, dtype=np.float64)
    cost = None
    if prompt_tokens is not None:
        cost = np.asarray(prompt_tokens, dtype=np.float64)
        if response_tokens is not None:
            cost = cost + np.asarray(response_tokens, dtype=np.float64)
    if given is not None:
        g = np.asarray(given, dtype=np.float64)
        cost = g if cost is None else np.where(np.isnan(g), cost, g)
    bad = ~np.isfinite(cost) | (cost < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"item cost at position {i} is {cost[i]!r}; costs must be finite, >= 0")
    return cost


def _round_down_capped(share: np.ndarray, cap: np.ndarray, total: float) -> np.ndarray:
    """Whole units: floor every share, then hand the leftover units to the largest
    fractional parts among groups with room (largest-remainder rounding, capped)."""
    cap_i = np.floor(cap + _EPS)
    out = np.minimum(np.floor(share + _EPS), cap_i)
    left = int(np.floor(min(total, cap_i.sum()) + _EPS) - out.sum())
    frac = share - out
    while left > 0:
        room = cap_i - out
        cand = np.flatnonzero(room >= 1)
        if len(cand) == 0:
            break
        # largest fractional part first; a stable sort keeps ties in group order
        cand = cand[np.argsort(-frac[cand], kind="stable")]
        give = cand[: min(left, len(cand))]
        out[give] += 1
        frac[give] -= 1.0
        left -= len(give)
    return out


def allocate_budget(total: float, available: np.ndarray, method: str = "proportional",
                    weights: np.ndarray | None = None, *, integral: bool = True) -> np.ndarray:
    """Split ``total`` (budget units) across G groups.

    Args:
        total: the budget, >= 0.
        available: ``[G]`` available cost per group (sum of its selectable items' costs).
        method: one of :data:`ALLOCATIONS`.
        weights: ``[G]`` non-negative weights, required for ``uncertainty``.
        integral: allocate whole units (budgets in items or tokens).

    Returns:
        ``[G]`` float64 allocations: ``0 <= alloc <= available``, ``alloc.sum() ==
        min(total, available.sum())`` (floored when ``integral``), 0 for empty groups.
    """
    avail = np.asarray(available, dtype=np.float64).reshape(-1)
    if not np.isfinite(total) or total < 0:
        raise ValueError(f"budget must be a finite number >= 0, got {total!r}")
    if np.any(~np.isfinite(avail)) or np.any(avail < 0):
        raise ValueError("available costs must be finite and >= 0")
    if method == "proportional":
        w = avail.copy()
    elif method == "equal":
        w = (avail > 0).astype(np.float64)
    elif method == "uncertainty":
        if weights is None:
            raise ValueError("allocation 'uncertainty' needs per-group weights")
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != avail.shape or np.any(~np.isfinite(w)) or np.any(w < 0):
            raise ValueError("uncertainty weights must be finite, >= 0, one per group")
        # a non-empty group whose items all score 0 would get nothing; fall back to size
        if w[avail > 0].sum() <= 0:
            w = avail.copy()
    else:
        raise ValueError(f"unknown allocation {method!r}; choose one of {', '.join(ALLOCATIONS)}")
    w = np.where(avail > 0, w, 0.0)
    target = min(float(total), float(avail.sum()))
    share = np.zeros_like(avail)
    open_ = (avail > 0) & (w > 0)
    remaining = target
    # Water-filling: at most G rounds, each caps at least one group or ends.
    while remaining > _EPS * max(1.0, target) and open_.any():
        want = remaining * w * open_ / w[open_].sum()
        room = avail - share
        capped = open_ & (want >= room - _EPS)
        if not capped.any():
            share += want
            break
        share[capped] = avail[capped]
        remaining = target - share.sum()
        open_ &= ~capped
    if integral:
        return _round_down_capped(share, avail, target)
    return np.minimum(share, avail)


def fill_in_rank_order(costs: np.ndarray, groups: np.ndarray, alloc: np.ndarray,
                       max_rounds: int = 10_000) -> np.ndarray:
    """Take items in the given order while they fit their group's allocation.

    Equivalent to walking the list once and taking every item whose cost still fits the
    group's remaining budget (an item that does not fit is skipped, later cheaper ones
    may still be taken), but vectorised: each round takes, per group, the longest
    prefix of the still-affordable items whose cumulative cost fits; the round's first
    misfit is then skipped by the next round's affordability filter.

    Args:
        costs: ``[k]`` costs in rank order.
        groups: ``[k]`` int group index of each item (0..G-1).
        alloc: ``[G]`` allocation per group.

    Returns:
        ``[k]`` bool mask of the items taken; ``costs[take]`` summed per group never
        exceeds ``alloc``.
    """
    costs = np.asarray(costs, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    left = np.asarray(alloc, dtype=np.float64).copy()
    take = np.zeros(len(costs), dtype=bool)
    live = np.arange(len(costs))
    for _ in range(max_rounds):
        live = live[costs[live] <= left[groups[live]] + _EPS]
        if len(live) == 0:
            break
        g = groups[live]
        # cumulative cost within each group, in rank order (stable sort by group)
        by_g = np.argsort(g, kind="stable")
        gs, cs = g[by_g], costs[live][by_g]
        csum = np.cumsum(cs)
        starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
        base = np.repeat(csum[starts] - cs[starts], np.diff(np.r_[starts, len(gs)]))
        fits = (csum - base) <= left[gs] + _EPS
        # a prefix: stop at the first misfit of the group
        first_bad = np.ones(len(gs), dtype=bool)
        first_bad[fits] = False
        seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(gs)]))
        seen_bad = np.maximum.accumulate(np.where(first_bad, np.arange(len(gs)), -1))
        ok = fits & (seen_bad < starts[seg])
        chosen = live[by_g[ok]]
        if len(chosen) == 0:
            break
        take[chosen] = True
        left -= np.bincount(groups[chosen], weights=costs[chosen], minlength=len(left))
        live = live[~take[live]]
    return take


def max_affordable(costs: np.ndarray, alloc: float) -> int:
    """How many of these items fit in ``alloc`` at most (cheapest first): an upper bound
    on the picks a greedy order must provide before :func:`fill_in_rank_order`."""
    c = np.sort(np.asarray(costs, dtype=np.float64))
    return int(np.searchsorted(np.cumsum(c), alloc + _EPS, side="right"))


def interleave_groups(groups: np.ndarray, pos: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Annotation order of selected items drawn from several groups.

    Each item has its 0-based position ``pos`` in its group's pick order; items are
    ordered by ``(pos + 0.5) / counts[group]``, so every prefix of the list (every
    batch) holds each group in proportion to its selection and a group's best picks
    come first.  Returns the permutation ``[k]`` (ties: lower group index first).
    """
    g = np.asarray(groups, dtype=np.int64)
    key = (np.asarray(pos, dtype=np.float64) + 0.5) / np.maximum(np.asarray(counts)[g], 1)
    return np.lexsort((g, key))


def annotation_batches(n: int, batch_size: int | None) -> np.ndarray:
    """1-based batch number of each of ``n`` items in annotation order (all 1 if no
    batch size)."""
    if batch_size is None or batch_size <= 0:
        return np.ones(n, dtype=np.int64)
    return np.arange(n, dtype=np.int64) // int(batch_size) + 1
