"""k-center greedy and facility location against brute force on small inputs."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sift_ops.diversity import (
    covering_radius,
    facility_location,
    facility_location_objective,
    k_center_greedy,
    knn_graph,
)

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def clustered(seed: int, n: int, d: int, unit: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 8), d))
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, d))
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


# ----------------------------------------------------------------------------- k-center


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 60),
    d=st.integers(1, 8),
    budget=st.integers(0, 70),
    n_sel=st.integers(0, 4),
)
def test_k_center_is_farthest_first_and_radius_never_increases(seed, n, d, budget, n_sel):
    x = clustered(seed, n, d)
    rng = np.random.default_rng(seed)
    sel = rng.choice(n, size=min(n_sel, n), replace=False).tolist()
    order, radii = k_center_greedy(x, budget, selected=sel or None, return_radii=True)
    expected_len = min(budget, n - len(sel))
    assert order.shape == (expected_len,) and order.dtype == torch.long
    picks = order.tolist()
    assert len(set(picks)) == len(picks) and not set(picks) & set(sel)
    assert (radii[1:] <= radii[:-1] + 1e-6).all()  # covering radius never increases
    xd = torch.tensor(x, dtype=torch.float64)
    centers = list(sel)
    for t, c in enumerate(picks):
        if centers:
            dist = torch.cdist(xd, xd[centers]).amin(dim=1)
            dist[centers] = -1.0
            # the pick is (up to float32 round-off in |x|^2 + |c|^2 - 2<x,c>, i.e. ~1e-6 in
            # SQUARED distance for unit vectors) a farthest point from the centres
            assert dist[c].item() ** 2 >= dist.max().item() ** 2 - 2e-6
        centers.append(c)
        assert radii[t].item() ** 2 == pytest.approx(covering_radius(x, centers) ** 2, abs=2e-6)


def test_k_center_first_and_default_start():
    x = clustered(1, 40, 5)
    o = k_center_greedy(x, 3, first=7)
    assert o[0].item() == 7
    o = k_center_greedy(torch.tensor(x), 3)
    mean = x.mean(0)
    assert o[0].item() == int(((x - mean) ** 2).sum(1).argmin())


def test_k_center_duplicates_give_zero_radius_and_distinct_picks():
    x = np.repeat(clustered(2, 3, 4), 5, axis=0)  # 3 distinct points, 5 copies each
    order, radii = k_center_greedy(x, 15, return_radii=True)
    assert len(set(order.tolist())) == 15
    assert radii[2].item() == pytest.approx(0.0, abs=1e-3)
    assert {tuple(np.round(x[i], 5)) for i in order[:3].tolist()} == {
        tuple(np.round(p, 5)) for p in x[::5]
    }


def test_k_center_2_approximation_on_small_instance():
    """Gonzalez's bound: greedy radius <= 2 * optimal radius (optimum by enumeration)."""
    from itertools import combinations

    x = clustered(3, 12, 3)
    k = 3
    _, radii = k_center_greedy(x, k, return_radii=True)
    opt = min(covering_radius(x, list(c)) for c in combinations(range(12), k))
    assert radii[-1].item() <= 2 * opt + 1e-6


# ----------------------------------------------------------------------------- kNN graph


def test_knn_graph_is_exact_top_k():
    x = clustered(4, 200, 16)
    nbr, sim = knn_graph(x, 10, batch_size=37)
    assert nbr.shape == (200, 10) and sim.shape == (200, 10)
    full = x.astype(np.float64) @ x.T.astype(np.float64)
    ref = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(sim, np.take_along_axis(full, ref, 1), atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, nbr, 1), sim, atol=1e-5)
    assert (nbr[:, 0] == np.arange(200)).all()  # unit vectors: self is the nearest


# ----------------------------------------------------------------------------- facility location


