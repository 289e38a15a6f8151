"""Budget invariants: never exceeded, allocations sum right, empty groups, fills, batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sift_ops.budget import (
    ALLOCATIONS,
    allocate_budget,
    annotation_batches,
    fill_in_rank_order,
    interleave_groups,
    item_costs,
    max_affordable,
)


def sequential_fill(costs, groups, alloc):
    """The textbook walk the vectorised fill must reproduce."""
    left = np.array(alloc, dtype=float)
    take = []
    for c, g in zip(costs, groups, strict=True):
        ok = c <= left[g] + 1e-9
        if ok:
            left[g] -= c
        take.append(ok)
    return np.array(take, dtype=bool)


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(0, 500),
    avail=st.lists(st.integers(0, 120), min_size=1, max_size=7),
    method=st.sampled_from(ALLOCATIONS),
    seed=st.integers(0, 10_000),
)
def test_allocation_invariants(total, avail, method, seed):
    avail = np.array(avail, dtype=float)
    w = np.random.default_rng(seed).random(len(avail))
    alloc = allocate_budget(total, avail, method, weights=w)
    assert np.all(alloc >= 0) and np.all(alloc <= avail)
    assert np.all(alloc == np.floor(alloc))  # whole units
    assert alloc.sum() == min(total, avail.sum())  # never more, nothing stranded
    assert np.all(alloc[avail == 0] == 0)


def test_equal_caps_small_groups_and_redistributes():
    alloc = allocate_budget(100, np.array([5.0, 0.0, 200.0, 200.0]), "equal")
    # 25 each would give the 5-item group 25; it is capped at 5 and the rest re-divided
    assert alloc.tolist() == [5.0, 0.0, 48.0, 47.0] or alloc.tolist() == [5.0, 0.0, 47.0, 48.0]
    assert alloc.sum() == 100


def test_proportional_follows_group_size():
    alloc = allocate_budget(60, np.array([100.0, 200.0, 300.0]), "proportional")
    assert alloc.tolist() == [10.0, 20.0, 30.0]


def test_uncertainty_gives_more_to_uncertain_group():
    avail = np.array([100.0, 100.0])
    alloc = allocate_budget(50, avail, "uncertainty", weights=np.array([10.0, 40.0]))
    assert alloc.tolist() == [10.0, 40.0]
    with pytest.raises(ValueError, match="weights"):
        allocate_budget(50, avail, "uncertainty")


def test_budget_larger_than_pool_takes_everything():
    alloc = allocate_budget(1000, np.array([3.0, 4.0, 0.0]), "equal")
    assert alloc.tolist() == [3.0, 4.0, 0.0]


def test_fractional_budget_in_cost_units():
    alloc = allocate_budget(10.5, np.array([7.25, 7.25]), "equal", integral=False)
    assert alloc.sum() == pytest.approx(10.5) and np.all(alloc <= 7.25)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="budget"):
        allocate_budget(-1, np.array([1.0]))
    with pytest.raises(ValueError, match="unknown allocation"):
        allocate_budget(1, np.array([1.0]), "greedy")
    with pytest.raises(ValueError, match="position 2"):
        item_costs(np.array([1, 2, -3]), np.array([0, 0, 0]))


@settings(max_examples=200, deadline=None)
@given(
    costs=st.lists(st.integers(0, 30), min_size=0, max_size=60),
    n_groups=st.integers(1, 4),
    budget=st.integers(0, 200),
    seed=st.integers(0, 1000),
)
def test_fill_never_exceeds_and_matches_the_sequential_walk(costs, n_groups, budget, seed):
    rng = np.random.default_rng(seed)
    costs = np.array(costs, dtype=float)
    groups = rng.integers(0, n_groups, len(costs))
    avail = np.bincount(groups, weights=costs, minlength=n_groups)
    alloc = allocate_budget(budget, avail, "equal")
    take = fill_in_rank_order(costs, groups, alloc)
    spent = np.bincount(groups[take], weights=costs[take], minlength=n_groups)
    assert np.all(spent <= alloc + 1e-9)
    np.testing.assert_array_equal(take, sequential_fill(costs, groups, alloc))


def test_fill_skips_an_item_that_does_not_fit_and_takes_a_cheaper_later_one():
    take = fill_in_rank_order(np.array([4.0, 10.0, 3.0, 5.0]), np.zeros(4, int),
                              np.array([9.0]))
    assert take.tolist() == [True, False, True, False]


def test_item_costs_prefers_the_given_column():
    c = item_costs(np.array([10, 20]), np.array([5, 5]), given=np.array([np.nan, 2.0]))
    assert c.tolist() == [15.0, 2.0]
    assert item_costs(n=3).tolist() == [1.0, 1.0, 1.0]


def test_max_affordable_counts_cheapest_first():
    assert max_affordable(np.array([5.0, 1.0, 2.0, 9.0]), 8.0) == 3
    assert max_affordable(np.array([5.0]), 1.0) == 0


def test_interleave_and_batches():
    groups = np.array([0, 0, 0, 0, 1, 1])
    pos = np.array([0, 1, 2, 3, 0, 1])
    order = interleave_groups(groups, pos, np.array([4, 2]))
    assert order.tolist() == [0, 4, 1, 2, 5, 3]
    assert annotation_batches(5, 2).tolist() == [1, 1, 2, 2, 3]
    assert annotation_batches(3, None).tolist() == [1, 1, 1]