def brute_force_greedy(s: np.ndarray, budget: int, w: np.ndarray, selected=()) -> tuple:
    """Dense greedy on a similarity matrix s[i, j] (already sparsified/clamped as wanted)."""
    n = s.shape[0]
    cur = np.zeros(n)
    for j in selected:
        cur = np.maximum(cur, s[:, j])
    order, gains = [], []
    avail = np.ones(n, dtype=bool)
    avail[list(selected)] = False
    for _ in range(min(budget, int(avail.sum()))):
        g = (w[:, None] * np.maximum(s - cur[:, None], 0.0)).sum(0)
        g[~avail] = -np.inf
        j = int(np.argmax(g))
        order.append(j)
        gains.append(g[j])
        avail[j] = False
        cur = np.maximum(cur, s[:, j])
    return order, np.array(gains)


def sparse_sim(x: np.ndarray, knn: int) -> np.ndarray:
    """The objective facility_location optimises, written densely: s[i, j] for j in kNN(i)."""
    full = np.maximum(x.astype(np.float64) @ x.T.astype(np.float64), 0.0)
    nbr = np.argsort(-full, axis=1, kind="stable")[:, :knn]
    s = np.zeros_like(full)
    np.put_along_axis(s, nbr, np.take_along_axis(full, nbr, 1), 1)
    return s


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 50),
    d=st.integers(2, 8),
    budget=st.integers(1, 55),
    knn_frac=st.sampled_from([0.2, 0.5, 1.0]),
    weighted=st.booleans(),
    unit=st.booleans(),
    n_sel=st.integers(0, 3),
)
def test_facility_location_matches_brute_force_greedy(
    seed, n, d, budget, knn_frac, weighted, unit, n_sel
):
    x = clustered(seed, n, d, unit=unit)  # non-unit: negative and >1 similarities occur
    knn = max(1, int(round(knn_frac * n)))
    rng = np.random.default_rng(seed + 1)
    w = rng.random(n) * 3 if weighted else np.ones(n)
    sel = rng.choice(n, size=min(n_sel, n - 1), replace=False).tolist()
    order, gains = facility_location(
        x, budget, knn=knn, weights=w if weighted else None, selected=sel or None
    )
    s = sparse_sim(x, knn) if knn < n else np.maximum(x.astype(np.float64) @ x.T, 0.0)
    ref_order, ref_gains = brute_force_greedy(s, budget, w, sel)
    assert len(order) == len(ref_order)
    assert not set(order.tolist()) & set(sel)
    # gains non-increasing (submodularity + exact lazy evaluation)
    assert (np.diff(gains.numpy()) <= 1e-9).all()
    # every pick is a greedy pick along its own trajectory: its gain is the best marginal gain
    # given the picks before it (brute force, float64). Comparing with brute force's own
    # trajectory would fail on near-ties: two items 1e-7 apart in float32 lead to different,
    # equally greedy, continuations.
    np.testing.assert_allclose(gains.numpy()[:1], ref_gains[:1], rtol=1e-5, atol=1e-5)
    cur = np.zeros(n)
    for j in sel:
        cur = np.maximum(cur, s[:, j])
    avail = np.ones(n, dtype=bool)
    avail[sel] = False
    for j, gain in zip(order.tolist(), gains.numpy(), strict=True):
        g = (w[:, None] * np.maximum(s - cur[:, None], 0.0)).sum(0)
        g[~avail] = -np.inf
        assert gain == pytest.approx(g[j], rel=1e-5, abs=1e-5)
        assert gain == pytest.approx(g.max(), rel=1e-5, abs=1e-5)
        avail[j] = False
        cur = np.maximum(cur, s[:, j])
    graph = knn_graph(x, knn)
    f = facility_location_objective(graph, order.tolist() + sel, w)
    f_sel = facility_location_objective(graph, sel, w) if sel else 0.0
    assert f - f_sel == pytest.approx(float(gains.sum()), rel=1e-5, abs=1e-5)


def test_facility_location_same_picks_as_brute_force_without_ties():
    x = clustered(5, 40, 6)
    order, gains = facility_location(x, 12, knn=40)
    ref_order, ref_gains = brute_force_greedy(
        np.maximum(x.astype(np.float64) @ x.T, 0), 12, np.ones(40)
    )
    assert order.tolist() == ref_order
    np.testing.assert_allclose(gains.numpy(), ref_gains, rtol=1e-5)


def test_negative_similarities_are_clamped():
    # two antipodal points: each represents itself only (the other's similarity -1 -> 0)
    x = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    order, gains = facility_location(x, 2, knn=2)
    np.testing.assert_allclose(gains.numpy(), [1.0, 1.0], atol=1e-6)


def test_weights_steer_the_selection():
    x = clustered(6, 60, 8)
    w = np.full(60, 1e-3)
    w[17] = 100.0  # one very important item: it (or its best representative) comes first
    order, _ = facility_location(x, 1, knn=60, weights=w)
    assert order[0].item() == 17
    with pytest.raises(ValueError):
        facility_location(x, 1, weights=-w)
    with pytest.raises(ValueError):
        facility_location(x, 1, weights=w[:5])


def test_budget_larger_than_pool_and_zero_gain_tail():
    x = np.repeat(clustered(7, 4, 5), 3, axis=0)  # 12 items, 4 distinct
    order, gains = facility_location(x, 100, knn=12)
    assert sorted(order.tolist()) == list(range(12))
    assert (gains[4:].abs() < 1e-6).all() and (gains[:4] > 1e-3).all()


def test_memory_is_not_quadratic():
    """n = 6000: a dense n x n float64 matrix would be 288 MB; numpy peak stays far below."""
    n, knn = 6000, 16
    x = clustered(8, n, 32)
    tracemalloc.start()
    order, gains = facility_location(x, 300, knn=knn)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(order) == 300
    assert peak < 25 * n * knn * 8 + (4 << 20), peak  # O(n * knn), not O(n^2)


def test_ivf_graph_probing_every_cell_matches_the_exact_graph():
    from sift_ops.diversity import knn_graph

    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    nbr_e, sim_e = knn_graph(x, 10)
    nbr_i, sim_i = knn_graph(x, 10, method="ivf", nlist=8, nprobe=8)
    np.testing.assert_allclose(sim_i, sim_e, atol=1e-5)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nbr_e, nbr_i, strict=True)])
    assert overlap > 0.99  # only exact ties may swap
    with pytest.raises(ValueError, match="unknown kNN graph method"):
        knn_graph(x, 10, method="hnsw")


def test_ivf_graph_is_a_true_subset_search_and_recall_grows_with_nprobe():
    """The cell-blocked IVF graph: every entry is a real inner product, rows are sorted,
    ids distinct, each item finds itself; probing more cells finds more of the exact
    neighbours, and the greedy on it loses little of the exact graph's objective."""
    x = clustered(11, 3000, 24)  # weakly clustered: a hard case for any IVF
    graph_e = knn_graph(x, 16)
    recalls = []
    for nprobe in (2, 8, 16):
        nbr, sim = knn_graph(x, 16, method="ivf", nprobe=nprobe, batch_size=7)  # tiny tiles
        assert nbr.shape == (3000, 16) and (nbr >= 0).all()
        np.testing.assert_allclose(np.einsum("id,ikd->ik", x, x[nbr]), sim, atol=1e-5)
        assert np.all(np.diff(sim, axis=1) <= 1e-6)
        assert all(len(set(r)) == 16 for r in nbr)
        assert (nbr == np.arange(3000)[:, None]).any(axis=1).all()
        recalls.append(np.mean([len(set(a) & set(b)) / 16
                                for a, b in zip(nbr, graph_e[0], strict=True)]))
    assert recalls[0] < recalls[1] < recalls[2], recalls
    order_e, _ = facility_location(x, 300, knn=16, graph=graph_e)
    order_i, _ = facility_location(x, 300, knn=16, graph=(nbr, sim))
    f_e = facility_location_objective(graph_e, order_e)
    assert facility_location_objective(graph_e, order_i) >= 0.97 * f_e


def test_ivf_graph_pads_when_the_probed_cells_hold_fewer_than_knn_items():
    x = clustered(12, 64, 8)
    nbr, sim = knn_graph(x, 40, method="ivf", nlist=16, nprobe=1)
    assert (nbr[:, 0] >= 0).all()
    pad = nbr < 0
    assert pad.any()  # 64 items in 16 cells: one probed cell cannot hold 40 of them
    assert (sim[pad] < -1e30).all()  # faiss's padding value, never a usable similarity
    order, gains = facility_location(x, 10, knn=40, graph=(nbr, sim))
    assert len(set(order.tolist())) == 10 and (gains >= 0).all()
